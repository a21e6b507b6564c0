"""Named training augmentations, drawn from a seed: view ``v`` of training image ``i``.

A protocol that trains on augmented views (``--views V`` cached, or ``--online``) must give the
same pixels for the same (image, view) on every run, whatever the batch, worker or machine:
each view's random choices come from its own generator seeded by (seed, item, view), as the
diffusion noise is seeded by (noise seed, item, draw). An augmentation maps a PIL image to a PIL
image of the backbone's input side; the backbone's own ``transform()`` then turns it into a
tensor (its resize and centre crop leave an image of that side as it is), so every backbone's
normalisation applies unchanged.

``paper`` is the augmentation of the released code of Mukhopadhyay et al. (soumik-kanad/diffssl,
``finetune.py`` loads training data with ``random_crop=True, random_flip=True``; the crop is
guided-diffusion's ``random_crop_arr`` with ``min_crop_frac=0.8``): the shorter side resized to
a random integer in [s, ceil(s / 0.8)] (256..320 at s = 256; halved with a box filter while it
is at least twice that, then bicubic), a random s x s crop, a horizontal flip with probability
1/2. Validation and test images are never augmented.

Installed packages add augmentations through the entry-point group ``bench.augmentations``.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench.registry import Registry


@dataclass(frozen=True)
class Augmentation:
    """``make(size)`` gives the function that draws one view: (PIL image, its generator) ->
    PIL image of side ``size``. ``description`` is what the resolved protocol records."""

    name: str
    description: str
    make: Callable[[int], Callable[[Any, random.Random], Any]]


AUGMENTATIONS: Registry[Augmentation] = Registry(
    "augmentation", Augmentation, key=lambda augmentation: augmentation.name)


def view_seed(seed: int, item: int, view: int) -> int:
    """A 63-bit generator seed from (seed, item, view): independent views of independent images."""
    digest = hashlib.sha256(f"bench-view/{seed}/{item}/{view}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def shrink_shorter_side(image: Any, side: int) -> Any:
    """The image with its shorter side ``side``: halved with a box filter while the shorter side
    is at least twice ``side`` (guided-diffusion's anti-aliasing), then one bicubic resize."""
    from PIL import Image

    while min(image.size) >= 2 * side:
        image = image.resize(tuple(x // 2 for x in image.size), resample=Image.BOX)
    scale = side / min(image.size)
    return image.resize(tuple(round(x * scale) for x in image.size), resample=Image.BICUBIC)


def _scale_crop_flip(size: int) -> Callable[[Any, random.Random], Any]:
    low, high = size, math.ceil(size / 0.8)

    def draw(image: Any, rng: random.Random) -> Any:
        from PIL import Image

        image = shrink_shorter_side(image, rng.randint(low, high))
        width, height = image.size
        top = rng.randint(0, height - size)
        left = rng.randint(0, width - size)
        image = image.crop((left, top, left + size, top + size))
        if rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return image

    return draw


AUGMENTATIONS.add(Augmentation(
    "paper", "shorter side to a random integer in [s, ceil(s/0.8)] (box halving, then bicubic), "
    "random s x s crop, horizontal flip p=0.5 (the released code of Mukhopadhyay et al.)",
    _scale_crop_flip))


def augmentation(name: str) -> Augmentation:
    """The augmentation registered as ``name``; a one-line error naming the others."""
    return AUGMENTATIONS.get(name)


@dataclass(frozen=True)
class ViewTransform:
    """View ``view`` of each training item: the augmentation drawn from (seed, item, view), then
    the backbone's ``transform``. Picklable (loader workers get a copy); ``__call__(image,
    item)`` takes the item's index in its split."""

    augmentation: str
    size: int
    seed: int
    view: int
    transform: Callable[[Any], Any]

    def __call__(self, image: Any, item: int) -> Any:
        draw = augmentation(self.augmentation).make(self.size)
        rng = random.Random(view_seed(self.seed, item, self.view))
        return self.transform(draw(image.convert("RGB"), rng))


@dataclass(frozen=True)
class TrainView:
    """View ``view`` of a run's train split, drawn by ``augmentation`` from ``seed``: what its
    images, its diffusion noise (``bench.backbone.view_sample_ids``) and its cache entry's key
    depend on (``bench.features.extract``)."""

    augmentation: str
    view: int
    seed: int

    def fields(self) -> dict[str, Any]:
        """The cache key's record of the view (the augmentation's description with its name: a
        changed augmentation is another entry)."""
        return {"augmentation": self.augmentation,
                "description": augmentation(self.augmentation).description,
                "view": self.view, "seed": self.seed}

    def transform(self, size: int, transform: Callable[[Any], Any]) -> ViewTransform:
        """The view's images at side ``size``, then the backbone's ``transform``."""
        return ViewTransform(self.augmentation, size, self.seed, self.view, transform)
