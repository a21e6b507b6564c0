"""``bench cache ls|rm``: the feature cache's entries."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser("cache", help="list or remove cached features")
    p.add_argument("action", choices=["ls", "rm"])
    p.add_argument("keys", nargs="*", help="key prefixes to remove")
    p.add_argument("--all", action="store_true", help="rm: remove every entry")
    p.add_argument("--cache-dir")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from bench.cache import FeatureCache

    cache = FeatureCache(args.cache_dir)
    if args.action == "ls":
        total = 0
        for entry in cache.entries():
            m = entry.manifest
            f = m["fields"]
            done = "complete" if entry.complete() else f"{len(entry.missing_shards())} shards missing"
            size = entry.size_bytes()
            total += size
            print(f"{entry.key[:12]}  {f['backbone'].get('family', '?'):10s} {f['layer']:>14s} "
                  f"pool={f['pool']:<6s} {f['task'].get('task', '?')}/{f['split']:<5s} "
                  f"{m['num_items']:>8d} items  {size / 1e6:9.1f} MB  {done}")
        print(f"{cache.root}: {total / 1e6:.1f} MB")
        return 0
    targets = list(cache.entries()) if args.all else [e for k in args.keys for e in cache.find(k)]
    if not targets:
        print("nothing to remove (give key prefixes from `bench cache ls`, or --all)")
        return 1
    for entry in targets:
        cache.remove(entry)
        print(f"removed {entry.key[:12]}")
    return 0
