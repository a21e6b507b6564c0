"""Any model: timm:, open_clip:, hf: backbones, the user's own factories and entry points, argument
checking, licences, and the fidelity fixes (BigBiGAN preprocessing, CLIP normalisation).

Every model is a tiny real architecture with seeded random weights written to disk and loaded back
through the real path; features are compared with the library's own forward.
"""

from __future__ import annotations

import re
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image

import bench
from bench.registry import FactoryError, InvalidArgumentError, Presets
from bench.registry import backbones as backbone_registry
from bench.features.weights import weights_dir

REPO = Path(__file__).resolve().parents[1]
TINY_VIT = {"img_size": 32, "depth": 2}


# --- timm -----------------------------------------------------------------------------------------
def test_timm_vit_layers_equal_timms_forward_intermediates():
    import timm

    bb = bench.create_backbone("timm:vit_tiny_patch16_224", weights="none", model_args=TINY_VIT)
    assert bb.input_size == 32 and bb.licence == "none (random weights)"
    assert [p.name for p in bb.feature_points()] == ["blocks.0", "blocks.1", "pre-logits"]
    net = timm.create_model("vit_tiny_patch16_224", num_classes=0, **TINY_VIT)
    net.load_state_dict(bb.net.state_dict())  # a second copy, through timm alone
    net.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ours = bb.forward_features(x, ["blocks.0", "blocks.1", "pre-logits"])
        final, inter = net.forward_intermediates(x, indices=[0, 1], return_prefix_tokens=True,
                                                 output_fmt="NLC")
        head = net.forward_head(final, pre_logits=True)
    for name, (patches, prefix) in zip(["blocks.0", "blocks.1"], inter):
        assert torch.equal(ours[name], torch.cat([prefix, patches], dim=1))  # CLS, then patches
    assert torch.equal(ours["pre-logits"], head) and head.shape == (2, 192)
    pooled = bb.extract(x, [("blocks.1", "cls")])[("blocks.1", "cls")]
    assert torch.equal(pooled, ours["blocks.1"][:, 0])


def test_timm_cnn_stages_are_maps_equal_to_forward_intermediates(tmp_path):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(1)
    ref = timm.create_model("resnet10t", num_classes=0).eval()
    path = tmp_path / "mine.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    bb = bench.create_backbone("timm:resnet10t", weights=str(path))  # weights=PATH
    assert bb.feature_point("layer4").kind == "map"
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ours = bb.forward_features(x, ["layer2", "layer4"])
        expected = ref.forward_intermediates(x, indices=[2, 4], intermediates_only=True)
    assert torch.equal(ours["layer2"], expected[0]) and torch.equal(ours["layer4"], expected[1])
    assert bb.config["transform"]["input_size"] == ref.pretrained_cfg["input_size"]


def test_timm_licence_comes_from_pretrained_cfg_and_bad_names_are_clear():
    from bench.backbones.timm_models import tag_licence

    assert tag_licence("vit_base_patch16_224.mae") == "cc-by-nc-4.0"
    with pytest.raises(ValueError, match="timm has no model 'vit_nonexistent'"):
        bench.create_backbone("timm:vit_nonexistent", weights="none")


# --- open_clip ------------------------------------------------------------------------------------
def test_open_clip_image_embedding_equals_encode_image_and_normalize():
    import open_clip

    from bench.backbones.clip import TINY

    plain = bench.create_backbone("open_clip:ViT-B-16", weights="none", model_cfg=TINY)
    normed = bench.create_backbone("open_clip:ViT-B-16", weights="none", model_cfg=TINY,
                                   normalize=True)
    [path] = weights_dir().glob("random-open_clip-*.safetensors")
    model = open_clip.create_model("ViT-B-16", pretrained=str(path), **TINY).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model.encode_image(x)
        ours = plain.forward_features(x, ["image-embedding", "pre-projection"])
        unit = normed.forward_features(x, ["image-embedding"])["image-embedding"]
    assert torch.allclose(ours["image-embedding"], expected, atol=1e-6)
    assert torch.allclose(unit, torch.nn.functional.normalize(expected, dim=-1), atol=1e-6)
    assert ours["pre-projection"].shape == (2, 32)
    assert normed.config["normalize"] is True and "normalize" not in plain.config  # cache keys


def test_open_clip_needs_a_tag_and_the_clip_preset_normalizes_too():
    with pytest.raises(ValueError, match="laion2b_s34b_b88k"):
        bench.create_backbone("open_clip:ViT-B-16")
    clip = bench.create_backbone("clip-tiny", normalize=True)
    with torch.no_grad():
        emb = clip.forward_features(torch.randn(3, 3, 32, 32), ["image-embedding"])
    assert torch.allclose(emb["image-embedding"].norm(dim=-1), torch.ones(3))


