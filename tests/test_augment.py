"""Seeded training augmentations: the released code's ``paper`` augmentation, drawn per
(image, view) the same way on every run."""

from __future__ import annotations

import math
import pickle
import random

import numpy as np
import pytest
from PIL import Image

from bench.errors import UsageError
from bench.features.augment import AUGMENTATIONS, ViewTransform, augmentation, view_seed


def _photo(width: int = 700, height: int = 530, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _by_hand(image: Image.Image, size: int, seed: int) -> Image.Image:
    """guided-diffusion's ``random_crop_arr(image, size, 0.8, 1.0)`` then its flip, written out
    from its definition with the same draws in the same order: shorter side, crop row, crop
    column, flip."""
    rng = random.Random(seed)
    side = rng.randint(math.ceil(size / 1.0), math.ceil(size / 0.8))
    while min(image.size) >= 2 * side:
        image = image.resize((image.size[0] // 2, image.size[1] // 2), resample=Image.BOX)
    scale = side / min(image.size)
    image = image.resize((round(image.size[0] * scale), round(image.size[1] * scale)),
                         resample=Image.BICUBIC)
    array = np.asarray(image)
    y = rng.randint(0, array.shape[0] - size)
    x = rng.randint(0, array.shape[1] - size)
    array = array[y:y + size, x:x + size]
    if rng.random() < 0.5:
        array = array[:, ::-1]
    return Image.fromarray(np.ascontiguousarray(array))


@pytest.mark.parametrize("size", [256, 64])
def test_the_paper_augmentation_is_the_released_crop_and_flip(size):
    draw = augmentation("paper").make(size)
    image = _photo()
    for seed in range(20):
        ours = draw(image, random.Random(seed))
        assert ours.size == (size, size)
        assert np.array_equal(np.asarray(ours), np.asarray(_by_hand(image, size, seed)))


def test_the_paper_augmentation_covers_its_range():
    """Shorter sides over [256, 320] (crops of 80% to 100% of it) and flips about half: read off
    a horizontal ramp (value = column / 2 in a 400 x 300 image), whose slope in the crop gives
    the side it was resized to and whose direction gives the flip."""
    draw = augmentation("paper").make(256)
    ramp = Image.fromarray(np.repeat(np.repeat((np.arange(400) // 2).astype(np.uint8)[None, :],
                                               300, axis=0)[:, :, None], 3, axis=2))
    sides, flips = [], 0
    for seed in range(300):
        row = np.asarray(draw(ramp, random.Random(seed)))[128, :, 0].astype(float)
        slope = np.polyfit(np.arange(256), row, 1)[0]  # levels per output pixel: 0.5 * 300 / side
        sides.append(0.5 * 300 / abs(slope))
        flips += slope < 0
    assert 250 < min(sides) < 262 and 314 < max(sides) < 326, (min(sides), max(sides))
    assert 110 < flips < 190


def test_a_view_is_seeded_by_image_and_view_alone():
    from torchvision import transforms as T

    base = T.Compose([T.Resize(32), T.CenterCrop(32), T.ToTensor()])
    view = ViewTransform("paper", 32, seed=0, view=3, transform=base)
    image = _photo(90, 70)
    first = view(image, 7)
    assert first.shape == (3, 32, 32)
    assert (first == view(image, 7)).all()  # the same on every call
    assert (first == pickle.loads(pickle.dumps(view))(image, 7)).all()  # and in a worker
    assert not (first == ViewTransform("paper", 32, 0, 4, base)(image, 7)).all()
    assert not (first == view(image, 8)).all()
    assert not (first == ViewTransform("paper", 32, 1, 3, base)(image, 7)).all()
    assert len({view_seed(0, i, v) for i in range(50) for v in range(50)}) == 2500


def test_an_unknown_augmentation_is_one_line():
    with pytest.raises(UsageError, match="unknown augmentation 'papr'.*paper"):
        augmentation("papr")
    assert "paper" in AUGMENTATIONS.names()


def test_each_view_of_an_image_draws_its_own_noise_and_view_0_draws_todays():
    """``view_sample_ids``: a diffusion backbone given the ids of view v draws the noise of
    (image, v), whatever the batch; view 0 is the plain index, as every single-view run."""
    import torch

    from bench import create_backbone
    from bench.backbone import view_sample_ids

    backbone = create_backbone("diffusion-tiny")
    x = torch.rand(4, 3, backbone.input_size, backbone.input_size) * 2 - 1
    ids = torch.arange(10, 14)
    request = [("block3@t150", "1")]

    def features(view: int, order: slice = slice(None)) -> torch.Tensor:
        with torch.no_grad():
            return backbone.extract(x[order], request, view_sample_ids(ids[order], view))[
                request[0]]

    plain = backbone.extract(x, request, ids)[request[0]]
    assert torch.equal(features(0), plain)
    one, two = features(1), features(2)
    assert not torch.allclose(one, plain) and not torch.allclose(one, two)
    assert torch.allclose(features(1, slice(2, 4)), one[2:4], atol=1e-6)  # not the batch's
    with pytest.raises(ValueError, match="numbered from 0"):
        view_sample_ids(ids, -1)
