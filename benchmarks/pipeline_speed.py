"""Does extraction keep the model fed? Decode-only, model-only and end-to-end images/s in one run.

Writes a folder of synthetic photo-like JPEGs (500x375, quality 90, like CUB or ImageNet), then
measures with the same backbone, batch size and workers:
  decode-only  the extraction input pipeline alone (bench.features.pipeline.Loader: read, decode, resize,
               crop, onto the device), for each --decode;
  model-only   the backbone's extract() on one prepared batch, repeated;
  end-to-end   bench.features.extract.extract() into a fresh feature cache (workers start-up included).
The stages overlap (workers decode while the model runs), so end-to-end should reach the slower
stage's rate: the last column is end-to-end / min(decode-only, model-only), target >= 0.85.

    python benchmarks/pipeline_speed.py --backbone diffusion-tiny --layer block9 --workers 1 --threads 1
    python benchmarks/pipeline_speed.py --backbone diffusion --device cuda --precision bf16 \\
        --batch-size 64 --workers 8 --decode cpu,gpu --compile --images 2048
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.loading_speed import make_tree  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backbone", default="diffusion-tiny")
    p.add_argument("--layer", help="default: the backbone's default layer")
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, help="torch threads of the main process (model)")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto")
    p.add_argument("--decode", default="cpu", help="comma-separated: cpu, gpu")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--random-weights", action="store_true",
                   help="ADM presets: seeded random weights of the same structure (offline)")
    p.add_argument("--dir", help="folder for the JPEGs (kept; default: temporary)")
    args = p.parse_args()

    import torch

    import bench
    from bench.features.cache import FeatureCache
    from bench.features.compile import enable_compile
    from bench.features.extract import _decode_device, extract
    from bench.features.images import load_rgb
    from bench.features.pipeline import Loader
    from bench.precision import autocast, resolve_device, resolve_precision
    from bench.task import Split

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device.type)
    if args.random_weights:
        from bench.backbones.adm.backbone import random_weights

        from bench.registry import backbones

        flags = backbones.entry(args.backbone).defaults["flags"]
        backbone = bench.create_backbone(args.backbone, weights=str(random_weights(flags)))
    else:
        backbone = bench.create_backbone(args.backbone)
    if args.compile:
        enable_compile(backbone)
    layer = backbone.canonical_layer(args.layer or backbone.default_layers[0])
    requests = [(layer, backbone.default_pool)]
    backbone.eval().to(device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.dir or tmp) / f"pipeline-500x375-{args.images}"
        if not folder.exists():
            make_tree(folder, args.images, (500, 375))
        items = sorted(str(f) for f in folder.glob("*/*.jpg"))
        split = Split("all", items, [0] * len(items), load_rgb)
        batches = [list(range(i, min(i + args.batch_size, len(split))))
                   for i in range(0, len(split), args.batch_size)]
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
        print(f"{backbone.name} {layer}, {len(split)} JPEGs 500x375, batch {args.batch_size}, "
              f"{args.workers} workers, {torch.get_num_threads()} model threads, {precision.name}, "
              f"compile={args.compile}, device {name}")

        x = torch.stack([backbone.transform()(split.load(i)) for i in batches[0]]).to(device)
        ids = torch.tensor(batches[0], device=device)
        with torch.inference_mode(), autocast(precision.extraction, device):
            backbone.extract(x, requests, ids)  # warm-up (compilation, autotuning)

        def model_only() -> float:
            sync()
            start, runs = time.perf_counter(), max(3, len(batches) // 2)
            with torch.inference_mode(), autocast(precision.extraction, device):
                for _ in range(runs):
                    backbone.extract(x, requests, ids)[requests[0]].float().cpu()
            return runs * len(x) / (time.perf_counter() - start)

        def decode_only(decode: str) -> float:
            start = time.perf_counter()
            for _ in Loader(split, backbone.transform(), batches, device=device,
                            workers=args.workers, decode_on=_decode_device(decode, device)):
                pass
            sync()
            return len(split) / (time.perf_counter() - start)

        def end_to_end(decode: str, round_: int) -> float:
            cache = FeatureCache(Path(tmp) / f"cache-{decode}-{round_}")
            start = time.perf_counter()
            extract(backbone, split, requests, cache, {"task": "pipeline-speed"}, device=device,
                    precision=precision, batch_size=args.batch_size, workers=args.workers,
                    progress=False, decode=decode)
            sync()
            return len(split) / (time.perf_counter() - start)

        print(f"{'decode':<7} {'decode-only':>12} {'model-only':>11} {'end-to-end':>11} "
              f"{'e2e / slower':>13}   (img/s, median of {args.rounds} interleaved rounds)")
        for decode in args.decode.split(","):
            rates = [(decode_only(decode), model_only(), end_to_end(decode, r))
                     for r in range(args.rounds)]  # interleaved: a busy machine slows all three
            loading, model, e2e = (statistics.median(column) for column in zip(*rates))
            print(f"{decode:<7} {loading:>12.1f} {model:>11.1f} {e2e:>11.1f} "
                  f"{e2e / min(loading, model):>12.2f}x", flush=True)


if __name__ == "__main__":
    main()
