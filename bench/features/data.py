"""``bench data download|verify``: fetch the public datasets and check what is on disk.

Downloads are resumable (HTTP Range on a ``.partial`` file), md5-checked where the source publishes
a checksum, and extracted atomically: an archive unpacks into a temporary folder beside its
destination and each top-level entry is renamed into place, so an interrupted run never leaves a
half-filled dataset folder that looks complete. Archives are deleted once extracted.

Nothing heavy (torch, PIL, scipy) is imported here except inside functions.
"""

from __future__ import annotations

import inspect
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Download:
    """One public file of a dataset; ``creates`` (relative to the data root) exists once it is in place."""

    url: str
    md5: str | None
    creates: str
    into: str = ""  # folder under the data root the file goes to or the archive extracts into
    filename: str = ""  # default: the URL's last path component

    @property
    def name(self) -> str:
        return self.filename or self.url.split("?", 1)[0].rsplit("/", 1)[-1]

    @property
    def is_archive(self) -> bool:
        return self.name.endswith((".tar", ".tar.gz", ".tgz"))


def create_task(task_name: str, data_root: str | os.PathLike | None = None, **task_args: Any) -> Any:
    """The task with ``task_args``, given ``data_root`` when its factory takes a ``root``."""
    from bench.registry import tasks

    if data_root and "root" in inspect.signature(tasks.entry(task_name).factory).parameters:
        task_args["root"] = str(data_root)
    return tasks.create(task_name, **task_args)


def verify(
    task_name: str, data_root: str | os.PathLike | None = None, full: bool = False, **task_args: Any
) -> list[str]:
    """Problems with the task's data on disk (each naming the file and the fix); [] when all is well."""
    return create_task(task_name, data_root, **task_args).verify(full=full)


def download(task_name: str, data_root: str | os.PathLike | None = None, **task_args: Any) -> list[str]:
    """Fetch and place what is missing, then verify; returns the problems left ([] = ready).

    Raises ``ManualDownloadError`` with instructions for datasets without a public source.
    """
    from bench.task import DatasetError, ManualDownloadError
    from bench.features.weights import download as fetch
    from bench.features.weights import file_digests

    task = create_task(task_name, data_root, **task_args)
    if not task.verify():
        return []
    downloads = getattr(task, "downloads", ())
    if hasattr(task, "prepare"):  # manual download plus local unpacking (ImageNet's archives)
        task.prepare()
    elif getattr(task, "instructions", "") and not downloads:
        raise ManualDownloadError(task_name, task.instructions)
    elif not downloads:
        raise DatasetError(f"{task_name}: no public download; place the data by hand")
    for d in downloads:
        if (task.root / d.creates).exists():
            continue
        if not d.is_archive:
            fetch(d.url, task.root / d.into / d.name, md5=d.md5)
            continue
        archive = task.root / d.name
        if archive.exists() and d.md5 and file_digests(archive)["md5"] != d.md5:
            archive.unlink()  # placed by hand or damaged: fetch it again
        if not archive.exists():
            fetch(d.url, archive, md5=d.md5)
        try:
            extract(archive, task.root / d.into)
        except (tarfile.TarError, OSError, EOFError) as e:
            raise DatasetError(f"cannot extract {archive}: {e}. Delete it and run again.") from e
        archive.unlink()
        archive.with_name(archive.name + ".sha256").unlink(missing_ok=True)
    return create_task(task_name, data_root, **task_args).verify()


def _check_member(member: tarfile.TarInfo, root: Path, archive: Path) -> None:
    """Refuse a member that would land outside ``root`` (absolute or ``..`` paths, links
    pointing out) or is a device: what tarfile's "data" filter refuses, for Pythons without
    it (Debian 12's 3.11.2)."""
    from bench.task import DatasetError

    base = root.resolve()
    target = (base / member.name).resolve()
    inside = target.is_relative_to(base)
    if member.issym():
        inside = inside and (target.parent / member.linkname).resolve().is_relative_to(base)
    elif member.islnk():
        inside = inside and (base / member.linkname).resolve().is_relative_to(base)
    if not inside or member.isdev():
        raise DatasetError(f"{archive}: refusing archive member {member.name!r} (it would be "
                           f"written outside the data folder or is a device); the archive is "
                           "not the official one: delete it and download again")


def extract(archive: Path, dest: Path) -> None:
    """Unpack into a temporary folder inside ``dest``, then rename each top-level entry into place."""
    from tqdm.auto import tqdm

    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest, prefix=".extract-") as tmp:
        with tarfile.open(archive) as tar:
            for member in tqdm(tar, desc=f"extract {archive.name}", unit=" files"):
                _check_member(member, Path(tmp), archive)
                if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4: its own checks too
                    tar.extract(member, tmp, filter="data")
                else:
                    tar.extract(member, tmp)
        for entry in Path(tmp).iterdir():
            target = dest / entry.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(entry, target)
