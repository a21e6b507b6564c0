"""diffusers models as backbones (issue 11): ``diffusers:PATH`` and the tiny twins of the presets.

The tiny pipelines are real diffusers/transformers architectures with seeded random weights, saved
with ``save_pretrained`` and loaded back through the same code as a downloaded model. References
are the libraries' own full forward passes, observed with forward hooks.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"

import bench
from bench.backbones._diffusers_tiny import tiny_pipeline
from bench.backbones.diffusers_models import DiffusersBackbone, DiffusersLoadError, load_pipeline
from bench.features.weights import file_sha256
from tests.conftest import REPO

# preset -> (diffusers class of the denoiser, its folder, modules checked)
TINY = {
    "ddpm-tiny": ("UNet2DModel", "unet", ["down_blocks.0", "mid_block", "up_blocks.1"]),
    "sd-tiny": ("UNet2DConditionModel", "unet", ["down_blocks.0", "mid_block", "up_blocks.0"]),
    "dit-tiny": ("DiTTransformer2DModel", "transformer", ["transformer_blocks.1",
                                                          "transformer_blocks.3"]),
}


def images(backbone: DiffusersBackbone, n: int = 2, seed: int = 0) -> torch.Tensor:
    s = backbone.input_size
    return torch.rand(n, 3, s, s, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def reference_features(preset: str, x: torch.Tensor, ids: list[int], t: int,
                       modules: list[str]) -> dict[str, torch.Tensor]:
    """The pipeline's components loaded by the libraries themselves, noised as Stable Diffusion
    training does, one full forward observed by hooks (first element of tuple outputs)."""
    import diffusers
    import transformers

    from bench.backbones._diffusion import seeded_noise

    kind = preset.removesuffix("-tiny")
    folder = tiny_pipeline(kind)
    class_name, sub, _ = TINY[preset]
    model = getattr(diffusers, class_name).from_pretrained(folder / sub).eval()
    scheduler = diffusers.DDPMScheduler.from_pretrained(folder / "scheduler")  # same alphas
    clean = x
    if kind != "ddpm":
        vae = diffusers.AutoencoderKL.from_pretrained(folder / "vae").eval()
        clean = vae.encode(x).latent_dist.mean * vae.config.scaling_factor
    noise = seeded_noise(0, ids, 0, tuple(clean.shape[1:]))
    timesteps = torch.full((len(x),), t)
    x_t = scheduler.add_noise(clean, noise, timesteps)
    seen: dict[str, torch.Tensor] = {}
    named = dict(model.named_modules())

    def keep(name: str):
        def hook(module, args, out) -> None:  # returning None leaves the output untouched
            seen.setdefault(name, out[0] if isinstance(out, tuple) else out)
        return hook

    handles = [named[m].register_forward_hook(keep(m)) for m in modules]
    with torch.no_grad():
        if kind == "sd":
            tokenizer = transformers.AutoTokenizer.from_pretrained(folder / "tokenizer")
            encoder = transformers.CLIPTextModel.from_pretrained(folder / "text_encoder").eval()
            ids_text = tokenizer([""] * len(x), padding="max_length", return_tensors="pt",
                                 max_length=tokenizer.model_max_length).input_ids
            model(x_t, timesteps, encoder_hidden_states=encoder(ids_text)[0])
        elif kind == "dit":
            model(x_t, timestep=timesteps, class_labels=torch.full((len(x),), 10))  # null class
        else:
            model(x_t, timesteps)
    for h in handles:
        h.remove()
    return seen


@pytest.mark.parametrize("preset", list(TINY))
def test_features_equal_the_models_own_forward(preset):
    bb = bench.create_backbone(preset)
    _, _, modules = TINY[preset]
    x, ids = images(bb), [3, 11]
    got = bb.forward_features(x, [f"{m}@t60" for m in modules], torch.tensor(ids))
    want = reference_features(preset, x, ids, 60, modules)
    for m in modules:
        expected = want[m]
        if expected.dim() == 3:  # DiT tokens -> their patch grid
            side = round(expected.shape[1] ** 0.5)
            expected = expected.transpose(1, 2).reshape(len(x), -1, side, side)
        torch.testing.assert_close(got[f"{m}@t60"], expected, rtol=1e-5, atol=1e-5)


def counting_hooks(bb: DiffusersBackbone, names: list[str]) -> tuple[dict[str, int], list]:
    calls = dict.fromkeys(names, 0)
    modules = dict(bb.denoiser.named_modules())

    def hook(name: str):
        def count(*_):
            calls[name] += 1
        return count

    return calls, [modules[n].register_forward_hook(hook(n)) for n in names]


@pytest.mark.parametrize("preset,asked,later", [
    ("ddpm-tiny", ["down_blocks.1@t10", "down_blocks.0@t20"], ["mid_block", "up_blocks.0",
                                                                "conv_out"]),
    ("dit-tiny", ["transformer_blocks.1"], ["transformer_blocks.2", "transformer_blocks.3",
                                            "proj_out_2"]),
])
def test_early_stop_never_runs_later_modules(preset, asked, later):
    bb = bench.create_backbone(preset)
    first = bb.feature_modules()[0]
    calls, handles = counting_hooks(bb, [first, *later])
    bb.forward_features(images(bb), asked)
    for h in handles:
        h.remove()
    assert calls[first] == 1  # one pass for both timesteps
    assert all(calls[name] == 0 for name in later), calls


def test_same_noise_per_sample_id_on_every_run_and_batch():
    bb = bench.create_backbone("ddpm-tiny")
    x = images(bb, 1).repeat(2, 1, 1, 1)  # the same image twice
    layer = ["down_blocks.0@t500"]
    a = bb.forward_features(x, layer, torch.tensor([4, 9]))[layer[0]]
    again = bench.create_backbone("ddpm-tiny").forward_features(x, layer, torch.tensor([4, 9]))
    alone = bb.forward_features(x[:1], layer, torch.tensor([9]))[layer[0]]
    assert torch.equal(a, again[layer[0]])
    torch.testing.assert_close(alone[0], a[1])
    assert not torch.allclose(a[0], a[1])  # ids 4 and 9: different noise
    other = bench.create_backbone("ddpm-tiny", noise_seed=1)
    assert not torch.allclose(other.forward_features(x, layer, torch.tensor([4, 9]))[layer[0]], a)
    assert other.config["noise_seed"] == 1 and other.config != bb.config


def test_noise_draws_average_their_features():
    from bench.backbones._diffusion import seeded_noise

    bb = bench.create_backbone("ddpm-tiny", noise_draws=3)
    x, ids = images(bb), [0, 5]
    got = bb.forward_features(x, ["mid_block@t200"], torch.tensor(ids))["mid_block@t200"]
    t = torch.full((2,), 200)
    draws = [bb.denoiser_features(bb.scheduler.add_noise(x, seeded_noise(0, ids, d, (3, 16, 16)),
                                                         t), t, ["mid_block"])["mid_block"]
             for d in range(3)]
    torch.testing.assert_close(got, torch.stack(draws).mean(0), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(draws[0], draws[1])
    assert bb.config["noise_draws"] == 3


def test_several_timesteps_in_one_pass_equal_separate_passes():
    bb = bench.create_backbone("sd-tiny")
    x, ids = images(bb, 3), torch.tensor([1, 2, 3])
    layers = ["up_blocks.0@t10", "down_blocks.1@t700", "up_blocks.0@t700"]
    calls, handles = counting_hooks(bb, ["conv_in"])
    together = bb.forward_features(x, layers, ids)
    for h in handles:
        h.remove()
    assert calls["conv_in"] == 1
    for layer in layers:
        torch.testing.assert_close(together[layer], bb.forward_features(x, [layer], ids)[layer],
                                   rtol=1e-5, atol=1e-5)


def test_weights_digest_is_the_files_sha256_and_reload_is_identical():
    folder = tiny_pipeline("ddpm")
    bb = bench.create_backbone("ddpm-tiny")
    assert bb.weights_digest() == file_sha256(folder / "unet" / "diffusion_pytorch_model.safetensors")
    sd = bench.create_backbone("sd-tiny")
    assert sd.weights_digest() != bench.create_backbone("sd-tiny", seed=1).weights_digest()
    assert sd.config["prompt"] == "" and "latent mean" in sd.config["latents"]
    prompted = bench.create_backbone("sd-tiny", prompt="a bird")
    assert not torch.equal(prompted.text_embedding, sd.text_embedding)
    assert prompted.config != sd.config


def save_flat_unet(path) -> None:
    """A UNet2DModel's own save_pretrained folder with the scheduler's config beside it."""
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    UNet2DModel(sample_size=8, block_out_channels=(8, 16), layers_per_block=1,
                down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2,
                norm_num_groups=4).save_pretrained(path)
    DDPMScheduler(num_train_timesteps=100).save_pretrained(path)


def test_bench_run_on_a_saved_folder_through_the_cli(tmp_path):
    save_flat_unet(tmp_path / "model")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "bench.cli", "run", "--backbone", f"diffusers:{tmp_path / 'model'}",
         "--task", "digits", "--task-arg", "limit=40", "--layer", "mid_block@t50", "--epochs", "2",
         "--lrs", "1e-2", "--wds", "0", "--workers", "0", "--no-progress"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    from .conftest import records

    [record] = records()
    assert record.backbone == f"diffusers:{tmp_path / 'model'}"
    assert f"test_top1 {record.metrics['test_top1']:.2f}" in proc.stdout  # printed = logged
    assert record.weights_sha256 == file_sha256(
        tmp_path / "model" / "diffusion_pytorch_model.safetensors")


def test_clear_errors(tmp_path):
    with pytest.raises(DiffusersLoadError, match="folder not found: .*nowhere"):
        load_pipeline(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DiffusersLoadError, match="empty has no denoiser: expected unet/"):
        load_pipeline(str(tmp_path / "empty"))
    save_flat_unet(tmp_path / "model")
    (tmp_path / "model" / "scheduler_config.json").unlink()
    with pytest.raises(DiffusersLoadError, match="model has no scheduler"):
        load_pipeline(str(tmp_path / "model"))
    bb = bench.create_backbone("ddpm-tiny")
    with pytest.raises(ValueError, match="no module 'mid'.*down_blocks.0, down_blocks.1, "
                                         "mid_block, up_blocks.0, up_blocks.1"):
        bb.canonical_layer("mid@t50")
    with pytest.raises(ValueError, match="timestep 1000 outside"):
        bb.canonical_layer("mid_block@t1000")
    with pytest.raises(ValueError, match="needs a model"):
        bench.create_backbone("diffusers")


def test_missing_text_encoder_is_named(tmp_path):
    import shutil

    shutil.copytree(tiny_pipeline("sd"), tmp_path / "sd")
    shutil.rmtree(tmp_path / "sd" / "text_encoder")
    with pytest.raises(DiffusersLoadError, match="sd has no text encoder"):
        load_pipeline(str(tmp_path / "sd"))


def test_offline_hub_repo_not_in_cache_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(DiffusersLoadError, match="huggingface-cli download google/ddpm-cifar10-32"):
        bench.create_backbone("ddpm-cifar10")


def test_difformer_groups_diffusers_layers_by_timestep():
    backbone = bench.create_backbone("ddpm-tiny")
    layers = [backbone.canonical_layer(n) for n in
              ("mid_block@t50", "up_blocks.0@t50", "mid_block@t90", "up_blocks.0@t90")]
    assert backbone.layer_groups(layers) == [["mid_block@t50", "up_blocks.0@t50"],
                                             ["mid_block@t90", "up_blocks.0@t90"]]
    with pytest.raises(ValueError, match="every block at every timestep"):
        backbone.layer_groups(layers[:3])
