"""DifFeed (arXiv 2311.17921): equal to the authors' code and to a hand-written two-pass forward,
frozen backbone, feedback modules the only thing that trains, BatchNorm train/eval semantics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import bench
from bench.backbones.adm.backbone import RELEASED, meta_unet
from bench.backbones.adm.diffeed import FEEDBACK_BLOCKS, DifFeed, mirror
from bench.backbones.adm.unet import complete_flags, timestep_embedding
from bench.errors import UsageError

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "adm"
AUTHORS = Path(__file__).resolve().parent / "fixtures" / "diffeed" / "authors.safetensors"
needs_shared = pytest.mark.skipif(
    not SHARED.is_dir(), reason=f"ADM fixtures not found at {SHARED} (../shared/fixtures)"
)
pytestmark = pytest.mark.usefixtures("one_thread")  # small tensors: threads only contend
T = 150
LAYERS = ("block17@t150", "block24@t150", "block30@t150")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The 37-block tiny ADM: seeded random weights saved and loaded like a checkpoint."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BENCH_WEIGHTS", str(tmp_path_factory.mktemp("weights")))
        return bench.create_backbone("diffusion-tiny", t=T)


def randomise_batchnorm(model: DifFeed, seed: int = 0) -> None:
    """Affine and running statistics away from their defaults, so both modes are exercised."""
    g = torch.Generator().manual_seed(seed)
    for module in model.feedback.values():
        bn = module[1]
        n = bn.num_features
        bn.weight.data = torch.rand(n, generator=g) + 0.5
        bn.bias.data = torch.randn(n, generator=g) * 0.5
        bn.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
        bn.running_var.copy_(torch.rand(n, generator=g) + 0.5)


def images(n: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, 64, 64, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# --- against the authors' code --------------------------------------------------------------
@needs_shared
def test_matches_the_authors_code():
    """tests/fixtures/diffeed/authors.safetensors holds what soumik-kanad/diffssl's own
    DiffSSLModelFeedbackFusion computed (make_authors_fixture.py): second-pass outputs in train
    and eval mode, the feedback modules' gradients and the updated running statistics."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    meta = json.loads((SHARED / "adm_256_uncond_tiny.json").read_text())
    fx = load_file(str(AUTHORS))
    with safe_open(str(AUTHORS), "pt") as f:
        info = f.metadata()
    assert info["weights_sha256"] == meta["weights_sha256"]
    backbone = bench.create_backbone(
        "adm", flags=meta["create_model_flags"],
        weights=str(SHARED / "adm_256_uncond_tiny.weights.safetensors"), t=int(info["t"]),
    )
    io = load_file(str(SHARED / "adm_256_uncond_tiny.io.safetensors"))
    t = torch.full((2,), int(info["t"]))
    assert (backbone.schedule.q_sample(io["x0"], t, io["noise"]) - fx["xt"]).abs().max() < 1e-6
    sources = json.loads(info["feedback_b_list"])
    read = json.loads(info["second_fw_b_list"])
    model = DifFeed(backbone, [str(b) for b in read], sources)
    assert [s for s, _ in model.pairs] == sources

    def ours(prefix: str) -> dict[str, torch.Tensor]:
        """Their ModuleList index i is feedback block sources[i]; ours is keyed by the block."""
        out = {}
        for key, value in fx.items():
            if key.startswith(prefix + "."):
                index, rest = key[len(prefix) + 1:].split(".", 1)
                out[f"{sources[int(index)]}.{rest}"] = value
        return out

    model.load_trainable_state_dict(ours("state"))
    model.train()
    out = model.block_features(fx["xt"], t)
    loss = sum((out[b] * fx[f"weight.block_{b:02d}"]).sum() for b in read)
    loss.backward()
    for b in read:
        err = (out[b] - fx[f"train.block_{b:02d}"]).abs().max().item()
        assert err < 1e-4, f"train mode, block {b}: max abs diff {err}"
    grads = dict(model.feedback.named_parameters())
    for key, ref in ours("grad").items():
        err = ((grads[key].grad - ref).abs().max() / ref.abs().max()).item()
        assert err < 2e-5, f"gradient of {key}: relative diff {err}"
    state = model.trainable_state_dict()
    for key, ref in ours("after").items():
        assert torch.allclose(state[key].double(), ref.double(), atol=1e-6), key
    model.eval()
    with torch.no_grad():
        out = model.block_features(fx["xt"], t)
    for b in read:
        err = (out[b] - fx[f"eval.block_{b:02d}"]).abs().max().item()
        assert err < 1e-4, f"eval mode, block {b}: max abs diff {err}"


