"""Comparison backbones (MAE, CLIP, SimCLR, BigBiGAN, references, random U-Net control).

Each family is built at test size with seeded random weights that are saved to the weights dir and
loaded back through the same code as real weights; features are checked against the library's own
forward. BigBiGAN's tests run where TensorFlow is importable (``pip install 'frozen-bench[bigbigan]'``).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"

import bench
from bench.backbones import bigbigan, simclr
from bench.backbones.supervised import load_state_dict_file
from bench.registry import backbones as registry
from bench.features.weights import WeightsError

CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)
TORCH_TINY = ["mae-tiny", "dinov2-tiny", "clip-tiny", "simclr-tiny", "resnet50-tiny"]
# the module each family runs first: counting its calls proves "one forward pass"
STEM: dict[str, Callable] = {
    "mae-tiny": lambda b: b.net.patch_embed,
    "dinov2-tiny": lambda b: b.net.patch_embed,
    "clip-tiny": lambda b: b.visual.conv1,
    "simclr-tiny": lambda b: b.net.conv1,
    "resnet50-tiny": lambda b: b.net.conv1,
    "random-unet": lambda b: b.unet.conv_in,
}
SHAPES = {  # feature point -> shape for a batch of 2
    "mae-tiny": {
        "cls": (2, 32),
        "patch-mean": (2, 32),
        "tokens": (2, 5, 32),
        "block1": (2, 5, 32),
        "block3": (2, 5, 32),
    },
    "dinov2-tiny": {"cls": (2, 32), "tokens": (2, 17, 32), "block2": (2, 17, 32)},
    "clip-tiny": {
        "image-embedding": (2, 16),
        "pre-projection": (2, 32),
        "block1": (2, 5, 32),
        "block3": (2, 5, 32),
    },
    "simclr-tiny": {
        "layer1": (2, 32, 8, 8),
        "layer2": (2, 64, 4, 4),
        "layer3": (2, 128, 2, 2),
        "layer4": (2, 256, 1, 1),
        "avgpool": (2, 256),
    },
    "resnet50-tiny": {"layer4": (2, 256, 1, 1), "avgpool": (2, 256)},
    "random-unet": {
        "down1": (2, 32, 16, 16),
        "down3": (2, 64, 8, 8),
        "mid": (2, 64, 8, 8),
        "up1": (2, 64, 16, 16),
        "up3": (2, 32, 32, 32),
    },
}


@pytest.fixture
def weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("BENCH_WEIGHTS", str(tmp_path / "weights"))
    return tmp_path / "weights"


@pytest.fixture(scope="module")
def digits() -> list:
    split = bench.create_task("digits").split("train")
    return [split.load(i) for i in range(2)]


def batch(backbone, images) -> torch.Tensor:
    transform = backbone.transform()
    return torch.stack([transform(image) for image in images])


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def count_calls(module: torch.nn.Module) -> list[int]:
    calls = [0]
    module.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


# --- every family ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", TORCH_TINY)
def test_tiny_weights_come_from_the_saved_file(name, weights):
    backbone = bench.create_backbone(name)
    (path,) = weights.glob("random-*.safetensors")
    assert backbone.weights_digest() == sha256(path)
    saved = load_state_dict_file(path)
    own = backbone.state_dict()
    assert own, name
    for key, value in own.items():  # every weight of the model is the file's
        assert torch.equal(value, saved[key.removeprefix("net.")]), key
    again = bench.create_backbone(name)  # reloads the file, does not rebuild it
    assert again.weights_digest() == backbone.weights_digest()


@pytest.mark.parametrize("name", [*TORCH_TINY, "random-unet"])
def test_feature_shapes_and_one_forward(name, weights, digits):
    backbone = bench.create_backbone(name)
    x = batch(backbone, digits)
    assert x.shape == (2, 3, backbone.input_size, backbone.input_size)
    points = [p.name for p in backbone.feature_points()]
    calls = count_calls(STEM[name](backbone))
    with torch.no_grad():
        out = backbone.forward_features(x, points)
    assert calls[0] == 1 and set(out) == set(points)
    for point, shape in SHAPES[name].items():
        assert tuple(out[point].shape) == shape, point
    defaults = [(layer, backbone.default_pool) for layer in backbone.default_layers]
    with torch.no_grad():
        pooled = backbone.extract(x, defaults)
    assert all(v.ndim == 2 and v.shape[0] == 2 and torch.isfinite(v).all() for v in pooled.values())


@pytest.mark.parametrize(
    "name, mean, std",
    [
        ("mae-tiny", IMAGENET_MEAN, IMAGENET_STD),
        ("dinov2-tiny", IMAGENET_MEAN, IMAGENET_STD),
        ("clip-tiny", CLIP_MEAN, CLIP_STD),
        ("simclr-tiny", (0, 0, 0), (1, 1, 1)),  # converted v1 weights: [0, 1], no normalisation
        ("resnet50-tiny", IMAGENET_MEAN, IMAGENET_STD),
        ("random-unet", HALF, HALF),
    ],
)
def test_transform_normalisation(name, mean, std, weights):
    from PIL import Image

    backbone = bench.create_backbone(name)
    x = backbone.transform()(Image.new("RGB", (48, 40), (51, 102, 204)))
    assert x.shape == (3, backbone.input_size, backbone.input_size)
    expected = (torch.tensor([0.2, 0.4, 0.8]) - torch.tensor(mean)) / torch.tensor(std)
    assert torch.allclose(x[:, 5, 5], expected, atol=1e-3)


@pytest.mark.parametrize(
    "name, hint",
    [
        ("mae", "timm/vit_base_patch16_224.mae"),
        ("dinov2", "timm/vit_base_patch14_dinov2.lvd142m"),
        ("clip", "timm/vit_base_patch16_clip_224.openai"),
        ("simclr", "lightly-ai/simclrv1-imagenet1k-resnet50-1x"),
        ("resnet50-supervised", "resnet50-0676ba61.pth"),
        ("bigbigan", "bigbigan-revnet50x4"),
    ],
)
def test_missing_weights_offline_say_what_to_download(name, hint, weights, tmp_path, monkeypatch):
    import huggingface_hub.constants as hf

    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(WeightsError, match="(?i)download") as error:
        bench.create_backbone(name)
    assert hint in str(error.value)


def test_every_backbone_preset_states_a_description_and_a_licence():
    """`bench list backbones` shows both; a preset registered without one fails here (every
    registered preset, not a list written down when the test was)."""
    unstated = [name for name in registry.names()
                if not (registry.entry(name).description.strip() and registry.entry(name).licence.strip())]
    assert unstated == []


# --- timm ViTs: MAE, DINOv2 --------------------------------------------------------------------
@pytest.mark.parametrize("name", ["mae-tiny", "dinov2-tiny"])
def test_vit_features_equal_timm_forward(name, weights, digits):
    backbone = bench.create_backbone(name)
    net, x = backbone.net, batch(backbone, digits)
    with torch.no_grad():
        out = backbone.forward_features(x, ["cls", "patch-mean", "tokens", "block1", "block2"])
        final = net.forward_features(x)
        assert torch.allclose(out["tokens"], final, atol=1e-6)
        assert torch.allclose(out["cls"], net.forward_head(final, pre_logits=True), atol=1e-6)
        assert torch.allclose(out["patch-mean"], final[:, 1:].mean(1), atol=1e-6)
        last = count_calls(net.blocks[-1])
        early = backbone.forward_features(x, ["block1"])  # stops after block 1
    assert last[0] == 0 and torch.allclose(early["block1"], out["block1"], atol=1e-6)


def test_mae_and_dinov2_defaults_follow_their_linear_probes(weights):
    mae, dino = bench.create_backbone("mae-tiny"), bench.create_backbone("dinov2-tiny")
    assert (mae.default_layers, mae.default_pool) == (("cls",), "none")
    assert (dino.default_layers, dino.default_pool) == (("tokens",), "cls+mean")
    assert mae.config["transform"]["crop_pct"] == 0.875  # resize 256 / crop 224 at full size


def test_mae_loads_the_official_checkpoint_format(weights, tmp_path):
    """facebookresearch/mae's files are {'model': state_dict}; they load by weights=PATH."""
    tiny = bench.create_backbone("mae-tiny")
    path = tmp_path / "mae_pretrain_vit_tiny.pth"
    torch.save({"model": tiny.net.state_dict()}, path)
    backbone = bench.create_backbone("mae", weights=str(path), arch=tiny.config["arch"])
    assert backbone.weights_digest() == sha256(path)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(
            backbone.forward_features(x, ["cls"])["cls"], tiny.forward_features(x, ["cls"])["cls"]
        )


