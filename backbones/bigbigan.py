"""BigBiGAN (Donahue & Simonyan 2019): DeepMind's official encoder, run as its TF Hub module.

No PyTorch port of the encoder exists, and a conversion could only be trusted after proving parity
against the module, which needs the module anyway; so bench runs the module itself. Images go from
torch (B, 3, H, W) in [-1, 1] to a NHWC numpy batch, through the module's ``encode`` signature,
and its outputs come back as torch tensors: ``avepool_feat`` (the encoder's global average pool)
and ``bn_crelu_feat`` (BatchNorm then CReLU of it, twice as wide: the paper's best linear
features). The sizes are read from the loaded module's ``encode`` signature (its structured outputs' last
dimension), never assumed: 2048-d / 4096-d for ResNet-50 by DeepMind's colab printout, and
8192-d / 16384-d for RevNet-50x4 by its 4x width (not checked against the downloaded module here). Needs the optional extra: ``pip install 'frozen-bench[bigbigan]'`` (TensorFlow only; the
module is read with ``tf.saved_model.load``, so tensorflow-hub is not needed).

Modules are TF1 Hub format folders (``saved_model.pb`` + ``tfhub_module.pb`` + ``variables/``).
A handle URL is downloaded once as ``HANDLE?tf-hub-format=compressed`` (tfhub.dev redirects to
Kaggle Models) and extracted to ``$BENCH_WEIGHTS/tfhub/``; a local folder is used as it is. The
weights digest hashes every file of the folder.

Preprocessing follows DeepMind's published BigBiGAN colab on TF Hub (the Hub page asks for 256x256
RGB in [-1, 1]): the largest centred square of the whole image, resized to 256 with TF1's
``resize_bicubic`` (reimplemented in numpy, so DataLoader workers need no TensorFlow, and tested
against TF), scaled to [-1, 1] without clipping. (Not ImageNet's 0.875 centre crop, and not PIL's
antialiased bicubic.)
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.backbones._shared import FrozenBackbone, RANDOM_LICENCE
from bench.backbone import VECTOR, FeaturePoint
from bench.registry import register_backbone
from bench.features.weights import (Weights, WeightsError, WeightsFile, download, file_sha256,
                                    offline, weights_dir)

HUB = "https://tfhub.dev/deepmind/bigbigan-{}/1"
OUTPUTS = ("avepool_feat", "bn_crelu_feat")
LICENCE = "Apache-2.0"


def module_folder(handle: str) -> str:
    """Where a module handle is extracted under $BENCH_WEIGHTS."""
    return "tfhub/" + handle.split("://", 1)[1].rstrip("/").replace("/", "_")


def release(encoder: str) -> Weights:
    """DeepMind's TF Hub module of ``encoder`` (a folder once extracted; its size is not
    published: unknown)."""
    handle = HUB.format(encoder)
    return Weights((WeightsFile(handle, local=module_folder(handle)),), input_size=256,
                   mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), licence=LICENCE,
                   origin="https://tfhub.dev/deepmind/ (DeepMind's BigBiGAN modules)",
                   paper="Donahue & Simonyan 2019, Large Scale Adversarial Representation "
                         "Learning (arXiv 1907.02544)",
                   arguments=("module", "seed"))


RELEASED = {"revnet50x4": release("revnet50x4"), "resnet50": release("resnet50")}


def import_tensorflow() -> Any:
    """TensorFlow, quiet, and not grabbing all GPU memory from torch."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:  # triton (torch's compiler, pulled in by torchvision.ops) segfaults if loaded after TF
        import triton  # noqa: F401
    except ImportError:
        pass
    try:
        import tensorflow as tf
    except ImportError as e:
        raise ImportError(
            "BigBiGAN runs DeepMind's TF Hub module and needs TensorFlow: "
            "pip install 'frozen-bench[bigbigan]' (or pip install tensorflow-cpu)"
        ) from e
    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # TF already initialised its GPUs in this process
            pass
    return tf


def module_dir(source: str) -> Path:
    """The folder of a TF Hub module: a local folder, or a handle URL downloaded once."""
    if not source.startswith(("http://", "https://")):
        path = Path(source).expanduser()
        if not (path / "saved_model.pb").is_file():
            raise WeightsError(
                f"no TF Hub module at {path}: expected saved_model.pb in it "
                "(extract the module's .tar.gz into that folder)"
            )
        return path
    target = weights_dir() / module_folder(source)
    name = target.name
    if (target / "saved_model.pb").is_file():
        return target
    url = f"{source}?tf-hub-format=compressed"
    if offline():
        raise WeightsError(
            f"TF Hub module {source} is not in the cache and downloads are off (offline mode). "
            f"Download {url} elsewhere (a .tar.gz), extract it into {target}, or pass the "
            f"extracted folder as module=."
        )
    archive = target.with_name(name + ".tar.gz")
    download(url, archive)
    tmp = Path(tempfile.mkdtemp(dir=target.parent))
    with tarfile.open(archive) as tar:
        tar.extractall(tmp, filter="data")
    if target.exists():  # another job finished first
        shutil.rmtree(tmp)
    else:
        os.replace(tmp, target)
    for leftover in (archive, archive.with_name(archive.name + ".sha256")):
        leftover.unlink(missing_ok=True)
    return target


