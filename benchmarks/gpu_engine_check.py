"""The engine's GPU path, checked and timed in one run (no MLflow needed).

1. Extraction through ``bench.features.extract`` of the ``diffusion-tiny`` ADM preset on digits, on the CPU
   in fp32 and on the GPU with bf16 autocast (the ``--precision auto`` default there): images/s of
   each and how far the GPU's bf16 features are from the CPU's fp32 ones.
2. The batched grid probe on those features, on the CPU and on the GPU: test top-1 of each.
3. The grid probe's speed on GPU vs CPU on a larger synthetic problem (25 heads).

    python benchmarks/gpu_engine_check.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.backbones.adm import diffusion_tiny  # noqa: E402  (direct import: no registry scan)
from bench.backbones.adm.backbone import TINY_FLAGS  # noqa: E402
from bench.features.cache import FeatureCache  # noqa: E402
from bench.features.extract import extract  # noqa: E402
from bench.precision import resolve_precision  # noqa: E402
from bench.heads.probe import ProbeConfig, fit_probe  # noqa: E402
from bench.tasks.digits import Digits  # noqa: E402

from probe_speed import synthetic_features  # noqa: E402


def features(device: str, precision: str, cache_dir: str) -> tuple[dict, dict, float]:
    backbone = diffusion_tiny(flags=TINY_FLAGS)
    backbone.name = "diffusion-tiny"
    task = Digits()
    request = ("block24@t90", "2")
    feats, labels, images, seconds = {}, {}, 0, 0.0
    for split in ("train", "val", "test"):
        start = time.perf_counter()
        report = extract(backbone, task.split(split), [request], FeatureCache(cache_dir),
                         task.config, device=torch.device(device),
                         precision=resolve_precision(precision, device),
                         batch_size=256, workers=4, progress=False)
        if device == "cuda":
            torch.cuda.synchronize()
        seconds += time.perf_counter() - start
        images += report.images_processed
        feats[split], labels[split], _ = report.entries[request].load()
    return feats, labels, images / seconds


def main() -> None:
    assert torch.cuda.is_available(), "this check needs a GPU"
    print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        cpu_f, cpu_l, cpu_rate = features("cpu", "fp32", f"{tmp}/cpu")
        gpu_f, gpu_l, gpu_rate = features("cuda", "bf16", f"{tmp}/gpu")
    rel = np.linalg.norm(gpu_f["test"] - cpu_f["test"]) / np.linalg.norm(cpu_f["test"])
    print(f"extraction diffusion-tiny block24@t90 pool 2 on digits: CPU fp32 {cpu_rate:.0f} img/s,"
          f" GPU bf16 {gpu_rate:.0f} img/s ({gpu_rate / cpu_rate:.1f}x); "
          f"bf16-vs-fp32 relative L2 {rel:.4f}")
    cfg = ProbeConfig()
    for name, dev, f, lab in (("CPU", "cpu", cpu_f, cpu_l), ("GPU", "cuda", gpu_f, gpu_l)):
        start = time.perf_counter()
        result = fit_probe(f, lab, 10, cfg, device=dev)
        print(f"grid probe on {name}: test top1 {result.test['top1']:.2f} "
              f"(best {result.best}) in {time.perf_counter() - start:.2f} s")
    feats, labels, classes = synthetic_features(20000, 1024, 200)
    timings = {}
    for dev in ("cuda", "cpu"):
        start = time.perf_counter()
        result = fit_probe(feats, labels, classes, ProbeConfig(epochs=20), device=dev)
        timings[dev] = time.perf_counter() - start
        print(f"synthetic 20000x1024, 200 classes, 25 heads x 20 epochs on {dev}: "
              f"{timings[dev]:.2f} s, test top1 {result.test['top1']:.2f}")
    print(f"grid probe GPU speed-up over this machine's CPU: {timings['cpu'] / timings['cuda']:.1f}x")


if __name__ == "__main__":
    main()
