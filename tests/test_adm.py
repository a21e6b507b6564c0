"""ADM backbone: parity with guided-diffusion's own outputs, and the feature API around it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"

import bench
from bench.backbones.adm.backbone import (
    RELEASED,
    TINY_FLAGS,
    CheckpointMismatchError,
    meta_unet,
    mismatch_message,
)
from bench.backbones.adm.unet import complete_flags
from bench.features.weights import WeightsError, file_sha256

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "adm"
NAMES = ["adm_256_uncond_tiny", "adm_64_cond_tiny", "adm_128_cond_tiny"]
needs_fixtures = pytest.mark.skipif(
    not FIXTURES.is_dir(), reason=f"ADM fixtures not found at {FIXTURES} (../shared/fixtures)"
)


@pytest.fixture(autouse=True)
def weights_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_WEIGHTS", str(tmp_path / "weights"))


def fixture(name: str) -> tuple[dict, dict[str, torch.Tensor], Path]:
    from safetensors.torch import load_file

    meta = json.loads((FIXTURES / f"{name}.json").read_text())
    io = load_file(str(FIXTURES / f"{name}.io.safetensors"))
    return meta, io, FIXTURES / f"{name}.weights.safetensors"


def fixture_backbone(name: str, **kwargs):
    meta, io, weights = fixture(name)
    bb = bench.create_backbone(
        "adm",
        flags=meta["create_model_flags"],
        weights=str(weights),
        schedule=meta["diffusion"]["noise_schedule"],
        **kwargs,
    )
    return bb, meta, io


@pytest.fixture(scope="module")
def tiny():
    return bench.create_backbone("diffusion-tiny")


@needs_fixtures
@pytest.mark.parametrize("name", NAMES)
def test_fixture_parity(name):
    bb, meta, io = fixture_backbone(name)
    assert bb.weights_digest() == meta["weights_sha256"]
    t, y = io["t"], io.get("y")
    x_t = bb.schedule.q_sample(io["x0"], t, io["noise"])
    assert (x_t - io["xt"]).abs().max() < 1e-6
    n = bb.unet.num_blocks
    assert n == len(meta["blocks_1_based"])
    feats = bb.unet_features(x_t, t, blocks=range(1, n + 1), y=y)
    for block in range(1, n + 1):
        ref = io[f"block_{block:02d}"]
        assert list(feats[block].shape[1:]) == meta["block_shapes"][str(block)]
        err = (feats[block] - ref).abs().max().item()
        assert err < 1e-4, f"block {block}: max abs diff {err}"
    with torch.no_grad():
        out = bb.unet(x_t, t, y)
    assert (out - io["model_output"]).abs().max() < 1e-4


@needs_fixtures
def test_parity_with_channels_last_and_pt_weights(tmp_path):
    meta, io, weights = fixture("adm_64_cond_tiny")
    from safetensors.torch import load_file

    pt = tmp_path / "ckpt.pt"
    torch.save(load_file(str(weights)), pt)
    bb = bench.create_backbone(
        "adm", flags=meta["create_model_flags"], weights=str(pt), channels_last=True
    )
    feats = bb.unet_features(io["xt"], io["t"], blocks=[17, 33], y=io["y"])
    for block in (17, 33):
        assert (feats[block] - io[f"block_{block:02d}"]).abs().max() < 1e-4


@needs_fixtures
def test_bf16_close_to_fp32():
    """Under the bf16 policy's autocast (as bench.features.extract runs it): relative L2 error under 5% on
    every block (measured about 1-2%)."""
    from bench.precision import autocast

    bb, _, io = fixture_backbone("adm_256_uncond_tiny")
    with autocast("bf16", torch.device("cpu")):
        feats = bb.unet_features(io["xt"], io["t"], blocks=range(1, 38))
    for block, value in feats.items():
        assert value.dtype == torch.bfloat16
        ref = io[f"block_{block:02d}"]
        rel = ((value.float() - ref).norm() / ref.norm()).item()
        assert rel < 0.05, f"block {block}: relative error {rel:.3f}"


def test_early_stop_runs_no_later_block(tiny):
    blocks = [
        *tiny.unet.input_blocks,
        tiny.unet.middle_block,
        *tiny.unet.output_blocks,
        tiny.unet.out,
    ]
    calls = [0] * len(blocks)
    handles = [
        m.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
        for i, m in enumerate(blocks)
    ]
    try:
        tiny.forward_features(torch.zeros(2, 3, 64, 64), ["block24@t90", "block5@t150"])
        assert calls == [1] * 24 + [0] * 14
        calls[:] = [0] * len(blocks)
        tiny.forward_features(torch.zeros(1, 3, 64, 64), ["input_blocks.6"])
        assert calls == [1] * 7 + [0] * 31
    finally:
        for h in handles:
            h.remove()


def test_several_blocks_and_timesteps_match_separate_calls(tiny):
    x = torch.rand(3, 3, 64, 64) * 2 - 1
    ids = torch.tensor([7, 8, 9])
    layers = ["block24@t90", "block5@t150", "block19@t90", "middle_block@t150"]
    together = tiny.forward_features(x, layers, ids)
    for layer in layers:
        alone = tiny.forward_features(x, [layer], ids)[layer]
        assert torch.allclose(together[layer], alone, atol=1e-5), layer


def test_noise_depends_only_on_sample_id(tiny):
    x = torch.rand(3, 3, 64, 64) * 2 - 1
    full = tiny.forward_features(x, ["block24"], torch.tensor([10, 11, 12]))["block24"]
    part = tiny.forward_features(x[[2, 0]], ["block24"], torch.tensor([12, 10]))["block24"]
    assert torch.allclose(full[[2, 0]], part, atol=1e-5)
    assert torch.equal(tiny.noise([5], 0, (3, 4, 4)), tiny.noise([5], 0, (3, 4, 4)))
    assert not torch.equal(tiny.noise([5], 0, (3, 4, 4)), tiny.noise([6], 0, (3, 4, 4)))
    assert not torch.equal(tiny.noise([5], 0, (3, 4, 4)), tiny.noise([5], 1, (3, 4, 4)))


def test_noise_draws_average():
    bb = bench.create_backbone("diffusion-tiny", noise_draws=2)
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    ids = [3, 4]
    got = bb.forward_features(x, ["block10"], torch.tensor(ids))["block10"]
    t = torch.full((2,), 90)
    draws = [
        bb.unet_features(bb.schedule.q_sample(x, t, bb.noise(ids, k, (3, 64, 64))), t, [10])[10]
        for k in range(2)
    ]
    assert torch.allclose(got, (draws[0] + draws[1]) / 2, atol=1e-5)
    assert bb.config["noise_draws"] == 2


def test_canonical_layer_aliases(tiny):
    for alias in [
        "24",
        "block24",
        "output_blocks.4",
        "24@t90",
        "block24@90",
        "output_blocks.4@t90",
    ]:
        assert tiny.canonical_layer(alias) == "block24@t90"
    assert tiny.canonical_layer("middle_block@t150") == "block19@t150"
    assert tiny.canonical_layer("input_blocks.0") == "block1@t90"
    assert tiny.feature_point("24@150").name == "block24@t150"
    assert len(tiny.feature_points()) == 37
    for bad in ["block38", "0", "output_blocks.18", "foo", "24@x", "24@t1000"]:
        with pytest.raises(ValueError):
            tiny.canonical_layer(bad)


def test_extract_pools_and_transform(tiny):
    from PIL import Image

    img = Image.new("RGB", (100, 80), (255, 0, 128))
    x = tiny.transform()(img)
    assert x.shape == (3, 64, 64) and x.min() >= -1 and x.max() <= 1
    out = tiny.extract(x[None], [("block24@t90", "2"), ("block19@t150", "map8")])
    assert out[("block24@t90", "2")].shape == (1, 128 * 4)
    assert out[("block19@t150", "map8")].shape == (1, 128, 2, 2)


@needs_fixtures
def test_wrong_checkpoint_names_the_mismatch():
    meta, _, _ = fixture("adm_256_uncond_tiny")
    with pytest.raises(CheckpointMismatchError, match="missing keys.*class_cond=True"):
        bench.create_backbone(
            "adm",
            flags=meta["create_model_flags"],
            weights=str(FIXTURES / "adm_64_cond_tiny.weights.safetensors"),
        )
    released = meta_unet(complete_flags(RELEASED["adm-64"].flags)).state_dict()
    assert "preset adm-64" in mismatch_message(complete_flags(TINY_FLAGS), released)
    with pytest.raises(ValueError, match="noise_schedule"):
        bench.create_backbone(
            "adm",
            flags={**meta["create_model_flags"], "noise_schedule": "linear"},
            weights="unused.pt",
        )


def test_real_preset_offline_without_cache_is_a_clear_error():
    with pytest.raises(WeightsError, match="256x256_diffusion_uncond.pt"):
        bench.create_backbone("diffusion")


def test_tiny_preset_saves_and_reloads_random_weights():
    a = bench.create_backbone("diffusion-tiny")
    files = list(Path(os.environ["BENCH_WEIGHTS"]).glob("random-adm-*.safetensors"))
    assert len(files) == 1
    assert a.weights_digest() == file_sha256(files[0])
    b = bench.create_backbone("diffusion-tiny", t=150)
    assert b.weights_digest() == a.weights_digest()
    assert bench.create_backbone("diffusion-tiny", seed=1).weights_digest() != a.weights_digest()
    assert b.config["t"] == 150 and b.default_layers == ("block24@t150",)
    assert a.config["flags"]["channel_mult"] == "1,1,2,2,4,4"


def test_layers_group_by_timestep_for_difformer():
    """The ADM family owns its block@t grammar: DifFormer's groups come from the backbone."""
    tiny = bench.create_backbone("diffusion-tiny")
    layers = [tiny.canonical_layer(n) for n in ("19@90", "block24@t90", "19@t150", "24@150")]
    assert tiny.layer_groups(layers) == [["block19@t90", "block24@t90"],
                                         ["block19@t150", "block24@t150"]]
    with pytest.raises(ValueError, match="every block at every timestep"):
        tiny.layer_groups(["block19@t90", "block24@t90", "block19@t150"])
    assert bench.create_backbone("pixels").layer_groups(["image"]) == [["image"]]


def test_precision_is_the_policys_alone():
    """One precision policy decides (bench.features.extract's autocast): the backbone has no precision of
    its own to disagree with it, and its config (hence its identity) names none."""
    from bench.registry import InvalidArgumentError

    with pytest.raises(InvalidArgumentError, match="precision"):
        bench.create_backbone("diffusion-tiny", precision="bf16")
    assert "precision" not in bench.create_backbone("diffusion-tiny").config
