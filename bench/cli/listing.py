"""``bench list``: backbones and tasks with their descriptions and weights licences, read from
the preset index (``bench.registry``): no model code is imported."""

from __future__ import annotations

import argparse
import sys


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
        presets = registry.presets(args.pattern)
        for preset in presets:
            licence = f"  [weights licence: {preset.licence}]" if preset.licence else ""
            print(f"{'  ' if not args.what else ''}{preset.name:24s} {preset.description}"
                  f"{licence}")
        if not presets:
            print(f"bench: no {kind} matches {args.pattern!r}", file=sys.stderr)
            return 1
    return 0