def folder_digest(path: Path) -> str:
    """sha256 over the relative names and sha256s of every file of a module folder."""
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.endswith(".sha256"))
    for f in files:
        h.update(f"{f.relative_to(path).as_posix()}\t{file_sha256(f)}\n".encode())
    return h.hexdigest()


_TABLE_SIZE = 1024  # TF's resize_bicubic_op.cc: kTableSize


def _cubic_table(a: float = -0.75) -> np.ndarray:
    """TF's legacy bicubic coefficient table: (kTableSize + 1, 2) float32, computed in double."""
    x = np.arange(_TABLE_SIZE + 1, dtype=np.float32).astype(np.float64) / _TABLE_SIZE
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * (x + 1) - 5 * a) * (x + 1) + 8 * a) * (x + 1) - 4 * a
    return np.stack([near, far], axis=1).astype(np.float32)


def _taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(out, 4) input indices and weights of TF1's resize_bicubic along one axis.

    align_corners=False, half_pixel_centers=False (TF1's defaults): source position
    ``out * in/out`` in float32, its fraction quantised to 1/1024 and looked up in the a=-0.75
    table, indices clamped to the image (edge weights are not renormalised).
    """
    table = _cubic_table()
    position = np.arange(out_size, dtype=np.float32) * (np.float32(in_size) / np.float32(out_size))
    base = np.floor(position)
    offset = np.rint((position - base) * _TABLE_SIZE).astype(np.int64)  # lrintf: half to even
    weights = np.stack([table[offset, 1], table[offset, 0], table[_TABLE_SIZE - offset, 0],
                        table[_TABLE_SIZE - offset, 1]], axis=1)
    index = np.clip(base.astype(np.int64)[:, None] + np.arange(-1, 3), 0, in_size - 1)
    return index, weights


def resize_bicubic_tf1(image: np.ndarray, size: int) -> np.ndarray:
    """``tf.compat.v1.image.resize_bicubic(image[None], [size, size])[0]`` in numpy: (H, W, C)
    -> (size, size, C) float32, no antialiasing, not clipped; rows first, then columns, as TF."""
    rows, row_w = _taps(image.shape[0], size)
    cols, col_w = _taps(image.shape[1], size)
    x = image.astype(np.float32)
    tall = (x[rows] * row_w[:, :, None, None]).sum(axis=1)  # (size, W, C)
    return (tall[:, cols] * col_w[None, :, :, None]).sum(axis=2)


class ColabPreprocess:
    """DeepMind's BigBiGAN colab, step by step: the centred square of the whole image (start
    ``(size - minor) // 2``), ``tf.compat.v1.image.resize_bicubic`` of the uint8 pixels to
    ``size`` (no antialiasing, float, not clipped), then ``x / 127.5 - 1``. A class, not a lambda:
    DataLoader workers pickle transforms."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, image: Any) -> torch.Tensor:
        pixels = np.asarray(image.convert("RGB"))
        h, w = pixels.shape[:2]
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        square = pixels[top: top + side, left: left + side]
        resized = resize_bicubic_tf1(square, self.size)
        return torch.from_numpy(resized / np.float32(127.5) - 1).permute(2, 0, 1).contiguous()


class BigBiGAN(FrozenBackbone):
    """The ``encode`` signature of a BigBiGAN TF Hub module; one call gives both features."""

    def __init__(self, path: Path, config: dict[str, Any], size: int):
        super().__init__(
            config,
            ColabPreprocess(size),
            size,
            ("bn_crelu_feat",),
            "none",
            folder_digest(path),
        )
        self._tf = import_tensorflow()
        tags = (
            [] if (path / "tfhub_module.pb").is_file() else None
        )  # TF1 Hub format: untagged graph
        self._module = self._tf.saved_model.load(str(path), tags=tags)  # keeps variables alive
        if "encode" not in self._module.signatures:
            raise WeightsError(
                f"{path} has no 'encode' signature (it has "
                f"{', '.join(self._module.signatures)}): not a BigBiGAN module"
            )
        self._encode = self._module.signatures["encode"]
        (self._input,) = self._encode.structured_input_signature[1]
        outputs = self._encode.structured_outputs
        missing = [name for name in OUTPUTS if name not in outputs]
        if missing:
            raise WeightsError(f"{path}: the encode signature lacks {', '.join(missing)}")
        self._dims = {name: outputs[name].shape[-1] for name in OUTPUTS}

    def feature_points(self) -> list[FeaturePoint]:
        return [
            FeaturePoint(
                "avepool_feat",
                VECTOR,
                f"encoder's global average pool ({self._dims['avepool_feat']}-d)",
            ),
            FeaturePoint(
                "bn_crelu_feat",
                VECTOR,
                f"BatchNorm + CReLU of the average pool "
                f"({self._dims['bn_crelu_feat']}-d), the paper's linear-probe feature",
            ),
        ]

    def forward_features(
        self, x: torch.Tensor, layers: Sequence[str], sample_ids: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        images = x.detach().float().permute(0, 2, 3, 1).cpu().numpy()  # NCHW torch -> NHWC numpy
        result = self._encode(**{self._input: self._tf.constant(images)})
        return {name: torch.from_numpy(result[name].numpy()).to(x.device) for name in layers}


def build_tiny_module(path: Path, seed: int = 0, size: int = 32, width: int = 16) -> Path:
    """A small TF1 Hub format module with BigBiGAN's ``encode`` interface and seeded random weights.

    Input ``x`` (N, size, size, 3) in [-1, 1]; two strided convolutions, global average pool
    (``avepool_feat``, ``width``-d), inference BatchNorm + CReLU (``bn_crelu_feat``, 2 x width):
    the same graph format, signature and output names as the real module, for offline tests.
    """
    tf = import_tensorflow()
    v1 = tf.compat.v1
    rng = np.random.default_rng(seed)

    def variable(name: str, value: np.ndarray) -> Any:
        return v1.get_variable(name, initializer=value.astype(np.float32))

    tmp = Path(tempfile.mkdtemp(dir=path.parent)) / "module"
    graph = tf.Graph()
    with graph.as_default(), v1.Session(graph=graph) as session:
        x = v1.placeholder(tf.float32, [None, size, size, 3], name="x")
        h = tf.nn.relu(
            tf.nn.conv2d(x, variable("conv1", rng.normal(0, 0.3, (3, 3, 3, 16))), 2, "SAME")
        )
        h = tf.nn.relu(
            tf.nn.conv2d(h, variable("conv2", rng.normal(0, 0.1, (3, 3, 16, width))), 2, "SAME")
        )
        pooled = tf.reduce_mean(h, axis=[1, 2])
        mean, var = (
            variable("bn_mean", rng.uniform(0, 0.1, width)),
            variable("bn_var", np.ones(width)),
        )
        bn = tf.nn.batch_normalization(
            pooled,
            mean,
            var,
            variable("bn_beta", np.zeros(width)),
            variable("bn_gamma", np.ones(width)),
            1e-5,
        )
        crelu = tf.concat([tf.nn.relu(bn), tf.nn.relu(-bn)], axis=-1)
        session.run(v1.global_variables_initializer())
        builder = v1.saved_model.Builder(str(tmp))
        signature = v1.saved_model.signature_def_utils.predict_signature_def(
            {"x": x}, {"avepool_feat": pooled, "bn_crelu_feat": crelu}
        )
        builder.add_meta_graph_and_variables(
            session, tags=[], signature_def_map={"encode": signature}
        )
        builder.save()
    (tmp / "tfhub_module.pb").write_bytes(b"\x08\x03")  # ModuleDef{format: 3}, as Hub modules have
    if not path.exists():
        os.replace(tmp, path)
    shutil.rmtree(tmp.parent, ignore_errors=True)
    return path


@register_backbone(
    "bigbigan",
    description="BigBiGAN RevNet-50x4 encoder (DeepMind TF Hub module, needs frozen-bench[bigbigan]); "
    "default feature = BN+CReLU of the average pool, 256 px in [-1, 1]",
    released=RELEASED["revnet50x4"],
)
@register_backbone(
    "bigbigan-resnet50",
    description="BigBiGAN ResNet-50 encoder (TF Hub module); bn_crelu_feat 4096-d, avepool_feat "
    "2048-d",
    released=RELEASED["resnet50"],
    module=RELEASED["resnet50"].url,
)
@register_backbone(
    "bigbigan-tiny",
    description="test-sized module with BigBiGAN's encode signature and seeded random weights "
    "(32 px), built once in the weights dir; needs TensorFlow",
    licence=RANDOM_LICENCE,
    size=32,
    seed=0,
)
def bigbigan(
    module: str = RELEASED["revnet50x4"].url,
    size: int = 256,
    seed: int | None = None,
) -> BigBiGAN:
    """``module``: a TF Hub handle URL or an extracted module folder."""
    if seed is not None:
        folder = weights_dir() / f"bigbigan-tiny-{size}px-seed{seed}"
        folder.parent.mkdir(parents=True, exist_ok=True)
        module = str(folder if folder.is_dir() else build_tiny_module(folder, seed, size))
    config = {
        "family": "bigbigan",
        "module": module if seed is None else f"tiny, random seed {seed}",
        "size": size,
        "crop": "centre square of the whole image",
        "interpolation": "tf.compat.v1.image.resize_bicubic (no antialiasing, not clipped)",
        "range": [-1, 1],
    }
    return BigBiGAN(module_dir(module), config, size)
