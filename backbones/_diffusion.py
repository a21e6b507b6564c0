"""What the diffusion families (ADM, diffusers) share: seeded noise, ``@tT`` layers, the noised pass.

Features of an image are module outputs of ONE denoiser pass on a noised copy of it. The noise of
image ``sample_id`` i in draw k comes from a CPU generator seeded by (noise_seed, i, k), so it is
the same whatever the batch, the device or the other timesteps asked for; all timesteps of a batch
go through the denoiser stacked as one batch (B images x T timesteps).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import torch

from bench.errors import UsageError
from bench.points import LayerName


def noise_seed_for(noise_seed: int, sample_id: int, draw: int, domain: str = "adm-noise") -> int:
    """A 63-bit generator seed from (noise_seed, sample_id, draw): no collisions between images.

    ``domain`` keeps independent random streams apart (the noise vs. a VAE latent sample).
    """
    digest = hashlib.sha256(f"{domain}/{noise_seed}/{sample_id}/{draw}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def generators(
    noise_seed: int, sample_ids: Sequence[int], draw: int, domain: str = "adm-noise"
) -> list[torch.Generator]:
    """One seeded CPU generator per image (the list form diffusers' ``randn_tensor`` takes)."""
    return [
        torch.Generator().manual_seed(noise_seed_for(noise_seed, int(i), draw, domain))
        for i in sample_ids
    ]


def seeded_noise(
    noise_seed: int, sample_ids: Sequence[int], draw: int, shape: tuple[int, ...]
) -> torch.Tensor:
    """Gaussian noise per image from its own CPU generator: independent of batch and device."""
    return torch.stack([
        torch.randn(shape, generator=g) for g in generators(noise_seed, sample_ids, draw)
    ])


def split_timestep(layer: str, default_t: int, steps: int, example: str) -> tuple[str, int]:
    """``MODULE@tT`` (or ``@T``, or no suffix: ``default_t``) -> (MODULE, T), T in [0, steps)."""
    name = LayerName.parse(layer, example)
    t = default_t if name.t is None else name.t
    check_timestep(t, steps)
    return name.module, t


def check_timestep(t: int, steps: int) -> None:
    if not 0 <= t < steps:
        raise UsageError(f"timestep {t} outside [0, {steps}) of this model's noise schedule")


def timestep_groups(parsed: Sequence[tuple[Any, int]], prefix: str = "") -> list[list[str]]:
    """(module, t) pairs grouped per timestep for DifFormer, modules in first-seen order; every
    module must appear at every timestep. A pair's layer name is ``PREFIXMODULE@tT``."""
    modules = list(dict.fromkeys(m for m, _ in parsed))
    steps = list(dict.fromkeys(t for _, t in parsed))
    if len(set(parsed)) != len(modules) * len(steps):
        layers = [str(LayerName(f"{prefix}{m}", t)) for m, t in parsed]
        raise UsageError(f"layers {layers} do not hold every block at every timestep")
    return [[str(LayerName(f"{prefix}{m}", t)) for m in modules] for t in steps]


def transform_description(size: int, interpolation: str) -> str:
    return f"resize shorter side to {size} ({interpolation}), center crop {size}, scale to [-1, 1]"


def transform(size: int, interpolation: str) -> Callable[[Any], torch.Tensor]:
    """Resize the short side, centre-crop, map [0, 1] to [-1, 1]: what both families train on."""
    from torchvision import transforms as T

    return T.Compose([
        T.Resize(size, interpolation=T.InterpolationMode(interpolation)),
        T.CenterCrop(size),
        T.ToTensor(),
        T.Normalize([0.5] * 3, [0.5] * 3),
    ])


def noised_features(
    clean: torch.Tensor,
    sample_ids: Sequence[int],
    timesteps: Sequence[int],
    *,
    noise_seed: int,
    draws: int,
    add_noise: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    features: Callable[[torch.Tensor, torch.Tensor], dict[Hashable, torch.Tensor]],
) -> dict[tuple[Hashable, int], torch.Tensor]:
    """{(module, t): output} for ``clean`` noised at every t, averaged over ``draws`` noises.

    ``add_noise(x0, eps, t)`` is the family's forward noising; ``features(x_t, t)`` returns the
    outputs of the modules asked for, for the B x T stacked batch (one pass per draw).
    """
    b = clean.shape[0]
    t_all = torch.tensor(list(timesteps), device=clean.device).repeat_interleave(b)
    ones = [1] * (clean.dim() - 1)
    clean_all = clean.repeat(len(timesteps), *ones)
    total: dict[Hashable, torch.Tensor] = {}
    for draw in range(draws):
        eps = seeded_noise(noise_seed, sample_ids, draw, tuple(clean.shape[1:])).to(clean)
        x_t = add_noise(clean_all, eps.repeat(len(timesteps), *ones), t_all)
        for key, value in features(x_t, t_all).items():
            total[key] = total[key] + value.float() if key in total else value.float()
    return {
        (key, t): value[i * b: (i + 1) * b] / draws
        for key, value in total.items()
        for i, t in enumerate(timesteps)
    }
