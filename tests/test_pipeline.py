"""The input pipeline (bench.features.pipeline): worker decoding, and the tensor path of decode="gpu".

No GPU here: the nvJPEG path's code runs with ``decode_on`` set to the CPU (same functions,
torchvision's CPU JPEG decoder), and the public ``decode="gpu"`` refuses to run without CUDA.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import bench
from bench.features.cache import FeatureCache
from bench.errors import UsageError
from bench.features.extract import extract
from bench.features.images import load_rgb
from bench.features.pipeline import Loader, decode_resize_crop, file_of, resize_crop_recipe
from bench.task import Split

STEP = 2 / 255  # one 8-bit step in the [-1, 1] input scale of the diffusion backbones


def photo(path: Path, width: int, height: int, seed: int) -> Path:
    """A smooth random picture with noise: compresses like a photo."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 1, width)[None, :, None] * np.linspace(0, 1, height)[:, None, None]
    pixels = rng.uniform(0, 255, (1, 1, 3)) * ramp + rng.normal(0, 12, (height, width, 3)) + 40
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path)
    return path


def test_transform_recipes():
    adm = resize_crop_recipe(bench.create_backbone("diffusion-tiny").transform())
    assert (adm.size, adm.crop, adm.interpolation, adm.mean) == (64, 64, "bicubic", (0.5,) * 3)
    from torchvision import transforms as T

    odd = T.Compose([T.Grayscale(3), T.Resize(8), T.CenterCrop(8), T.ToTensor()])
    assert resize_crop_recipe(odd) is None
    split = Split("s", ["a.jpg"], [0], load_rgb)
    with pytest.raises(UsageError, match="decode='cpu'"):  # exit 2, one line
        Loader(split, odd, [[0]], device=torch.device("cpu"), workers=0,
               decode_on=torch.device("cpu"))


@pytest.mark.parametrize("size", [(500, 375), (375, 500)])
def test_tensor_decode_matches_pillow(tmp_path, size):
    transform = bench.create_backbone("diffusion-tiny").transform()
    path = photo(tmp_path / "a.jpg", *size, seed=1)
    data = torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)
    ours = decode_resize_crop([data], resize_crop_recipe(transform), torch.device("cpu"))[0]
    reference = transform(load_rgb(path))
    difference = (ours - reference).abs()
    assert difference.max() <= STEP * 1.001  # at most one 8-bit rounding step
    assert difference.mean() < 0.3 * STEP


def test_loader_decodes_jpegs_on_the_device_and_the_rest_in_workers(tmp_path, monkeypatch):
    import bench.features.pipeline

    decoded = []  # images per call of the device decoder

    def counting(data, recipe, device):
        decoded.append(len(data))
        return decode_resize_crop(data, recipe, device)

    monkeypatch.setattr(bench.features.pipeline, "decode_resize_crop", counting)
    files = [photo(tmp_path / f"{i}.jpg", 120, 90, seed=i) for i in range(3)]
    files.append(photo(tmp_path / "3.png", 90, 120, seed=3))
    (tmp_path / "4.jpg").write_bytes(files[0].read_bytes()[:300])  # truncated: corrupt
    files.append(tmp_path / "4.jpg")
    split = Split("s", [str(f) for f in files], [0] * 5, load_rgb)
    transform = bench.create_backbone("random-unet").transform()
    options = dict(device=torch.device("cpu"), workers=1)
    cpu = list(Loader(split, transform, [[0, 1, 2], [3, 4]], **options))
    device = list(Loader(split, transform, [[0, 1, 2], [3, 4]], **options,
                         decode_on=torch.device("cpu")))
    assert decoded == [3, 1, 1]  # batch 1: three JPEGs; batch 2: the corrupt one, then alone
    for (a, ids_a, _), (b, ids_b, _) in zip(cpu, device):
        assert torch.equal(ids_a, ids_b) and (a - b).abs().max() <= STEP * 1.001
    assert torch.equal(cpu[1][0][0], device[1][0][0])  # the PNG took the CPU path both times
    for _, _, errors in (cpu[1], device[1]):
        assert len(errors) == 1 and errors[0][0] == 4 and "4.jpg" in errors[0][1]


def test_file_of_only_for_loaders_that_decode_the_file_unchanged(tmp_path):
    assert file_of(Split("s", ["x.jpg"], [0], load_rgb))("x.jpg") == Path("x.jpg")
    assert file_of(bench.create_task("digits").split("val")) is None
    for i, name in enumerate(("cat", "dog")):  # a folder task needs two classes
        photo(tmp_path / "data" / "train" / name / "a.jpg", 20, 20, seed=i)
        photo(tmp_path / "data" / "test" / name / "b.jpg", 20, 20, seed=i)
    split = bench.create_task(f"folder:{tmp_path / 'data'}").split("test")
    assert file_of(split)(split.items[0]).is_file()


def test_gpu_decode_refuses_without_cuda(tmp_path):
    backbone = bench.create_backbone("random-unet")
    task = bench.create_task("digits")
    for decode, message in (("gpu", "CUDA"), ("nvjpeg", "use cpu or gpu")):
        with pytest.raises(ValueError, match=message):
            extract(backbone, task.split("val"), [("mid", "2")], FeatureCache(tmp_path), task.config,
                    device=torch.device("cpu"), decode=decode)
