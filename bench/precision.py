"""Devices and the one precision policy every stage follows, resolved once and logged in full.

``--precision`` names a policy; the policy fixes each stage's numeric type:

| policy | extraction autocast | cached features | probe inputs | head training |
| --- | --- | --- | --- | --- |
| ``fp32`` | none | float32 | float32 | float32 |
| ``bf16`` | bfloat16 | float16 | float16 on a GPU, float32 on the CPU | bfloat16 |
| ``fp16`` (GPU) | float16 | float16 | float16 | bfloat16 |
| ``auto`` | ``bf16`` on a GPU, ``fp32`` on the CPU | | | |

"fp32 everywhere it can" is the point of ``fp32``: nothing is rounded on the way from the backbone
to the probe. The storage type is part of the feature-cache key, so fp32 and fp16 caches never mix;
``--cache-dtype`` replaces it (``with_cache_dtype``: ``auto`` keeps the policy's own).
Head training in bfloat16 means the attention heads' autocast and the two GEMMs of the linear
grid's search (weights, optimizer state and softmax stay float32; the selected point's refit, one
head, runs in float32); it pays on GPUs and on CPUs with native
bfloat16 (AVX512-BF16, AMX), where those GEMMs take half the time.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, replace
from typing import Any

from bench.errors import UsageError

POLICIES = ("auto", "fp32", "bf16", "fp16")
# --cache-dtype: the type cached features are stored in; "auto" is the policy's own storage
CACHE_DTYPES = {"auto": None, "fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
BF16 = "bfloat16"  # numpy has no bfloat16: stored as its raw 16 bits (uint16), float32 when read


@dataclass(frozen=True)
class PrecisionPolicy:
    name: str  # fp32 | bf16 | fp16 (never "auto": that is resolved for a device)
    extraction: str  # autocast of the backbone forward: fp32 | bf16 | fp16
    storage: str  # numpy dtype of cached features
    probe_inputs: str  # numpy/torch dtype features are held in while probes train
    heads: str  # autocast of attention-head training: fp32 | bf16

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_device(device: str = "auto"):
    """A torch.device: CUDA when present for ``auto``; a clear error for a GPU that is not there."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise UsageError(f"--device {device!r}: {e}; use auto, cpu, cuda or cuda:N") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda asked for, but no CUDA GPU is visible; use --device cpu")
    return dev


def resolve_precision(name: str, device_type: str) -> PrecisionPolicy:
    """The policy ``name`` means on a device of ``device_type`` ("cpu", "cuda")."""
    if name not in POLICIES:
        raise UsageError(f"precision {name!r}: use one of {', '.join(POLICIES)}")
    gpu = device_type == "cuda"
    if name == "auto":
        name = "bf16" if gpu else "fp32"
    if name == "fp32":
        return FP32
    if name == "fp16" and not gpu:
        raise UsageError("fp16 autocast needs a GPU; on the CPU use bf16 or fp32")
    return PrecisionPolicy(name, name, "float16", "float16" if gpu else "float32", "bf16")


FP32 = PrecisionPolicy("fp32", "fp32", "float32", "float32", "fp32")  # nothing rounded anywhere


def with_cache_dtype(policy: PrecisionPolicy, cache_dtype: str) -> PrecisionPolicy:
    """``policy`` storing cached features as ``cache_dtype`` (``auto``: the policy's own type,
    so every cache key and identity from before ``--cache-dtype`` stays what it was). Probe
    inputs in float16 would overflow what bfloat16 storage holds: they become bfloat16 then."""
    if cache_dtype not in CACHE_DTYPES:
        raise UsageError(f"cache dtype {cache_dtype!r}: use one of {', '.join(CACHE_DTYPES)}")
    storage = CACHE_DTYPES[cache_dtype] or policy.storage
    probe_inputs = BF16 if storage == BF16 and policy.probe_inputs == "float16" else policy.probe_inputs
    return replace(policy, storage=storage, probe_inputs=probe_inputs)


def storage_numpy(storage: str):
    """The numpy dtype a cache file holds for ``storage`` (uint16 bits for bfloat16)."""
    import numpy as np

    return np.dtype(np.uint16 if storage == BF16 else storage)


def require(policy: Any) -> PrecisionPolicy:
    """``policy`` if it is a policy: numbers are computed under one resolved policy, never under a
    name resolved again or a default chosen by the device."""
    if not isinstance(policy, PrecisionPolicy):
        raise TypeError(f"a bench.precision.PrecisionPolicy is required (resolve_precision(name, "
                        f"device_type) or precision.FP32), got {type(policy).__name__}")
    return policy


def autocast(kind: str, device) -> contextlib.AbstractContextManager:
    """torch.autocast for ``kind`` (fp32 | bf16 | fp16) on ``device``; none for fp32."""
    import torch

    if kind == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if kind == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)
