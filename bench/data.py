"""``bench data download|verify``: fetch the public datasets and check what is on disk.

Downloads are resumable (HTTP Range on a ``.partial`` file), md5-checked where the source publishes
a checksum, and extracted atomically: an archive unpacks into a temporary folder beside its
destination and each top-level entry is renamed into place, so an interrupted run never leaves a
half-filled dataset folder that looks complete. Archives are deleted once extracted.

The CLI imports this module at start-up: nothing heavy (torch, PIL, scipy) is imported here
except inside functions.
"""

from __future__ import annotations

import argparse
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

    Raises ``DatasetError`` with manual instructions for datasets without a public source.
    """
    from bench.task import DatasetError
    from bench.weights import download as fetch
    from bench.weights import file_digests

    task = create_task(task_name, data_root, **task_args)
    if not task.verify():
        return []
    downloads = getattr(task, "downloads", ())
    if hasattr(task, "prepare"):  # manual download plus local unpacking (ImageNet's archives)
        task.prepare()
    elif not downloads:
        raise DatasetError(getattr(task, "instructions", "") or f"{task_name}: no public download")
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


def extract(archive: Path, dest: Path) -> None:
    """Unpack into a temporary folder inside ``dest``, then rename each top-level entry into place."""
    from tqdm.auto import tqdm

    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest, prefix=".extract-") as tmp:
        with tarfile.open(archive) as tar:
            for member in tqdm(tar, desc=f"extract {archive.name}", unit=" files"):
                tar.extract(member, tmp, filter="data")  # refuses paths leaving tmp
        for entry in Path(tmp).iterdir():
            target = dest / entry.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(entry, target)


def _task_args(args: argparse.Namespace) -> dict[str, Any]:
    from bench.cli import _key_values

    return _key_values(args.task_arg)


def cmd_verify(args: argparse.Namespace) -> int:
    task = create_task(args.task, args.data_root, **_task_args(args))
    problems = task.verify(full=args.full)
    if problems:
        print(f"{args.task}: {len(problems)} problem(s)")
        for problem in problems:
            print(f"  - {problem}")
        return 1
    sizes = ", ".join(f"{s} {len(task.split(s)):,}" for s in ("train", "val", "test"))
    where = getattr(task, "dir", "")
    print(f"{args.task}: OK ({sizes} images, {task.num_classes} classes) {where}".rstrip())
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from bench.task import DatasetError
    from bench.weights import WeightsError

    try:
        problems = download(args.task, args.data_root, **_task_args(args))
    except (DatasetError, WeightsError) as e:
        print(f"{args.task}: {e}")
        return 1
    if problems:
        print(f"{args.task}: downloaded, but verification found {len(problems)} problem(s)")
        for problem in problems:
            print(f"  - {problem}")
        return 1
    print(f"{args.task}: ready. `bench data verify --task {args.task} --full` also decodes every image.")
    return 0


def add_cli(subparsers: Any) -> None:
    """Adds ``bench data download`` and ``bench data verify``; handlers are ``args.func``."""
    data = subparsers.add_parser("data", help="download or verify datasets")
    commands = data.add_subparsers(dest="data_command", required=True, metavar="COMMAND")
    fetch = commands.add_parser(
        "download", help="fetch a dataset (checksummed, resumable) or print how to get it by hand"
    )
    check = commands.add_parser(
        "verify", help="check layout and image counts (exit 0 when all is well)"
    )
    check.add_argument("--full", action="store_true",
                       help="also decode every image and check checksums where known")
    for parser, handler in ((fetch, cmd_download), (check, cmd_verify)):
        parser.add_argument("--task", required=True, help="task name, e.g. cub or folder:PATH")
        parser.add_argument("--data-root", help="data folder (default: $BENCH_DATA or ~/.cache/bench/data)")
        parser.add_argument("--task-arg", action="append", default=[], metavar="KEY=VALUE",
                            help="override a task argument (JSON values), e.g. partition=2")
        parser.set_defaults(func=handler)