# --- against an independent hand-written forward -----------------------------------------------
def hand_written(unet, model: DifFeed, x_t, t, read, training):
    """Both passes written out from the U-Net's parts; the feedback of decoder block b, computed
    with functional ops from the modules' tensors, is added to input_blocks[38 - b - 1]."""
    emb = unet.time_embed(timestep_embedding(t, unet.model_channels))

    def run(additions):
        h, skips, outs = x_t, [], []
        for i, block in enumerate(unet.input_blocks):
            h = block(h, emb)
            if i in additions:
                h = h + additions[i]
            skips.append(h)
            outs.append(h)
        h = unet.middle_block(h, emb)
        outs.append(h)
        for block in unet.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
            outs.append(h)
        return outs

    with torch.no_grad():
        first = run({})
    additions = {}
    for b in FEEDBACK_BLOCKS:
        conv, bn, _ = model.feedback[str(b)]
        z = F.conv2d(first[b - 1], conv.weight)
        z = F.batch_norm(z, bn.running_mean.clone(), bn.running_var.clone(), bn.weight, bn.bias,
                         training=training, momentum=0.1, eps=1e-5)
        additions[38 - b - 1] = F.relu(z)
    second = run(additions)
    return {b: second[b - 1] for b in read}


@pytest.mark.parametrize("training", [True, False])
def test_matches_a_hand_written_forward(tiny, training):
    model = DifFeed(tiny, LAYERS)
    randomise_batchnorm(model)
    model.train(training)
    x0, ids, draw = images(3), [11, 12, 13], 3
    got = model(x0, torch.tensor(ids), draw=draw)
    assert list(got) == list(LAYERS)
    abar = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))[T]
    eps = tiny.noise(ids, draw, (3, 64, 64))
    x_t = float(np.sqrt(abar)) * x0 + float(np.sqrt(1 - abar)) * eps
    ref = hand_written(tiny.unet, model, x_t, torch.full((3,), T), [17, 24, 30], training)
    for layer, block in zip(LAYERS, [17, 24, 30]):
        assert got[layer].shape == ref[block].shape
        err = (got[layer] - ref[block]).abs().max().item()
        assert err < 1e-4, f"{layer}: max abs diff {err}"


# --- initialisation, and zero feedback == the plain backbone ------------------------------------
def test_zero_feedback_gives_the_plain_backbone_features(tiny):
    """The authors initialise by PyTorch's defaults (no zero init), so at initialisation the second
    pass differs from the first; with the BatchNorm affine zeroed, the feedback is exactly zero
    and the features are the backbone's own (same seeded noise, same x_t)."""
    model = DifFeed(tiny, LAYERS)
    for source, target in model.pairs:
        conv, bn, _ = model.feedback[str(source)]
        assert conv.bias is None and conv.kernel_size == (1, 1)
        assert conv.in_channels == tiny.unet.block_shapes[source - 1][0]
        assert conv.out_channels == tiny.unet.block_shapes[target - 1][0]
        assert torch.equal(bn.weight, torch.ones_like(bn.weight))
        assert torch.equal(bn.bias, torch.zeros_like(bn.bias))
        assert (bn.eps, bn.momentum) == (1e-5, 0.1)
    x0, ids = images(3, seed=1), torch.tensor([4, 5, 6])
    plain = tiny.forward_features(x0, list(LAYERS), ids)
    model.eval()
    with torch.no_grad():
        at_init = model(x0, ids)
        for module in model.feedback.values():
            module[1].weight.zero_()
            module[1].bias.zero_()
        zeroed = model(x0, ids)
    for layer in LAYERS:
        assert (at_init[layer] - plain[layer]).abs().max() > 1e-2, layer
        assert torch.allclose(zeroed[layer], plain[layer], atol=1e-6), layer