# --- CLIP --------------------------------------------------------------------------------------
def test_clip_features_equal_encode_image(weights, digits):
    import open_clip

    backbone = bench.create_backbone("clip-tiny")
    (path,) = weights.glob("random-clip-*.safetensors")
    model, _, _ = open_clip.create_model_and_transforms(
        "ViT-B-16", pretrained=str(path), **backbone.config["arch"]
    )
    x = batch(backbone, digits)
    with torch.no_grad():
        out = backbone.forward_features(x, ["image-embedding", "pre-projection", "block2"])
        assert torch.allclose(out["image-embedding"], model.eval().encode_image(x), atol=1e-5)
        assert torch.allclose(
            out["pre-projection"] @ backbone.visual.proj, out["image-embedding"], atol=1e-5
        )
        last = count_calls(backbone.visual.transformer.resblocks[-1])
        early = backbone.forward_features(x, ["block2"])
    assert last[0] == 0 and torch.allclose(early["block2"], out["block2"], atol=1e-6)


def test_clip_tag_settings_force_quick_gelu(weights, monkeypatch):
    """open_clip 3.x builds GELU for 'openai' tags unless told; we take QuickGELU from the tag."""
    import open_clip
    from open_clip.transformer import QuickGELU

    tiny = bench.create_backbone("clip-tiny")
    (path,) = weights.glob("random-clip-*.safetensors")
    tag = {"hf_hub": "timm/x/", "quick_gelu": True, "mean": HALF, "std": HALF}
    monkeypatch.setattr(open_clip, "get_pretrained_cfg", lambda model, pretrained: tag)
    monkeypatch.setattr(open_clip, "download_pretrained", lambda cfg: str(path))
    backbone = bench.create_backbone("clip", arch=tiny.config["arch"])
    assert backbone.config["quick_gelu"] and backbone.config["transform"]["mean"] == HALF
    assert any(isinstance(m, QuickGELU) for m in backbone.visual.modules())


