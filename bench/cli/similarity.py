"""``bench similarity``: a CKA / mutual-kNN matrix over feature points, with a null and intervals."""

from __future__ import annotations

import argparse

from bench.cli import options
from bench.errors import UsageError

MEASURE_HELP = ("cka-debiased (default: linear CKA, U-centred, not inflated at large d/n), cka "
                "(biased linear), cka-rbf, cka-minibatch, mknn (mutual kNN), cknna")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "similarity", help="CKA / mutual-kNN matrix between feature points (blocks x timesteps "
        "x models), from the feature cache, with a permutation null and 95%% intervals")
    p.add_argument("--preset", help="named settings: a paper file's similarity table that "
                   "declares `preset: NAME` (the shipped paper's CKA figures); flags given "
                   "override them")
    p.add_argument("--backbone", help="backbone preset of the rows (and columns)")
    p.add_argument("--layers", action="append", default=[], metavar="SPEC",
                   help="feature points: names, ranges and globs, comma-separated or repeated, "
                   "e.g. 'block1..37@t90', 'block24@t0..999:25', 'blocks.*'")
    p.add_argument("--pool", action="append", default=[], metavar="POOL",
                   help="pooling of the rows' points, e.g. 1,2,4,8 (default: the backbone's)")
    p.add_argument("--against", help="backbone of the columns (default: the rows' backbone)")
    p.add_argument("--against-layers", action="append", default=[], metavar="SPEC")
    p.add_argument("--against-pool", action="append", default=[], metavar="POOL")
    p.add_argument("--against-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="override an argument of the columns' backbone")
    p.add_argument("--task", help="task whose images are compared (`bench list tasks`)")
    p.add_argument("--split", choices=["train", "val", "test"], help="split (default val)")
    p.add_argument("--n", type=int, help="images: a seeded subset of the split (default: all)")
    # No defaults here: a setting not given is the preset's, else SimilaritySpec's (in help).
    p.add_argument("--measure", help=MEASURE_HELP)
    p.add_argument("--k", type=int, help="mknn, cknna: neighbours per image (default 10)")
    p.add_argument("--rbf-threshold", type=float,
                   help="cka-rbf: bandwidth = threshold x median distance (Kornblith; default 1)")
    p.add_argument("--batch", type=int, help="cka-minibatch: images per batch (default 1000)")
    p.add_argument("--permutations", type=int,
                   help="permutation null per cell (0: none; default 100)")
    p.add_argument("--interval", choices=["jackknife", "subsample", "none"],
                   help="95%% interval over images (default jackknife)")
    p.add_argument("--interval-draws", type=int,
                   help="jackknife groups, or subsamples of n/2 images (default 20)")
    p.add_argument("--noise-draws", type=int,
                   help="diffusion backbones: the matrix at K noise seeds; reports their spread "
                   "(default 1)")
    p.add_argument("--seed", type=int, help="image subset, permutations, intervals (default 0)")
    options.add_feature_args(p)
    p.add_argument("--suite", default="bench", help="MLflow experiment")
    p.add_argument("--force", action="store_true", help="recompute a matrix already logged")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from bench.api import similarity
    from bench.run.similarity_run import similarity_spec, table
    from bench.study.similarity import expand, preset

    split = lambda values: [v for a in values for v in options.csv(a)]  # noqa: E731
    named = preset(args.preset) if args.preset else None
    base = expand(named.settings) if named else {}
    task = args.task or base.get("task")
    if not (args.backbone or base.get("backbone")) or not task:
        raise UsageError("bench similarity needs --backbone and --task (or a --preset)")
    given = {
        "backbone": args.backbone, "task": args.task,
        "layers": split(args.layers), "pools": split(args.pool),
        "backbone_args": options.key_values(args.backbone_arg), "against": args.against,
        "against_layers": split(args.against_layers), "against_pools": split(args.against_pool),
        "against_args": options.key_values(args.against_arg), "split": args.split, "n": args.n,
        "measure": args.measure, "k": args.k, "rbf_threshold": args.rbf_threshold,
        "batch": args.batch, "permutations": args.permutations, "interval": args.interval,
        "interval_draws": args.interval_draws, "noise_draws": args.noise_draws,
        "seed": args.seed, "task_args": options.task_args(args, task),
        "precision": args.precision, "skip_corrupt": args.skip_corrupt,
        "cache_dtype": args.cache_dtype}
    spec = similarity_spec(base | {k: v for k, v in given.items() if v not in (None, [], {})})
    result = similarity(spec, options.run_options(args), named.colours if named else None)
    print(f"{result.name}: {len(result.rows)} x {len(result.cols)} points, n = {result.n} images")
    print(table(result))
    note = "  [already logged: reused; --force recomputes]" if result.reused else ""
    print(f"run {result.run_id}{note}")
    for name, path in sorted(result.files.items()):
        if name.endswith((".png", ".csv")):
            print(f"{'figure' if name.endswith('.png') else 'table'}: {path}")
    return 0
