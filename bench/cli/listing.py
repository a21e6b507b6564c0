"""``bench list``: backbones and tasks with their descriptions and weights licences."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser("list", help="list backbones or tasks (name, description, licence)")
    p.add_argument("what", nargs="?", choices=["backbones", "tasks"])
    p.add_argument("pattern", nargs="?", default="*", help="glob, e.g. '*mae*'")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from bench.registry import backbones, tasks

    kinds = {"backbones": backbones, "tasks": tasks}
    for kind in [args.what] if args.what else list(kinds):
        registry = kinds[kind]
        if not args.what:
            print(f"{kind}:")
        for name in registry.names(args.pattern):
            entry = registry.entry(name)
            licence = f"  [weights licence: {entry.licence}]" if entry.licence else ""
            print(f"{'  ' if not args.what else ''}{name:24s} {entry.description}{licence}")
    return 0
