"""The ``bench`` command line. Only argparse loads at start-up; each command imports what it needs."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any


def _key_values(pairs: Sequence[str]) -> dict[str, Any]:
    """['t=90', 'flags={"a": 1}'] -> {'t': 90, 'flags': {'a': 1}}; values parsed as JSON if they can be."""
    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ValueError(f"expected KEY=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _csv(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in _csv(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}")


def add_feature_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backbone", required=True, help="backbone preset (`bench list backbones`)")
    p.add_argument("--task", required=True, help="task preset (`bench list tasks`)")
    p.add_argument("--layer", action="append", default=[], metavar="LAYER",
                   help="feature point; repeat or comma-separate for several (default: the preset's)")
    p.add_argument("--pool", action="append", default=[], metavar="POOL",
                   help="pooling: 1,2,4,8 (p x p average), cls, mean, none... (default: preset's)")
    p.add_argument("--backbone-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="override a backbone preset argument (JSON values), e.g. t=150")
    p.add_argument("--task-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="override a task argument, e.g. limit=200")
    p.add_argument("--data-root", help="dataset folder (default: $BENCH_DATA or ~/.cache/bench/data)")
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:1")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="autocast precision (auto: bf16 on GPU, fp32 on CPU)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    p.add_argument("--shard-size", type=int, default=4096, help="images per cache shard")
    p.add_argument("--skip-corrupt", action="store_true",
                   help="leave out unreadable images (recorded in the run) instead of stopping")
    p.add_argument("--cache-dir", help="feature cache (default: $BENCH_CACHE or results/cache)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_probe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--head", default="linear",
                   choices=["linear", "bn-linear", "mlp", "attention", "difformer"],
                   help="linear/bn-linear/mlp: batched grid on pooled vectors; attention/difformer:"
                   " the paper's transformer heads on maps (pool map16 by default)")
    p.add_argument("--probe-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="other probe/head settings, e.g. hidden=512, recipe=adamw, dim=512")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, help="probe epochs (default 40)")
    p.add_argument("--lrs", type=_floats, help="learning-rate grid, e.g. 1e-3,1e-2")
    p.add_argument("--wds", type=_floats, help="weight-decay grid, e.g. 0,1e-4,1e-2")
    p.add_argument("--suite", default="bench", help="MLflow experiment (one per suite)")
    p.add_argument("--executor", default="local", choices=["local", "submitit-local", "slurm"])
    p.add_argument("--force", action="store_true",
                   help="recompute cells that already have a finished MLflow run")


def feature_job_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    task_args = _key_values(args.task_arg)
    if args.data_root:
        import inspect

        from bench.registry import tasks

        if "root" not in inspect.signature(tasks.entry(args.task).factory).parameters:
            raise ValueError(f"task {args.task!r} reads no files: --data-root does not apply")
        task_args["root"] = args.data_root
    return dict(
        backbone=args.backbone, task=args.task,
        layers=[v for a in args.layer for v in _csv(a)], pools=[v for a in args.pool for v in _csv(a)],
        backbone_args=_key_values(args.backbone_arg), task_args=task_args,
        device=args.device, precision=args.precision, batch_size=args.batch_size,
        workers=args.workers, shard_size=args.shard_size, skip_corrupt=args.skip_corrupt,
        cache_dir=args.cache_dir, progress=not args.no_progress,
    )


def probe_overrides(args: argparse.Namespace) -> dict[str, Any]:
    names = {"epochs": "epochs", "lrs": "lrs"}
    out = {key: getattr(args, arg) for arg, key in names.items() if getattr(args, arg) is not None}
    if args.wds is not None:  # the grid probe searches weight decays; attention heads take one
        out["weight_decay" if args.head in ("attention", "difformer") else "weight_decays"] = (
            args.wds[0] if args.head in ("attention", "difformer") else args.wds)
    return out | _key_values(args.probe_arg)


def cmd_run(args: argparse.Namespace) -> int:
    from bench.executors import run_jobs
    from bench.jobs import BenchJob
    from bench.tracking import ensure_experiment

    job = BenchJob(**feature_job_kwargs(args), head=args.head, probe=probe_overrides(args),
                   seed=args.seed, suite=args.suite, force=args.force)
    job.build()  # fail fast on bad names, layers, pools or missing data, before any submission
    job.experiment_id = ensure_experiment(args.suite)
    [results] = run_jobs([job], args.executor)
    for r in results:
        print(f"{r['run_name']}: test_top1 {r['test_top1']:.2f}  test_mean_per_class "
              f"{r['test_mean_per_class']:.2f}  val_top1 {r['val_top1']:.2f}  "
              f"(lr {r['best']['lr']:g}, wd {r['best']['weight_decay']:g}, "
              f"{int(r['best']['epochs'])} epochs)  run {r['run_id']}"
              + ("  [already logged: reused; --force recomputes]" if r.get("reused") else ""))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
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


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from bench import leaderboard
    from bench.cache import results_dir
    from bench.tracking import ensure_experiment, tracking_uri

    suites = [s for a in args.suite for s in _csv(a)] or ["bench"]
    cells, table = leaderboard.build(suites, args.metric)
    if args.paper:
        table = leaderboard.with_paper(table)
    paths = leaderboard.write(table, cells, results_dir(), f"bench leaderboard: {', '.join(suites)}"
                              f" ({args.metric}, best validation protocol per cell)")
    print(table.to_markdown() if not table.empty else "no finished runs yet")
    if not table.empty and not args.no_log:
        leaderboard.log_to_mlflow(ensure_experiment(suites[0]), table, cells, paths)
    print(f"\nwritten: {paths['md']}, {paths['csv']}")
    print(ui_hint(tracking_uri()))
    return 0


def ui_hint(uri: str) -> str:
    if uri.startswith("sqlite:///"):
        return (f"open it in the MLflow UI: mlflow ui --backend-store-uri {uri} --port 5000"
                f"  (then http://127.0.0.1:5000)")
    return f"open it in the MLflow UI: {uri}"


def cmd_demo(args: argparse.Namespace) -> int:
    from bench import leaderboard
    from bench.cache import results_dir
    from bench.executors import run_jobs
    from bench.jobs import BenchJob
    from bench.tracking import ensure_experiment, tracking_uri

    experiment_id = ensure_experiment(args.suite)
    jobs = [BenchJob(backbone=b, task="digits", suite=args.suite, experiment_id=experiment_id,
                     workers=args.workers, device=args.device, progress=not args.no_progress)
            for b in ("pixels", "random-unet")]
    for results in run_jobs(jobs, args.executor):
        for r in results:
            print(f"{r['run_name']}: test_top1 {r['test_top1']:.2f} (chance 10.00)")
    cells, table = leaderboard.build([args.suite])
    paths = leaderboard.write(table, cells, results_dir(), "bench demo: controls on digits")
    leaderboard.log_to_mlflow(experiment_id, table, cells, paths)
    print("\n" + table.to_markdown())
    print(f"\nwritten: {paths['md']}")
    print(ui_hint(tracking_uri()))
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
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
    for entry in targets:
        cache.remove(entry)
        print(f"removed {entry.key[:12]}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench",
        description="Benchmark frozen representations: backbones x tasks, cached features, "
        "batched probes, MLflow leaderboards.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="extract features (cached) and probe one backbone on one task")
    add_feature_args(run)
    add_probe_args(run)
    run.set_defaults(func=cmd_run)

    lst = sub.add_parser("list", help="list backbones or tasks (name, description, licence)")
    lst.add_argument("what", nargs="?", choices=["backbones", "tasks"])
    lst.add_argument("pattern", nargs="?", default="*", help="glob, e.g. '*mae*'")
    lst.set_defaults(func=cmd_list)

    board = sub.add_parser("leaderboard", help="pivot finished runs backbone x task from MLflow")
    board.add_argument("--suite", action="append", default=[], help="experiment(s); default bench")
    board.add_argument("--metric", default="test_top1",
                       choices=["test_top1", "test_top5", "test_mean_per_class"])
    board.add_argument("--no-log", action="store_true", help="do not log the table to MLflow")
    board.add_argument("--paper", action="store_true",
                       help="add the paper's reported numbers for these tasks as 'paper:' rows")
    board.set_defaults(func=cmd_leaderboard)

    demo = sub.add_parser("demo", help="offline end-to-end run: two controls on digits (minutes, CPU)")
    demo.add_argument("--suite", default="demo")
    demo.add_argument("--executor", default="local", choices=["local", "submitit-local", "slurm"])
    demo.add_argument("--device", default="auto")
    demo.add_argument("--workers", type=int, default=0)
    demo.add_argument("--no-progress", action="store_true")
    demo.set_defaults(func=cmd_demo)

    cache = sub.add_parser("cache", help="list or remove cached features")
    cache.add_argument("action", choices=["ls", "rm", "verify", "clean"],
                       help="verify: check every shard (exit 1 naming bad ones); clean: remove "
                       "temporary files of dead writers")
    cache.add_argument("keys", nargs="*", help="key prefixes to remove")
    cache.add_argument("--all", action="store_true", help="rm: remove every entry")
    cache.add_argument("--fix", action="store_true", help="verify: remove bad shards")
    cache.add_argument("--cache-dir")
    cache.set_defaults(func=cmd_cache)

    for extension in ("bench.data", "bench.sweep"):
        try:
            module = __import__(extension, fromlist=["add_cli"])
        except ModuleNotFoundError as e:
            if e.name != extension:
                raise
            continue
        module.add_cli(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted; finished cache shards and logged runs are kept", file=sys.stderr)
        return 130
    except Exception as e:  # known user errors get one clear line, others a traceback
        if _is_user_error(e) and not os.environ.get("BENCH_DEBUG"):
            print(f"bench: error: {e}", file=sys.stderr)
            return 2
        raise


def _is_user_error(e: Exception) -> bool:
    from bench.registry import UnknownNameError
    from bench.task import DatasetError
    from bench.weights import WeightsError

    return isinstance(e, (UnknownNameError, DatasetError, WeightsError, ValueError, FileNotFoundError))


if __name__ == "__main__":
    sys.exit(main())
