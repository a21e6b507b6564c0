"""``bench data download|verify``: fetch public datasets and check what is on disk."""

from __future__ import annotations

import argparse

from bench.cli import options


def add_parser(sub) -> None:
    data = sub.add_parser("data", help="download or verify datasets")
    commands = data.add_subparsers(dest="data_command", required=True, metavar="COMMAND")
    fetch = commands.add_parser(
        "download", help="fetch a dataset (checksummed, resumable) or print how to get it by hand"
    )
    check = commands.add_parser(
        "verify", help="check layout and image counts (exit 0 when all is well)"
    )
    check.add_argument("--full", action="store_true",
                       help="also decode every image and check checksums where known")
    for parser, handler in ((fetch, download), (check, verify)):
        parser.add_argument("--task", required=True, help="task name, e.g. cub or folder:PATH")
        options.add_data_args(parser)
        parser.set_defaults(func=handler)


def verify(args: argparse.Namespace) -> int:
    from bench.features.data import create_task

    task = create_task(args.task, args.data_root, **options.key_values(args.task_arg))
    problems = task.verify(full=args.full)
    ignored = getattr(task, "ignored", [])
    if ignored:
        more = f" and {len(ignored) - 10} more" if len(ignored) > 10 else ""
        print(f"{args.task}: ignored {len(ignored)} hidden file(s)/folder(s), never items or "
              f"classes: {', '.join(ignored[:10])}{more}")
    if problems:
        print(f"{args.task}: {len(problems)} problem(s)")
        for problem in problems:
            print(f"  - {problem}")
        return 1
    sizes = ", ".join(f"{s} {len(task.split(s)):,}" for s in ("train", "val", "test"))
    where = getattr(task, "dir", "")
    print(f"{args.task}: OK ({sizes} images, {task.num_classes} classes) {where}".rstrip())
    return 0


def download(args: argparse.Namespace) -> int:
    from bench.features.data import download as fetch
    from bench.task import ManualDownloadError

    try:  # what cannot be fetched (no public source, a wrong checksum) is a BenchError: exit 2
        problems = fetch(args.task, args.data_root, **options.key_values(args.task_arg))
    except ManualDownloadError as e:
        print(e.instructions)
        raise
    if problems:
        print(f"{args.task}: downloaded, but verification found {len(problems)} problem(s)")
        for problem in problems:
            print(f"  - {problem}")
        return 1
    print(f"{args.task}: ready. `bench data verify --task {args.task} --full` also decodes every image.")
    return 0
