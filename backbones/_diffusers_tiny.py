"""Test-sized diffusers pipelines: tiny real architectures with seeded random weights, on disk.

Each is written once with ``save_pretrained`` into the weights dir (pipeline layout: ``unet/`` or
``transformer/``, ``scheduler/``, ``vae/``, ``text_encoder/``, ``tokenizer/``) and then loaded like
any downloaded model, so ``ddpm-tiny``, ``sd-tiny`` and ``dit-tiny`` exercise the real loading path
offline. The tokenizer is a CLIP BPE tokenizer over a tiny vocabulary written here (no download).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import string
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bench.features.weights import weights_dir

TEXT_LENGTH = 16  # tokens per prompt of the tiny tokenizer


def _unet() -> dict[str, Any]:
    from diffusers import DDPMScheduler, UNet2DModel

    return {
        "unet": UNet2DModel(
            sample_size=16,
            block_out_channels=(16, 32),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "UpBlock2D"),
            norm_num_groups=8,
            attention_head_dim=8,
        ),
        "scheduler": DDPMScheduler(num_train_timesteps=1000),
    }


def _vae() -> Any:
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=16,
    )


def tiny_tokenizer() -> Any:
    """A CLIP tokenizer over lowercase letters and digits (plus end-of-word forms), no merges."""
    from transformers import CLIPTokenizer

    symbols = list(string.ascii_lowercase + string.digits)
    vocab = {s: i for i, s in enumerate(["<|startoftext|>", "<|endoftext|>"]
                                        + symbols + [s + "</w>" for s in symbols])}
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=TEXT_LENGTH)


def _text_unet() -> dict[str, Any]:
    from diffusers import PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = tiny_tokenizer()
    return {
        "unet": UNet2DConditionModel(
            sample_size=8,
            in_channels=4,
            out_channels=4,
            block_out_channels=(16, 32),
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=24,
            attention_head_dim=8,
            norm_num_groups=8,
        ),
        "scheduler": PNDMScheduler(  # Stable Diffusion 1.x's schedule
            num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
            beta_schedule="scaled_linear", skip_prk_steps=True,
        ),
        "vae": _vae(),
        "text_encoder": CLIPTextModel(CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=24, intermediate_size=48,
            num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=TEXT_LENGTH,
            bos_token_id=0, eos_token_id=1, pad_token_id=1,
        )),
        "tokenizer": tokenizer,
    }


def _dit() -> dict[str, Any]:
    from diffusers import DDIMScheduler, DiTTransformer2DModel

    return {
        "transformer": DiTTransformer2DModel(
            num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
            num_layers=4, sample_size=8, patch_size=2, num_embeds_ada_norm=10,
        ),
        "scheduler": DDIMScheduler(num_train_timesteps=1000),
        "vae": _vae(),
    }


BUILDERS: dict[str, Callable[[], dict[str, Any]]] = {
    "ddpm": _unet, "sd": _text_unet, "dit": _dit,
}
VERSION = 1  # bump when a builder changes, so old folders are not reused


def tiny_pipeline(kind: str, seed: int = 0) -> Path:
    """The folder of the tiny ``kind`` pipeline with weights from ``seed``, written once."""
    tag = hashlib.sha256(json.dumps([kind, VERSION]).encode()).hexdigest()[:12]
    path = weights_dir() / f"diffusers-{kind}-tiny-{tag}-seed{seed}"
    if path.is_dir():
        return path
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        parts = BUILDERS[kind]()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.partial"))
    for name, part in parts.items():
        part.save_pretrained(tmp / name)
    try:
        os.replace(tmp, path)  # atomic: a concurrent job may have written the same folder
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return path