# --- Hugging Face -----------------------------------------------------------------------------------
def test_hf_vit_layers_equal_output_hidden_states(tmp_path):
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    torch.manual_seed(0)
    config = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=64, image_size=32, patch_size=16)
    model = ViTModel(config).eval()
    folder = tmp_path / "tiny-vit"
    model.save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    (folder / "README.md").write_text("---\nlicense: apache-2.0\n---\n# tiny\n")
    bb = bench.create_backbone(f"hf:{folder}")
    assert bb.licence == "apache-2.0" and bb.input_size == 32
    names = [p.name for p in bb.feature_points()]
    assert names == ["hidden_states.0", "hidden_states.1", "hidden_states.2", "cls", "mean", "pooler"]
    x = bb.transform()(Image.new("RGB", (48, 40), (200, 10, 30))).unsqueeze(0)
    with torch.no_grad():
        ours = bb.forward_features(x, names)
        ref = model(pixel_values=x, output_hidden_states=True)
    for i in range(3):
        assert torch.equal(ours[f"hidden_states.{i}"], ref.hidden_states[i])
    assert torch.equal(ours["cls"], ref.last_hidden_state[:, 0])
    assert torch.equal(ours["mean"], ref.last_hidden_state[:, 1:].mean(1))
    assert torch.equal(ours["pooler"], ref.pooler_output)


# --- argument checking ------------------------------------------------------------------------------
def test_registry_checks_argument_names_types_and_json():
    with pytest.raises(InvalidArgumentError, match=r"^backbone argument t expects int, got '9O'$"):
        bench.create_backbone("diffusion-tiny", t="9O")
    with pytest.raises(InvalidArgumentError, match=r"has no argument 'tt'; valid arguments: .*\bt\b"):
        bench.create_backbone("diffusion-tiny", tt=90)
    with pytest.raises(InvalidArgumentError, match="flags: .* looks like JSON but does not parse"):
        bench.create_backbone("diffusion-tiny", flags='{"image_size": 64')
    with pytest.raises(InvalidArgumentError, match="expects bool, got 'yes'"):
        bench.create_backbone("clip-tiny", normalize="yes")
    with pytest.raises(InvalidArgumentError, match="task argument limit expects"):
        bench.create_task("digits", limit="ten")


def test_cli_reports_a_bad_argument_in_one_line(capsys):
    from bench.cli import main

    assert main(["run", "--backbone", "diffusion-tiny", "--task", "digits",
                 "--backbone-arg", "t=9O", "--no-progress"]) == 2
    assert "backbone argument t expects int, got '9O'" in capsys.readouterr().err


# --- the user's own models ----------------------------------------------------------------------------
WRONG_FACTORIES = """
def not_a_backbone(size: int = 3):
    return [size]

def not_a_task():
    return "digits"
"""


def test_file_and_module_factories_are_checked(tmp_path, monkeypatch):
    (tmp_path / "wrong.py").write_text(WRONG_FACTORIES)
    with pytest.raises(FactoryError, match=r"not_a_backbone' returned list, not a bench\.backbone"):
        bench.create_backbone(f"{tmp_path}/wrong.py:not_a_backbone")
    with pytest.raises(FactoryError, match=r"returned str, not a bench\.task\.Task"):
        bench.create_task(f"{tmp_path}/wrong.py:not_a_task")
    with pytest.raises(InvalidArgumentError, match="backbone argument size expects int"):
        bench.create_backbone(f"{tmp_path}/wrong.py:not_a_backbone", size="big")
    pkg = tmp_path / "userpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "models.py").write_text(readme_example())
    monkeypatch.syspath_prepend(str(tmp_path))
    bb = bench.create_backbone("userpkg.models:tiny_cnn", width=4)  # package.module:factory
    assert bb.name == "userpkg.models:tiny_cnn" and bb.config["width"] == 4
    with pytest.raises(bench.registry.UnknownNameError, match="unknown backbone 'nopkg.mod:f'"):
        bench.create_backbone("nopkg.mod:f")


def test_entry_points_add_presets(tmp_path, monkeypatch):
    """An installed package's factory appears as a preset; a broken one warns and is skipped."""
    (tmp_path / "plugin_models.py").write_text(readme_example())
    dist = tmp_path / "plugin_models-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: plugin-models\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[bench.backbones]\nplugin-cnn = plugin_models:tiny_cnn\nbroken = plugin_models:missing\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = Presets("backbone", "bench.backbones")  # fresh: only entry points register into it
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert registry.names() == ["plugin-cnn"]
    assert any("'broken'" in str(w.message) for w in caught)
    assert registry.create("plugin-cnn", width=8).config["width"] == 8


def readme_example() -> str:
    """The Python block under "Evaluate your own model" in the docs' guide (once the README's)."""
    readme = (REPO / "docs" / "guides" / "any-model.md").read_text()
    section = readme.split("## Evaluate your own model", 1)[1]
    return textwrap.dedent(re.search(r"```python\n(.*?)```", section, re.S).group(1))


def test_readme_example_runs_as_written(tmp_path, monkeypatch, capsys):
    """The docs' own-model example, saved as my_backbone.py, through `bench run`."""
    from bench.cli import main

    from .conftest import records

    (tmp_path / "my_backbone.py").write_text(readme_example())
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--backbone", "my_backbone.py:tiny_cnn", "--task", "digits",
                 "--task-arg", "limit=40", "--workers", "0", "--epochs", "2", "--lrs", "1e-2",
                 "--wds", "0", "--no-progress"]) == 0
    out = capsys.readouterr().out
    [record] = records()
    assert record.backbone == "my_backbone.py:tiny_cnn"
    assert f"test_top1 {record.metrics['test_top1']:.2f}" in out  # printed = logged


# --- licences ---------------------------------------------------------------------------------------
def test_generic_families_list_a_licence_rule():
    for name in ("timm", "open_clip", "hf"):
        assert "unknown: see the model card" in backbone_registry.entry(name).licence
