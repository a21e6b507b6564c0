"""Advisory file locks (``fcntl.flock``) for work that must happen once across processes.

Used for the SQLite tracking store's creation and writes, and for each job's result cells: two
identical runs started together extract and log once, the second waiting and then reusing. The
lock is released when its process dies (kill -9 included), so a crash never leaves a stale lock.
flock works between processes of one machine and on most cluster file systems mounted with
locking; where it is not supported, bench runs unlocked. Where the lock's folder cannot be
written (a complete shared cache on a read-only mount), bench runs unlocked too: reading needs no
lock, and a write there fails on its own, naming the file.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

UNWRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)


@contextlib.contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) for the ``with`` block."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a")
    except OSError as e:
        if e.errno not in UNWRITABLE:
            raise
        yield  # nothing can be written there, so there is nothing to serialise
        return
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError as e:
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
            yield  # a file system without locks: unlocked, as before
            return
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
