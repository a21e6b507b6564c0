"""The input side of extraction: a split's images, decoded and transformed, ready on the device.

Decoding and resizing run in DataLoader worker processes (prefetching ``PREFETCH`` batches each,
into pinned memory on CUDA) so they overlap the model. With ``decode="gpu"`` the workers only read
the bytes of JPEG files and the main process decodes whole batches with nvJPEG
(``torchvision.io.decode_jpeg(device="cuda")``) and resizes and crops them on the GPU: for GPU
nodes with few CPU cores. That needs a backbone transform that is exactly resize (short side) +
centre crop + to [0, 1] (+ normalise), checked by ``resize_crop_recipe``. Items that are not plain
JPEG files (in-memory arrays such as digits or CIFAR, PNG files, datasets whose loader edits the
image such as Aircraft's banner crop) take the CPU path in the workers. Workers are started per
split rather than kept across the three: forked workers deliver a first batch in about 0.1 s
(2-core machine), nothing worth the state a shared pool would add.

JPEG files with an EXIF orientation other than 1 take the CPU path, which applies it (as every
image read by ``bench.features.images.load_rgb`` is). GPU-decoded pixels differ from Pillow's by JPEG IDCT and resampling rounding (a few 1/255 steps in
a few pixels, measured in tests/test_pipeline.py), the size of the TF32 differences that CUDA vs
CPU extraction already has; like the device, the decoder is not part of the cache key.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch

from bench.errors import UsageError
from bench.features.augment import ViewTransform
from bench.features.filetask import FileTask
from bench.features.images import load_rgb
from bench.task import DatasetError, Split

DECODES = ("cpu", "gpu")
PREFETCH = 4  # batches in flight per worker: covers the jitter of JPEG sizes
JPEG_MAGIC = b"\xff\xd8\xff"


@dataclass(frozen=True)
class ResizeCrop:
    """A transform expressible on tensors: resize the short side, centre-crop, scale, normalise."""

    size: int
    crop: int
    interpolation: str  # "bilinear" | "bicubic"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None


def resize_crop_recipe(transform: Any) -> ResizeCrop | None:
    """The recipe of a torchvision ``Compose([Resize(n), CenterCrop(m), ToTensor()[, Normalize]])``;
    None for anything else (it cannot be run on decoded tensors with the same result)."""
    from torchvision import transforms as T

    steps = list(getattr(transform, "transforms", []))
    if not (3 <= len(steps) <= 4):
        return None
    resize, crop, to_tensor, *rest = steps
    if not (
        isinstance(resize, T.Resize) and isinstance(crop, T.CenterCrop)
        and isinstance(to_tensor, T.ToTensor) and all(isinstance(s, T.Normalize) for s in rest)
    ):
        return None
    size = resize.size if isinstance(resize.size, int) else list(resize.size)
    if isinstance(size, list):
        if len(size) != 1:
            return None
        size = size[0]
    crop_h, crop_w = crop.size
    mode = resize.interpolation.value
    if crop_h != crop_w or resize.max_size or resize.antialias is False or mode not in (
        "bilinear", "bicubic"
    ):
        return None
    mean = tuple(rest[0].mean) if rest else None
    std = tuple(rest[0].std) if rest else None
    return ResizeCrop(int(size), int(crop_h), mode, mean, std)


def file_of(split: Split) -> Callable[[Any], Path] | None:
    """Item -> its image file, where the split's loader decodes that file unchanged; else None."""
    if split.loader is load_rgb:
        return Path
    task = getattr(split.loader, "__self__", None)
    if isinstance(task, FileTask) and type(task).load is FileTask.load:
        return lambda item: task.dir / item
    return None


@dataclass
class Batch:
    """One batch from the workers. Rows listed in ``encoded`` are placeholders in ``images``:
    their JPEG bytes are decoded on the device."""

    images: torch.Tensor  # (B, C, H, W)
    ids: torch.Tensor  # index of each row in the split
    errors: list[tuple[int, str]]  # (split index, message) of unreadable items
    encoded: list[tuple[int, torch.Tensor]]  # (row, JPEG file bytes)

    def pin_memory(self) -> Batch:  # called by the DataLoader's pinning thread
        return Batch(self.images.pin_memory(), self.ids.pin_memory(), self.errors, self.encoded)


class _Items(torch.utils.data.Dataset):
    """A split's items, transformed in the worker, or as JPEG bytes when ``read`` is given.

    An unreadable item becomes a blank image plus its error text (exceptions with custom
    constructors do not survive DataLoader workers); the main process raises or skips it.
    """

    def __init__(self, split: Split, transform: Callable, read: Callable[[Any], Path] | None):
        self.split, self.transform, self.read = split, transform, read

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> tuple[torch.Tensor | None, torch.Tensor | None, int, str]:
        if self.read is not None:
            try:
                data = self.read(self.split.items[index]).read_bytes()
            except OSError:
                data = b""  # the CPU path below names the problem
            if data.startswith(JPEG_MAGIC) and _stored_upright(data):
                return None, torch.frombuffer(bytearray(data), dtype=torch.uint8), index, ""
        try:
            return transformed(self.transform, self.split.load(index), index), None, index, ""
        except DatasetError as e:
            return transformed(self.transform, _blank(), index), None, index, str(e)


