"""Flags shared by several commands, and their translation into library objects."""

from __future__ import annotations

import argparse
import json
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from bench.errors import UsageError
from bench.precision import CACHE_DTYPES
from bench.run.scheduler import executors

SLURM_FLAGS = {  # flag -> help; the values go to bench.run.scheduler.executor_config by name
    "partition": "SLURM partition", "gpus": "GPUs per node", "cpus": "CPUs per task",
    "mem_gb": "memory per node (GB)", "time_min": "time limit (minutes)",
    "account": "SLURM account", "qos": "SLURM QOS", "constraint": "node constraint",
    "array_parallelism": "array tasks running at once",
}


def key_values(pairs: Sequence[str]) -> dict[str, Any]:
    """['t=90', 'flags={"a": 1}'] -> {'t': 90, 'flags': {'a': 1}}.

    Values are read as JSON where they are JSON (numbers, booleans, lists, objects) and as text
    otherwise; a value that starts like a JSON object or list but does not parse is an error."""
    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise UsageError(f"expected KEY=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError as e:
            if value.lstrip()[:1] in "[{":
                raise UsageError(f"{key}={value}: not valid JSON ({e})") from e
            out[key] = value
    return out


def csv(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def ints(text: str) -> list[int]:
    from bench.ranges import parse_integers

    return _parsed_by(parse_integers)(text)


def _size(text: str) -> int | str:
    from bench.ranges import parse_size

    try:
        return parse_size(text)
    except UsageError as e:
        raise argparse.ArgumentTypeError(str(e))


def add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="override a task argument (JSON values), e.g. limit=200")
    p.add_argument("--data-root", help="dataset folder (default: $BENCH_DATA or ~/.cache/bench/data)")


def add_feature_args(p: argparse.ArgumentParser, spec_args: bool = True) -> None:
    """How features are computed and where they go (everything but the backbone and task);
    ``spec_args``: with the backbone and task arguments (not where the cells name their own)."""
    if spec_args:
        p.add_argument("--backbone-arg", action="append", default=[], metavar="KEY=VALUE",
                       help="override a backbone preset argument (JSON values), e.g. t=150")
        add_data_args(p)
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:1")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="precision policy (auto: bf16 on a GPU, fp32 on the CPU; see "
                   "docs/concepts/precision.md)")
    p.add_argument("--cache-dtype", default="auto", choices=list(CACHE_DTYPES),
                   help="type of the cached features (auto: the precision policy's, float32 on "
                   "the CPU, float16 under bf16; bf16 halves fp32's disk with fp32's range)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    p.add_argument("--shard-size", type=int, default=4096, help="images per cache shard")
    p.add_argument("--skip-corrupt", action="store_true",
                   help="leave out unreadable images (recorded in the run) instead of stopping")
    p.add_argument("--cache-dir", help="feature cache (default: $BENCH_CACHE or results/cache)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the backbone's truncated forward (diffusion backbones; "
                   "the same features and cache entries)")
    p.add_argument("--decode", default="cpu", choices=["cpu", "gpu"],
                   help="gpu: decode JPEG files with nvJPEG on the GPU (CPU-poor GPU nodes)")


def add_view_args(p: argparse.ArgumentParser) -> None:
    """``--views`` and ``--augment``: the augmented train views epoch-trained heads read."""
    from bench.features.augment import AUGMENTATIONS

    p.add_argument("--views", type=int, default=1, metavar="V",
                   help="train on V augmented views of each train image, cached (epoch e reads "
                   "view e mod V; val and test stay one centre view); heads that train by "
                   "epochs only (default 1: the centre view)")
    p.add_argument("--augment", choices=AUGMENTATIONS.names(), metavar="NAME",
                   help="the augmentation drawing the views of --views (default paper: the "
                   "released code's random crop and flip); choices: %(choices)s")


def view_settings(args: argparse.Namespace) -> dict[str, Any]:
    """``RunSpec``'s views and augment from ``--views``/``--augment``; an augmentation without
    views to draw is refused (it would reach nothing)."""
    views, augment = getattr(args, "views", 1), getattr(args, "augment", None)
    if getattr(args, "online", False):
        return {"views": views, "augment": augment or "paper", "online": True}
    if augment is not None and views == 1:
        raise UsageError(f"--augment {augment} draws the train views of --views V (V > 1); "
                         "with one view nothing is augmented: give --views or drop --augment")
    return {"views": views, "augment": augment or "paper"}


def add_online_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--online", action="store_true",
                   help="train the heads through the frozen backbone: epoch e on view e of each "
                   "train image (--augment), fresh noise every epoch, no train features cached "
                   "(val and test are); linear, bn-linear and mlp heads")


def add_keep_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-keep-features", dest="keep_features", action="store_false",
                   help="delete each job's cache entries once its cells are logged (recorded in "
                   "the result; a rerun of it reuses the result, a new probe re-extracts)")


