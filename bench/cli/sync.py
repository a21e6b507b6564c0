"""``bench sync``: log the results kept on disk while the tracking store was unreachable."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser("sync", help="log results that were kept on disk because logging failed")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from bench.paths import pending_dir, tracking_uri
    from bench.results.outbox import remove_incomplete_pending, sync_pending

    for folder in remove_incomplete_pending():
        print(f"removed incomplete kept result {folder} (its write was interrupted or ran out "
              "of space; the run must be redone)")
    logged = sync_pending()
    for record in logged:
        print(f"logged {record.name} -> run {record.run_id}")
    print(f"{len(logged)} result(s) logged to {tracking_uri()}; nothing left in {pending_dir()}")
    return 0
