"""Files shared by processes: advisory locks, and temporary files that name their writer.

Advisory file locks (``fcntl.flock``) are for work that must happen once across processes, and
for leases: a shared lock held by every process using something (``shared_lock``) that a process
removing it respects (``exclusive_if_free``: it removes only what nobody holds).

Used for the SQLite tracking store's creation and writes (a result cell's lock lives in the
tracking store itself, ``bench.results.claims``, so it holds across results folders). The
lock is released when its process dies (kill -9 included), so a crash never leaves a stale lock.
flock works between processes of one machine and on most cluster file systems mounted with
locking; where it is not supported, bench runs unlocked. Where the lock's folder cannot be
written (a complete shared cache on a read-only mount), bench runs unlocked too: reading needs no
lock, and a write there fails on its own, naming the file.

A temporary file or folder (``temp_name``: ``.NAME.HOST.PID.tmp``, renamed into place once
complete) says who writes it, so ``stale_temp`` can tell a writer still running from one that died.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

STALE_TEMP_SECONDS = 3600
UNWRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)


def _open_lock(path: Path):
    """``path`` opened for locking (created, with its folder), or None where nothing can be
    written (a read-only mount: nothing can be removed there either)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return open(path, "a")
    except OSError as e:
        if e.errno not in UNWRITABLE:
            raise
        return None


def _flock(handle, operation: int) -> bool:
    """``flock``; False where the file system has no locks (then bench runs unlocked)."""
    try:
        fcntl.flock(handle, operation)
    except OSError as e:
        if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
            raise
        return False
    return True


@contextlib.contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) for the ``with`` block."""
    handle = _open_lock(Path(path))
    if handle is None:
        yield  # nothing can be written there, so there is nothing to serialise
        return
    with handle:
        if not _flock(handle, fcntl.LOCK_EX):
            yield  # a file system without locks: unlocked, as before
            return
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def shared_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold a shared lock on ``path`` (created if missing, with its folder) for the ``with``
    block: any number of holders at once; ``exclusive_if_free`` fails while one holds it. Waits
    while a remover holds it; a file removed meanwhile (with what it guarded) is created again
    and locked, so the lock always guards what is at ``path`` now."""
    path = Path(path)
    while True:
        handle = _open_lock(path)
        if handle is None or not _flock(handle, fcntl.LOCK_SH):
            try:
                yield
            finally:
                if handle is not None:
                    handle.close()
            return
        try:
            current = os.stat(path).st_ino
        except FileNotFoundError:
            current = None
        if current == os.fstat(handle.fileno()).st_ino:
            break
        handle.close()  # removed while we waited: lock the file that is there now
    try:
        yield
    finally:
        handle.close()  # releases the lock


@contextlib.contextmanager
def exclusive_if_free(path: str | os.PathLike) -> Iterator[bool]:
    """An exclusive lock on ``path`` if no process holds it now (True for the ``with`` block),
    else False at once: for removing what ``path`` guards only when nobody uses it."""
    handle = _open_lock(Path(path))
    if handle is None:
        yield True  # nothing can be written there: a removal fails on its own, naming the file
        return
    with handle:
        try:
            _flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # False: no locks here, as before
        except BlockingIOError:
            yield False
            return
        yield True


def temp_name(path: Path) -> Path:
    """``.NAME.HOST.PID.tmp``: ``stale_temp`` can tell whether its writer still runs."""
    return path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.tmp")


def stale_temp(path: Path, max_age_s: float = STALE_TEMP_SECONDS) -> bool:
    """Whether the writer of the temporary ``path`` (``temp_name``) is gone: the file is older
    than ``max_age_s`` or, written on this host, its process no longer runs."""
    prefix, _, pid = path.name[: -len(".tmp")].rpartition(".")
    if time.time() - path.stat().st_mtime > max_age_s:
        return True
    return prefix.endswith(f".{socket.gethostname()}") and not _pid_alive(pid)


def _pid_alive(pid: str) -> bool:
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