def add_probe_args(p: argparse.ArgumentParser, kinds: Sequence[Any]) -> None:
    """The probe's flags: the head (``kinds``: every registered ``HeadKind``), its settings,
    each head's own options (``HeadKind.options``), the memory budget and the suite."""
    p.add_argument("--head", default="linear", choices=[kind.name for kind in kinds],
                   help="the probe: " + "; ".join(f"{kind.name}: {kind.description}"
                                                  for kind in kinds).replace("%", "%%"))
    p.add_argument("--probe-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="other settings of the head, e.g. hidden=512, recipe=adamw, dim=512")
    p.add_argument("--seed", type=int, help="the probe's seed (default 0)")
    add_recipe_arg(p, "bench")
    add_head_options(p, kinds)
    p.add_argument("--memory-budget", default="auto", type=_size,
                   help="features a probe holds in memory at once, e.g. 512MB, 4GB (default auto: "
                   "half the free RAM, or of free GPU memory on CUDA); larger splits stream from "
                   "the cache, with the same numbers")
    p.add_argument("--suite", default="bench", help="MLflow experiment (one per suite)")
    p.add_argument("--force", action="store_true",
                   help="recompute cells that already have a finished result")


def add_recipe_arg(p: argparse.ArgumentParser, default: str, study: bool = False) -> None:
    """``--recipe``: how heads are trained (``bench.protocol.RECIPES``, the registry itself as
    the choices)."""
    from bench.protocol import RECIPES

    where = (" (cells naming their own keep it; a head without it trains under bench's own)"
             if study else " (a head without it refuses it)")
    p.add_argument("--recipe", default=default, choices=RECIPES, metavar="{" + ",".join(
        RECIPES.names()) + "}", help="how heads are trained: bench, each head's own grid "
        "selected on val; paper, the seed paper's SGD + StepLR(7, 0.1), 28 epochs, batch 128, "
        f"no selection (linear, attention){where}; default {default}")


def head_options(kinds: Sequence[Any]) -> dict[str, tuple[Any, list[str]]]:
    """Flag -> (its first declaration, the heads that declare it), in declaration order."""
    declared: dict[str, tuple[Any, list[str]]] = {}
    for kind in kinds:
        for option in kind.options:
            declared.setdefault(option.flag, (option, []))[1].append(kind.name)
    return declared


def _head_dest(flag: str) -> str:
    return "head_option_" + flag.lstrip("-").replace("-", "_")


def _parsed_by(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """A head option's parser as an argparse type: its ValueError's message is the error."""
    def read(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from e
    read.__name__ = getattr(parse, "__name__", "value")
    return read


def add_head_options(p: argparse.ArgumentParser, kinds: Sequence[Any]) -> None:
    """Each head option once, saying which heads take it; one that clashes with an option of
    bench's own is left to --probe-arg, with a warning."""
    for flag, (option, heads) in head_options(kinds).items():
        try:
            p.add_argument(flag, dest=_head_dest(flag), type=_parsed_by(option.parse),
                           metavar=option.metavar or flag.lstrip("-").replace("-", "_").upper(),
                           help=f"{option.help} (heads: {', '.join(heads)})".replace("%", "%%"))
        except argparse.ArgumentError:
            warnings.warn(f"the option {flag} of head {', '.join(heads)} clashes with an option "
                          f"of bench's own; give it as --probe-arg {option.setting}=VALUE",
                          stacklevel=2)


def add_schedule_args(p: argparse.ArgumentParser) -> None:
    """Retries, extraction arrays and polling of a sweep's jobs, and where they run."""
    p.add_argument("--retries", type=int, default=1, help="resubmissions of a failed job")
    p.add_argument("--extract-array", type=int, default=1,
                   help="split each extraction over an N-task job array (SLURM)")
    p.add_argument("--poll", type=float, default=5.0, help="seconds between status polls")
    add_executor_args(p)


def add_executor_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--executor", choices=executors, metavar="KIND",
                   help="where jobs run: %(choices)s (default: the profile's, else local)")
    p.add_argument("--profile", help="named executor profile from the profiles file")
    p.add_argument("--profiles", help="profiles YAML (default $BENCH_PROFILES or "
                   "~/.config/bench/profiles.yaml)")
    p.add_argument("--job-dir", help="submitit logs and pickles (default results/jobs)")
    for name, help_text in SLURM_FLAGS.items():
        kind = str if name in ("partition", "account", "qos", "constraint") else int
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, help=help_text)


def task_args(args: argparse.Namespace, task: str) -> dict[str, Any]:
    out = key_values(args.task_arg)
    if args.data_root:
        import inspect

        from bench.registry import tasks

        if "root" not in inspect.signature(tasks.entry(task).factory).parameters:
            raise UsageError(f"task {task!r} reads no files: --data-root does not apply")
        out["root"] = args.data_root
    return out


def head_args(args: argparse.Namespace) -> dict[str, Any]:
    """The head's settings from its options (``HeadKind.options``) and --probe-arg; a head
    option the head does not take is refused, naming the head and what it takes instead."""
    from bench.protocol import head_kind, head_kinds

    kind = head_kind(args.head)
    out = {}
    for flag in head_options(head_kinds()):
        value = getattr(args, _head_dest(flag), None)
        if value is None:
            continue
        if flag not in kind.flags:
            takes = ", ".join(kind.flags) or "none"
            raise UsageError(f"{flag} does not apply to head {args.head!r} (its flags: {takes}; "
                             "other settings go through --probe-arg KEY=VALUE)")
        out[kind.flags[flag]] = value
    return out | key_values(args.probe_arg)


def run_spec(args: argparse.Namespace, backbone: str, task: str, layers: list[str],
             pools: list[str]):
    from bench.run.spec import RunSpec

    return RunSpec(backbone=backbone, task=task, layers=layers, pools=pools, head=args.head,
                   backbone_args=key_values(args.backbone_arg), task_args=task_args(args, task),
                   head_args=head_args(args), seed=args.seed or 0, precision=args.precision,
                   skip_corrupt=args.skip_corrupt, cache_dtype=args.cache_dtype,
                   keep_features=args.keep_features, recipe=args.recipe,
                   **view_settings(args))


def run_options(args: argparse.Namespace):
    from bench.run.spec import RunOptions

    return RunOptions(device=args.device, batch_size=args.batch_size, workers=args.workers,
                      shard_size=args.shard_size, cache_dir=args.cache_dir,
                      progress=not args.no_progress, force=args.force, suite=args.suite,
                      compile=args.compile, decode=args.decode,
                      memory_budget=getattr(args, "memory_budget", "auto"))


def executor(args: argparse.Namespace):
    from bench.run.scheduler import executor_config

    return executor_config(args.executor, args.profile, args.profiles, args.job_dir,
                           **{name: getattr(args, name) for name in SLURM_FLAGS})


def ui_hint(uri: str, suite: str | None = None) -> str:
    """Where to see the results: the MLflow UI's address, at the runs table of ``suite`` in
    bench's results view (``bench.results.record.results_view_path``) when it exists."""
    from bench.results.record import results_view_path
    from bench.results.store import experiment_ids

    found = experiment_ids([suite]) if suite else []
    view = f"/{results_view_path(found[0])}" if found else ""
    if uri.startswith("sqlite:///"):
        return (f"open it in the MLflow UI: mlflow ui --backend-store-uri {uri} --port 5000"
                f"  (then http://127.0.0.1:5000{view})")
    return f"open it in the MLflow UI: {uri.rstrip('/')}{view}"