# --- torchvision ResNet-50: SimCLR, supervised reference ------------------------------------------
@pytest.fixture(scope="module")
def resnet50() -> tuple[dict[str, torch.Tensor], torch.nn.Module]:
    """A random torchvision ResNet-50 state dict (with fc) and the model, fc removed."""
    from torchvision.models import resnet50

    with torch.random.fork_rng():
        torch.manual_seed(1)
        net = resnet50()
    state = net.state_dict()
    net.fc = torch.nn.Identity()
    return state, net.eval()


@pytest.mark.parametrize(
    "wrap, source, normalised",
    [
        (lambda sd: {"state_dict": sd}, "simclr-converter", False),  # tonylins / Lightly files
        (lambda sd: {f"module.{k}": v for k, v in sd.items()}, "simclr-converter", False),
        (
            lambda sd: {
                "classy_state_dict": {
                    "base_model": {
                        "model": {
                            "trunk": {
                                f"_feature_blocks.{k}": v
                                for k, v in sd.items()
                                if not k.startswith("fc.")
                            },
                            "heads": {"0.clf.0.weight": torch.zeros(1)},
                        }
                    }
                }
            },
            "vissl",
            True,
        ),
    ],
)
def test_simclr_converts_published_formats(wrap, source, normalised, resnet50, weights, tmp_path):
    state, reference = resnet50
    path = tmp_path / "converted.pth"
    torch.save(wrap(state), path)
    backbone = bench.create_backbone("simclr", weights=str(path), size=64)  # strict load inside
    assert backbone.config["source_format"] == source
    assert backbone.config["normalize"] == normalised
    assert backbone.weights_digest() == sha256(path)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ours = backbone.forward_features(x, ["avgpool"])["avgpool"]
        assert torch.allclose(ours, reference(x), atol=1e-4)