def transformed(transform: Callable, image: Any, index: int) -> torch.Tensor:
    """``image`` (item ``index`` of its split) through ``transform``: an augmented view
    (``ViewTransform``) draws its choices from the item's index, any other takes the image."""
    if isinstance(transform, ViewTransform):
        return transform(image, index)
    return transform(image)


def _stored_upright(data: bytes) -> bool:
    """Whether a JPEG needs no EXIF rotation: nvJPEG ignores the tag, so rotated files take the
    CPU path, which applies it (``bench.features.images.upright``), like every other image."""
    import io

    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.getexif().get(0x0112, 1) == 1
    except (OSError, SyntaxError, ValueError):
        return True  # unreadable: decoding names the problem


def _collate(
    items: list[tuple[torch.Tensor | None, torch.Tensor | None, int, str]], shape: tuple[int, ...]
) -> Batch:
    images = torch.stack([x if x is not None else torch.zeros(shape) for x, _, _, _ in items])
    ids = torch.tensor([i for _, _, i, _ in items], dtype=torch.long)
    errors = [(i, err) for _, _, i, err in items if err]
    encoded = [(row, data) for row, (_, data, _, _) in enumerate(items) if data is not None]
    return Batch(images, ids, errors, encoded)


def decode_resize_crop(data: Sequence[torch.Tensor], recipe: ResizeCrop,
                       device: torch.device) -> torch.Tensor:
    """JPEG bytes -> (B, 3, crop, crop) float images as the recipe's PIL transform makes them:
    decoded as one batch on ``device``, resized per image (antialiased), rounded to 8 bits like
    Pillow's output, centre-cropped, scaled to [0, 1] and normalised."""
    from torchvision.io import ImageReadMode, decode_jpeg
    from torchvision.transforms.v2 import functional as F

    decoded = decode_jpeg(list(data), mode=ImageReadMode.RGB, device=device)
    mode = F.InterpolationMode(recipe.interpolation)
    out = torch.empty(len(decoded), 3, recipe.crop, recipe.crop, device=device)
    for row, image in enumerate(decoded):
        resized = F.resize(image.float(), [recipe.size], interpolation=mode, antialias=True)
        out[row] = F.center_crop(resized.round_().clamp_(0, 255), [recipe.crop])
    out /= 255
    if recipe.mean is not None:
        out = F.normalize(out, list(recipe.mean), list(recipe.std))
    return out


class Loader:
    """Batches of a split on ``device``: ``for images, ids, errors in Loader(...)``."""

    def __init__(self, split: Split, transform: Callable, batches: list[list[int]], *,
                 device: torch.device, workers: int, decode_on: torch.device | None = None):
        """``decode_on``: where JPEG files are decoded (None: in the workers, with Pillow)."""
        self.split, self.transform, self.device, self.decode_on = split, transform, device, decode_on
        self.recipe = resize_crop_recipe(transform) if decode_on is not None else None
        if decode_on is not None and self.recipe is None:
            raise UsageError(
                f"decode='gpu' needs a transform made of resize + centre crop + to-tensor "
                f"[+ normalise]; this backbone's is {transform!r}. Use decode='cpu'."
            )
        read = file_of(split) if self.recipe is not None else None
        probe = transformed(self.transform, _blank(), 0)  # the shape of a transformed image
        self.loader = torch.utils.data.DataLoader(
            _Items(split, transform, read),
            batch_sampler=batches,
            num_workers=workers,
            collate_fn=partial(_collate, shape=tuple(probe.shape)),
            pin_memory=device.type == "cuda",
            prefetch_factor=PREFETCH if workers else None,
        )

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[tuple[int, str]]]]:
        for batch in self.loader:
            images = batch.images.to(self.device, non_blocking=True)
            errors = list(batch.errors)
            if batch.encoded:
                errors += self._decode_into(images, batch)
            yield images, batch.ids, errors

    def _decode_into(self, images: torch.Tensor, batch: Batch) -> list[tuple[int, str]]:
        """Decode the batch's JPEG rows on the device; per image when the batch decode fails (a
        corrupt file, or a JPEG flavour nvJPEG lacks, which Pillow then decodes)."""
        rows = [row for row, _ in batch.encoded]
        data = [d for _, d in batch.encoded]
        try:
            images[rows] = decode_resize_crop(data, self.recipe, self.decode_on).to(images.device)
            return []
        except RuntimeError:
            pass
        errors = []
        for row, one in zip(rows, data):
            index = int(batch.ids[row])
            try:
                image = decode_resize_crop([one], self.recipe, self.decode_on)[0]
            except RuntimeError:
                try:
                    image = self.transform(self.split.load(index))
                except DatasetError as e:
                    errors.append((index, str(e)))
                    image = self.transform(_blank())  # as the workers do
            images[row] = image.to(images.device)
        return errors


def _blank() -> Any:
    from PIL import Image

    return Image.new("RGB", (64, 64))
