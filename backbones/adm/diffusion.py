"""Forward noising of guided-diffusion: beta schedules and ``q_sample``.

Only the forward process is needed for features (one U-Net pass on a noised image, no sampling).
Schedules are computed in float64 like the original and cast to float32 where they meet tensors,
so ``q_sample`` reproduces the reference ``x_t`` bit for bit.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from bench.errors import UsageError

SCHEDULES = ("linear", "cosine")


def betas(schedule: str, steps: int = 1000) -> np.ndarray:
    """Per-step betas (float64) of a named schedule, as in guided-diffusion."""
    if schedule == "linear":
        scale = 1000 / steps  # keeps the schedule comparable for other step counts
        return np.linspace(scale * 1e-4, scale * 0.02, steps, dtype=np.float64)
    if schedule == "cosine":  # Nichol & Dhariwal 2021, with the 0.999 clip of the original

        def abar(s: float) -> float:
            return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

        return np.array(
            [min(1 - abar((i + 1) / steps) / abar(i / steps), 0.999) for i in range(steps)],
            dtype=np.float64,
        )
    raise UsageError(f"unknown noise schedule {schedule!r}; use one of {', '.join(SCHEDULES)}")


class NoiseSchedule:
    """``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps`` for integer timesteps ``0 <= t < steps``."""

    def __init__(self, schedule: str = "linear", steps: int = 1000):
        self.schedule = schedule
        self.steps = steps
        abar = np.cumprod(1.0 - betas(schedule, steps))
        self.sqrt_abar = torch.from_numpy(np.sqrt(abar))
        self.sqrt_one_minus_abar = torch.from_numpy(np.sqrt(1.0 - abar))

    def coefficients(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(sqrt(abar_t), sqrt(1 - abar_t)) as float32, one per timestep."""
        t = torch.as_tensor(t, dtype=torch.long).cpu()
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.steps):
            raise UsageError(f"timesteps must lie in [0, {self.steps}); got {t.tolist()}")
        return self.sqrt_abar[t].float(), self.sqrt_one_minus_abar[t].float()

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Noised images: one timestep per image of ``x0`` (B, C, H, W)."""
        a, b = self.coefficients(t)
        shape = (-1,) + (1,) * (x0.dim() - 1)
        a, b = a.to(x0.device).view(shape), b.to(x0.device).view(shape)
        return a * x0 + b * noise.to(x0)
