"""``bench cache ls|rm|verify|clean``: the feature cache's entries, checked and tidied."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser("cache", help="list, remove, verify or clean cached features")
    p.add_argument("action", choices=["ls", "rm", "verify", "clean"],
                   help="verify: check every shard's checksum, rows and values (exit 1 if bad); "
                   "clean: remove stale temporary files")
    p.add_argument("keys", nargs="*", help="key prefixes to remove")
    p.add_argument("--all", action="store_true", help="rm: remove every entry")
    p.add_argument("--fix", action="store_true", help="verify: remove bad shards (recomputed next run)")
    p.add_argument("--cache-dir")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from bench.features.cache import FeatureCache

    cache = FeatureCache(args.cache_dir)
    if args.action == "ls":
        total = 0
        for entry in cache.entries():
            m = entry.manifest
            f = m["fields"]
            done = "complete" if entry.complete() else f"{len(entry.missing_shards())} shards missing"
            size = entry.size_bytes()
            total += size
            split = f["split"] + (f" view {f['view']['view']}" if "view" in f else "")
            print(f"{entry.key[:12]}  {f['backbone'].get('family', '?'):10s} {f['layer']:>14s} "
                  f"pool={f['pool']:<6s} {f.get('storage', '?'):8s} "
                  f"{f['task'].get('task', '?')}/{split:<5s} "
                  f"{m['num_items']:>8d} items  {size / 1e6:9.1f} MB  {done}")
        print(f"{cache.root}: {total / 1e6:.1f} MB")
        return 0
    if args.action == "verify":
        report = cache.verify(fix=args.fix)
        for problem in report.bad:
            print(f"{'removed' if args.fix else 'BAD'}: {problem}")
        print(f"{cache.root}: {report.entries} entries, {report.shards_checked} shards, "
              f"{len(report.bad)} bad{' (removed: the next run recomputes them)' if args.fix else ''}")
        return 1 if report.bad and not args.fix else 0
    if args.action == "clean":
        removed = cache.clean()
        for path in removed:
            print(f"removed {path}")
        print(f"{cache.root}: {len(removed)} stale temporary file(s) removed")
        return 0
    targets = list(cache.entries()) if args.all else [e for k in args.keys for e in cache.find(k)]
    if not targets:
        print("nothing to remove (give key prefixes from `bench cache ls`, or --all)")
        return 1
    kept = 0
    for entry in targets:
        if cache.remove(entry):
            print(f"removed {entry.key[:12]}")
        else:
            kept += 1
            print(f"kept {entry.key[:12]}: a run is reading it; rerun `bench cache rm` once it "
                  "has finished")
    return 1 if kept else 0