# --- what trains ----------------------------------------------------------------------------
def test_gradients_reach_only_the_feedback_modules(tiny):
    """The first pass runs without autograd (every U-Net block call up to block 36 under
    no_grad), the second with it (up to the deepest layer asked for); backward fills the feedback
    modules' gradients and nothing of the backbone, and a step leaves the backbone unchanged."""
    model = DifFeed(tiny, ["block24@t150"])
    blocks = [*tiny.unet.input_blocks, tiny.unet.middle_block, *tiny.unet.output_blocks]
    calls: list[tuple[int, bool]] = []
    hooks = [
        block.register_forward_hook(
            lambda *_, n=n: calls.append((n, torch.is_grad_enabled()))
        )
        for n, block in enumerate(blocks, start=1)
    ]
    try:
        model.train()
        out = model(images(2), [0, 1])["block24@t150"]
    finally:
        for hook in hooks:
            hook.remove()
    assert calls == [(n, False) for n in range(1, 37)] + [(n, True) for n in range(1, 25)]
    assert out.requires_grad
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    feedback = {id(p) for p in model.feedback.parameters()}
    assert {id(p) for p in model.trainable_parameters()} == feedback
    assert not feedback & {id(p) for p in tiny.parameters()}
    assert all(not p.requires_grad for p in tiny.parameters())
    head = torch.nn.Linear(out[0].numel(), 5)
    loss = F.cross_entropy(head(out.flatten(1)), torch.tensor([1, 3]))
    optimiser = torch.optim.SGD([*head.parameters(), *model.trainable_parameters()], lr=0.1)
    optimiser.zero_grad()
    loss.backward()
    for name, p in model.feedback.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in tiny.parameters())
    weights = [p.clone() for p in model.trainable_parameters()]
    optimiser.step()
    assert all(not torch.equal(a, b) for a, b in zip(weights, model.trainable_parameters()))
    assert all(torch.equal(v, before[k]) for k, v in tiny.state_dict().items())


def test_batchnorm_follows_train_and_eval(tiny):
    """Training: batch statistics (an image's features depend on its batch) and running statistics
    updated; eval: running statistics, per-image features, nothing updated. The frozen U-Net
    stays in eval mode either way."""
    model = DifFeed(tiny, ["block24@t150"])
    randomise_batchnorm(model, seed=2)
    x0, ids = images(4, seed=3), torch.tensor([0, 1, 2, 3])
    bns = [m[1] for m in model.feedback.values()]

    model.train()
    assert all(bn.training for bn in bns)
    assert not any(m.training for m in tiny.modules())
    before = [bn.running_mean.clone() for bn in bns]
    with torch.no_grad():
        whole = model(x0, ids)["block24@t150"]
        part = model(x0[:2], ids[:2])["block24@t150"]
    assert all(not torch.equal(a, bn.running_mean) for a, bn in zip(before, bns))
    assert all(int(bn.num_batches_tracked) == 2 for bn in bns)
    assert (whole[:2] - part).abs().max() > 1e-3

    model.eval()
    assert not any(m.training for m in model.modules())
    state = {k: v.clone() for k, v in model.trainable_state_dict().items()}
    with torch.no_grad():
        whole = model(x0, ids)["block24@t150"]
        part = model(x0[:2], ids[:2])["block24@t150"]
    assert torch.allclose(whole[:2], part, atol=1e-5)
    assert all(torch.equal(v, state[k]) for k, v in model.trainable_state_dict().items())


def test_trainable_state_round_trip(tiny):
    """A checkpoint needs only the feedback state (no backbone weights) to resume."""
    model = DifFeed(tiny, ["block24@t150"])
    randomise_batchnorm(model, seed=4)
    state = model.trainable_state_dict()
    assert all(key.split(".")[0] in {str(b) for b in FEEDBACK_BLOCKS} for key in state)
    fresh = DifFeed(tiny, ["block24@t150"])
    fresh.load_trainable_state_dict(state)
    x0 = images(2, seed=5)
    with torch.no_grad():
        a = model.eval()(x0)["block24@t150"]
        b = fresh.eval()(x0)["block24@t150"]
    assert torch.equal(a, b)