def test_simclr_rejects_unknown_checkpoints():
    with pytest.raises(WeightsError, match="known format"):
        simclr.convert_state_dict({"encoder.weight": torch.zeros(1)})


def test_supervised_resnet50_loads_from_torch_hub_cache(resnet50, weights, tmp_path, monkeypatch):
    state, reference = resnet50
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cached = tmp_path / "torch" / "hub" / "checkpoints" / "resnet50-0676ba61.pth"
    cached.parent.mkdir(parents=True)
    torch.save(state, cached)
    backbone = bench.create_backbone("resnet50-supervised")
    assert backbone.weights_digest() == sha256(cached)
    assert backbone.config["transform"]["resize"] == [256] and backbone.input_size == 224
    x = torch.randn(1, 3, 64, 64)
    layer4 = count_calls(backbone.net.layer4)
    with torch.no_grad():
        out = backbone.forward_features(x, ["layer2", "avgpool"])
        assert layer4[0] == 1
        assert torch.allclose(out["avgpool"], reference(x), atol=1e-4)
        backbone.forward_features(x, ["layer2"])  # stops after layer2
    assert layer4[0] == 1


# --- random U-Net control -----------------------------------------------------------------------
def test_random_unet_is_seeded_and_stops_after_the_mid_block(digits):
    a, b = bench.create_backbone("random-unet"), bench.create_backbone("random-unet")
    assert a.weights_digest() == b.weights_digest()
    assert bench.create_backbone("random-unet", seed=1).weights_digest() != a.weights_digest()
    x = batch(a, digits)
    up = count_calls(a.unet.up_blocks[0])
    with torch.no_grad():
        early = a.forward_features(x, ["mid"])
        assert up[0] == 0
        full = a.forward_features(x, ["mid", "up3"])
    assert up[0] == 1 and torch.equal(early["mid"], full["mid"])


# --- BigBiGAN (TF Hub module) -------------------------------------------------------------------
def test_bigbigan_runs_the_module_signature(weights, digits):
    tf = pytest.importorskip("tensorflow")
    backbone = bench.create_backbone("bigbigan-tiny")
    folder = next(weights.glob("bigbigan-tiny-*"))
    assert backbone.weights_digest() == bigbigan.folder_digest(folder)
    x = batch(backbone, digits)
    assert x.shape == (2, 3, 32, 32)  # TF1 bicubic overshoots [-1, 1] a little: not clipped
    out = backbone.forward_features(x, ["avepool_feat", "bn_crelu_feat"])
    assert out["avepool_feat"].shape == (2, 16) and out["bn_crelu_feat"].shape == (2, 32)
    module = tf.saved_model.load(str(folder), tags=[])  # what hub.load does for TF1 Hub modules
    direct = module.signatures["encode"](x=tf.constant(x.permute(0, 2, 3, 1).numpy()))
    for name in ("avepool_feat", "bn_crelu_feat"):
        assert torch.allclose(out[name], torch.from_numpy(direct[name].numpy()))


@pytest.mark.parametrize("size,wide", [((90, 61), 32), ((13, 20), 32), ((300, 257), 256)])
def test_bigbigan_preprocessing_is_the_colabs_tf1_resize_bicubic(size, wide):
    """DeepMind's colab in TensorFlow: centre square (start (size - minor) // 2), TF1's
    resize_bicubic of the uint8 pixels (no antialiasing, not clipped), x / 127.5 - 1."""
    from PIL import Image

    tf = bigbigan.import_tensorflow()
    image = Image.effect_mandelbrot(size, (-2, -1, 1, 1), 50).convert("RGB")
    pixels = tf.constant(np.asarray(image))
    minor = tf.reduce_min(tf.shape(pixels)[:2])
    start = (tf.shape(pixels)[:2] - minor) // 2
    stop = start + minor
    square = pixels[start[0]: stop[0], start[1]: stop[1]]
    resized = tf.compat.v1.image.resize_bicubic([square], [wide, wide])[0]
    want = torch.from_numpy((tf.cast(resized, tf.float32) / (255.0 / 2.0) - 1).numpy())
    ours = bigbigan.ColabPreprocess(wide)(image)
    assert ours.shape == (3, wide, wide)
    torch.testing.assert_close(ours, want.permute(2, 0, 1), rtol=0, atol=2e-5)
    assert ours.max() > 1 or ours.min() < -1 or size[0] > wide  # upsampling overshoots: unclipped


