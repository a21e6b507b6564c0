"""Compiled extraction (bench.features.compile): same features as eager, same cache entries, static shapes.

Compiling on the CPU takes seconds per graph, so the parity test compiles one tiny graph (the
first two blocks of diffusion-tiny: a convolution and a ResBlock) on a few images.
"""

from __future__ import annotations

import pytest
import torch

import bench
from bench.features.cache import FeatureCache
from bench.features.compile import StaticCompiled, enable_compile
from bench.errors import UsageError
from bench.features.extract import entry_fields, extract
from bench.paths import compile_cache_dir
from bench.precision import resolve_precision

FP32 = resolve_precision("fp32", "cpu")


def test_compiled_adm_matches_eager_and_pads_the_last_batch():
    backbone = bench.create_backbone("diffusion-tiny")
    requests = [(backbone.canonical_layer("block2"), "2")]
    torch.manual_seed(0)
    x = torch.rand(5, 3, 64, 64) * 2 - 1
    ids = torch.arange(5)
    with torch.inference_mode():
        eager = backbone.extract(x, requests, ids)[requests[0]]
        enable_compile(backbone)
        full = backbone.extract(x[:3], requests, ids[:3])[requests[0]]
        last = backbone.extract(x[3:], requests, ids[3:])[requests[0]]  # padded from 2 to 3
    assert backbone.compiled_forward.batch == 3 and last.shape[0] == 2
    torch.testing.assert_close(torch.cat([full, last]), eager, atol=1e-4, rtol=1e-4)
    cached = list((compile_cache_dir() / "fxgraph").rglob("*"))
    assert cached, "inductor's FX graph cache should persist under the weights folder"


def test_compile_is_not_part_of_the_cache_key(tmp_path):
    eager = bench.create_backbone("diffusion-tiny")
    compiled = bench.create_backbone("diffusion-tiny", compile=True)
    assert compiled.compiled_forward.enabled and not eager.compiled_forward.enabled
    task = bench.create_task("digits")
    split = task.split("val").subset(range(5))
    layer = eager.canonical_layer("block3")
    assert entry_fields(eager, task.config, split, layer, "2", FP32) == entry_fields(
        compiled, task.config, split, layer, "2", FP32
    )
    cache = FeatureCache(tmp_path / "cache")
    options = dict(device=torch.device("cpu"), batch_size=4, progress=False)
    first = extract(eager, split, [(layer, "2")], cache, task.config, **options)
    again = extract(eager, split, [(layer, "2")], cache, task.config, compile=True, **options)
    assert first.shards_written == 1 and again.shards_written == 0  # found: the same entry


def test_random_unet_truncated_forward_is_the_library_forward():
    backbone = bench.create_backbone("random-unet")
    names = list(backbone.blocks())
    captured = {}
    for name, block in backbone.blocks().items():
        block.register_forward_hook(
            lambda _m, _a, out, name=name: captured.__setitem__(
                name, out[0] if isinstance(out, tuple) else out
            )
        )
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        backbone.unet(x, backbone.timestep)  # the whole library forward, hooks capture each block
        ours = backbone.forward_features(x, names)
    for name in names:
        torch.testing.assert_close(ours[name], captured[name], atol=0, rtol=0)


def test_static_compiled_is_eager_until_enabled():
    calls = []

    def forward(x: torch.Tensor, scale: float) -> dict[str, torch.Tensor]:
        calls.append(x.shape[0])
        return {"y": x * scale}

    wrapped = StaticCompiled(forward)
    assert torch.equal(wrapped(torch.ones(3, 2), 2.0)["y"], torch.full((3, 2), 2.0))
    assert calls == [3] and wrapped.batch == 0


def test_compile_refuses_a_backbone_without_a_compiled_forward():
    with pytest.raises(UsageError, match="does not support compile=True"):
        enable_compile(bench.create_backbone("pixels", size=8))
