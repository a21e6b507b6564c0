"""``torch.compile`` for a backbone's truncated forward, with static shapes and a reused cache.

A diffusion backbone wraps the function that runs its network up to the deepest requested block
(``fn(x, *per_image_args, **static_args) -> tensors``) in ``StaticCompiled``. Off (the default),
it calls the function as is; on (``compile=True`` as a backbone argument, or ``extract(...,
compile=True)`` through ``enable_compile``), it calls a compiled version in which every batch has
the size of the largest batch seen so far: a smaller batch (a split's last) is padded by repeating
its last image and the padding is dropped from the outputs. Shapes therefore never change between
batches, so nothing recompiles mid-split and CUDA graphs would apply unchanged.

Mode: ``default`` (inductor fuses the GroupNorm/SiLU/attention graph around cuDNN convolutions and
cuBLAS matmuls). Not ``max-autotune``: on an H200 (256x256 ADM up to block 24, batch 64, bf16) its
autotuning was still running after 5 minutes and had chosen cuDNN's own kernel for 8 of the 9
convolutions it had timed, while ``default`` reached 657 img/s against eager's 345 (42.5% of the
dense bf16 peak; ``benchmarks/logs/h200-2026-11-28``). Not ``reduce-overhead``: at extraction batch sizes (64 images of 256 px) a
U-Net pass is tens of milliseconds of large kernels, so kernel-launch overhead that CUDA graphs
remove is a few percent, while graphs pin a private memory pool per shape and reuse their output
buffers on the next call (each output would need a copy before the next batch).

Compiled kernels are cached on disk under ``$BENCH_WEIGHTS/torch-compile`` (inductor's FX graph
and Triton caches; ``TORCHINDUCTOR_CACHE_DIR`` set by the user wins), so a second run or SLURM
task on the same file system loads them instead of compiling again.

Compilation never changes features beyond floating-point reassociation (checked against eager in
tests), so ``compile`` is not part of a backbone's ``config`` nor of any cache key.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.errors import UsageError
from bench.paths import compile_cache_dir

MODE = "default"


def use_compile_cache() -> Path:
    """Point inductor (and Triton) at ``compile_cache_dir()`` with its on-disk FX graph cache on."""
    import torch._inductor.config as inductor_config

    folder = compile_cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)  # Triton's cache follows: folder/triton
    inductor_config.fx_graph_cache = True
    return folder


def _pad(value: Any, batch: int, target: int) -> Any:
    """Per-image tensors (leading dim ``batch``) padded to ``target`` by repeating the last row."""
    import torch

    if isinstance(value, torch.Tensor) and value.dim() and value.shape[0] == batch < target:
        extra = value[-1:].expand(target - batch, *value.shape[1:])
        return torch.cat([value, extra])
    return value


def _unpad(value: Any, batch: int) -> Any:
    import torch

    if isinstance(value, torch.Tensor):
        return value[:batch]
    if isinstance(value, dict):
        return {k: _unpad(v, batch) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_unpad(v, batch) for v in value)
    return value


class StaticCompiled:
    """``fn`` run eagerly, or compiled for one static batch size when ``enabled``.

    Tensor arguments whose leading dimension equals ``x``'s batch are per-image (padded with
    ``x``); every other argument is static: a new value compiles a new graph (for example another
    set of requested blocks), which inductor's cache then keeps.
    """

    def __init__(self, fn: Callable[..., Any], enabled: bool = False, mode: str | None = None):
        """``mode``: torch.compile's mode; None means ``MODE``."""
        self.fn = fn
        self.enabled = enabled
        self.mode = mode
        self.batch = 0  # the padded batch size: the largest batch seen
        self._compiled: dict[str, Callable[..., Any]] = {}  # by device type

    def __call__(self, x: Any, *args: Any, **kwargs: Any) -> Any:
        if not self.enabled:
            return self.fn(x, *args, **kwargs)
        batch = x.shape[0]
        self.batch = max(self.batch, batch)
        padded = [_pad(a, batch, self.batch) for a in (x, *args)]
        out = self._compiled_for(x.device.type)(*padded, **kwargs)
        return _unpad(out, batch) if batch < self.batch else out

    def _compiled_for(self, device_type: str) -> Callable[..., Any]:
        if device_type not in self._compiled:
            import torch

            use_compile_cache()
            self._compiled[device_type] = torch.compile(self.fn, mode=self.mode or MODE,
                                                        dynamic=False)
        return self._compiled[device_type]


def enable_compile(backbone: Any) -> None:
    """Turn on compiled extraction for a backbone that offers it (``compiled_forward``); refuse
    clearly for one that does not."""
    forward = getattr(backbone, "compiled_forward", None)
    if not isinstance(forward, StaticCompiled):
        raise UsageError(
            f"backbone {getattr(backbone, 'name', '') or type(backbone).__name__!r} does not "
            "support compile=True (the diffusion backbones do: adm presets, random-unet); "
            "run it without --compile"
        )
    forward.enabled = True