def test_bf16_autocast_close_to_fp32_and_trains(tiny):
    from bench.precision import autocast

    model = DifFeed(tiny, ["block24@t150"]).eval()
    randomise_batchnorm(model, seed=6)
    x0 = images(2, seed=7)
    with torch.no_grad():
        ref = model(x0)["block24@t150"]
        with autocast("bf16", torch.device("cpu")):
            low = model(x0)["block24@t150"]
    assert low.dtype == torch.bfloat16
    rel = ((low.float() - ref).norm() / ref.norm()).item()
    assert rel < 0.05, f"relative error {rel:.3f}"
    model.train()
    with autocast("bf16", torch.device("cpu")):
        out = model(x0)["block24@t150"]
    out.float().square().mean().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32
               for p in model.trainable_parameters())


# --- wiring of the real 256x256 model, config, bad input -------------------------------------------
def test_wiring_of_the_256_model():
    """Decoder block b feeds the encoder block whose output it takes as its skip connection,
    38 - b in the 37-block 256x256 model; the released pairs join blocks of equal shape (channel
    counts as the authors' ssl_diff/const.py FEAT_DIM_LIST), so nothing is resized."""
    unet = meta_unet(complete_flags(RELEASED["diffusion"].flags))
    assert unet.num_blocks == 37
    authors_dims = [256] * 7 + [512] * 6 + [1024] * 12 + [512] * 6 + [256] * 6
    assert [c for c, _ in unet.block_shapes] == authors_dims
    assert {b: mirror(b, 37) for b in FEEDBACK_BLOCKS} == {
        21: 17, 24: 14, 27: 11, 30: 8, 33: 5, 36: 2
    }
    for b in FEEDBACK_BLOCKS:
        target = mirror(b, unet.num_blocks)
        assert unet.block_shapes[b - 1] == unet.block_shapes[target - 1]
        # output block b's first layer reads [h, skip]: channels of block b - 1 plus its mirror's
        first = unet.output_blocks[b - 20][0].in_layers[2]
        assert first.in_channels == authors_dims[b - 2] + authors_dims[target - 1]


def test_config(tiny):
    model = DifFeed(tiny, ["24@150", "block24@t150", "output_blocks.10@t150"])
    assert model.layers == ("block24@t150", "block30@t150")
    assert model.config == {
        "method": "difeed",
        "layers": ["block24@t150", "block30@t150"],
        "t": 150,
        "feedback": [[21, 17], [24, 14], [27, 11], [30, 8], [33, 5], [36, 2]],
        "feedback_module": "conv1x1 (no bias) -> BatchNorm2d (eps 1e-5, momentum 0.1) -> ReLU",
        "first_pass": "no_grad, same x_t and t as the second pass",
    }
    assert DifFeed(tiny, ["block24"], [24, 21]).config["feedback"] == [[21, 17], [24, 14]]
    assert DifFeed(tiny, ["block24@t90"]).config["t"] == 90


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(layers=["block24@t90", "block24@t150"]), "share one timestep"),
        (dict(layers=["block24"], feedback_blocks=[10, 21]), "feedback blocks [10]"),
        (dict(layers=["block24"], feedback_blocks=[]), "feedback blocks (none)"),
        (dict(layers=["block5"]), "blocks [17, 14, 11, 8] comes after"),
        (dict(layers=["block99"]), "blocks are numbered 1..37"),
    ],
)
def test_bad_input_is_a_one_line_error(tiny, kwargs, message):
    with pytest.raises(UsageError) as error:
        DifFeed(tiny, **kwargs)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_refuses_averaged_noise_and_other_backbones():
    with pytest.raises(UsageError, match="noise_draws=1"):
        DifFeed(bench.create_backbone("diffusion-tiny", noise_draws=2))
    with pytest.raises(UsageError, match="needs an ADM backbone"):
        DifFeed(torch.nn.Linear(2, 2))  # type: ignore[arg-type]