# --- published reference rows --------------------------------------------------------------------
def test_reference_rows_name_their_study_and_table_and_what_presets_load():
    from bench.study.references import reference_rows

    rows = reference_rows(["imagenet", "cub"])
    studies = {label.split(",")[0] for label in rows.index}
    assert studies == {"seed paper", "follow-up", "released checkpoint"}
    # the follow-up's GD numbers (another protocol) are rows of their own
    assert rows.loc["seed paper, ImageNet table: GD attention head", "imagenet"] == 71.89
    assert rows.loc["follow-up, Table 1: GD attention head", "imagenet"] == 74.6
    for baseline in ("SimCLR (ResNet-50)", "SwAV", "MAGE", "U-Net encoder (supervised)"):
        assert f"follow-up, Table 1: {baseline}" in rows.index
    released = {
        "MAE repo linear probing: MAE ViT-B/16 (preset mae)": 68.0,
        "MAE repo linear probing: MAE ViT-L/16 (preset mae-large)": 75.8,
        "SimCLR repo: SimCLR v1 ResNet-50 1x (preset simclr)": 69.1,
        "TF Hub module: BigBiGAN ResNet-50, avepool_feat (preset bigbigan-resnet50)": 55.4,
        "TF Hub module: BigBiGAN ResNet-50, bn_crelu_feat (preset bigbigan-resnet50)": 56.6,
    }
    for label, acc in released.items():
        assert rows.loc[f"released checkpoint, {label}", "imagenet"] == acc
    for label in rows.index:  # every preset a row names exists
        if "(preset " in label:
            assert label.split("(preset ")[1].rstrip(")") in registry.names()


@pytest.mark.parametrize("preset", ["mae-tiny", "clip-tiny", "simclr-tiny", "bigbigan-tiny",
                                    "dinov2-tiny", "resnet50-tiny", "diffusion-tiny",
                                    "ddpm-tiny", "sd-tiny", "dit-tiny"])
def test_bench_run_works_offline_for_every_family(preset):
    """Issue 5/3: `bench run --backbone B --task digits` end to end with the test-sized preset."""
    if preset == "bigbigan-tiny":
        pytest.importorskip("tensorflow", reason="BigBiGAN runs in TensorFlow: pip install "
                            "'frozen-bench[bigbigan]' (CI installs it)")
    from bench.features.cache import FeatureCache
    from bench.cli import main
    from bench.heads.probe import ProbeConfig, fit_probe

    from .conftest import records

    assert main(["run", "--backbone", preset, "--task", "digits", "--task-arg", "limit=40",
                 "--workers", "0", "--epochs", "2", "--lrs", "1e-2", "--wds", "0",
                 "--no-progress"]) == 0
    [record] = records()
    assert record.backbone == preset
    assert record.weights_sha256 == bench.create_backbone(preset).weights_digest()
    # A second path to the same number: the cached features, probed directly.
    cache = FeatureCache()
    loaded = {s: cache.find(keys[0])[0].load() for s, keys in record.cache_keys.items()}
    direct = fit_probe({s: f for s, (f, _, _) in loaded.items()},
                       {s: y for s, (_, y, _) in loaded.items()}, 10,
                       ProbeConfig(lrs=(1e-2,), weight_decays=(0.0,), epochs=2))
    assert record.metrics["test_top1"] == direct.test["top1"]
