"""The paper's attention head and DifFormer head: architecture against docs/paper.md, recipe,
training."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from benchmarks.heads_speed import train_one_by_one
from bench.heads.attention import (
    AttentionHead,
    DifFormerHead,
    HeadConfig,
    MapTokens,
    TransformerBlock,
    _Maps,
    _logits as _grid_logits,
    fit_head,
    grid_tokens,
    make_optimizer,
    train_grid,
)

CLASSES, CHANNELS, SIDE = 4, 8, 4
TINY = {"dim": 32, "heads": 4, "depth": 2}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: a second OpenMP thread only adds overhead (and contention on shared CPUs)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _maps(n: int, seed: int, noise: float = 0.7) -> tuple[np.ndarray, np.ndarray]:
    """Class-dependent spatial patterns with zero spatial mean: a global average pool sees nothing."""
    patterns = np.random.default_rng(123).standard_normal((CLASSES, CHANNELS, SIDE, SIDE))
    patterns -= patterns.mean(axis=(2, 3), keepdims=True)
    rng = np.random.default_rng(seed)
    y = rng.integers(0, CLASSES, n)
    x = patterns[y] + noise * rng.standard_normal((n, CHANNELS, SIDE, SIDE))
    return x.astype(np.float16), y


def _splits(layers: list[str], sizes=(256, 96, 96), dtype=np.float16):
    feats, labels = {}, {}
    for i, (split, n) in enumerate(zip(("train", "val", "test"), sizes)):
        x, y = _maps(n, seed=i)
        # Each further layer is a transformed view of the same images, as blocks/timesteps are.
        feats[split] = {name: (x * (1 + j)).astype(dtype) for j, name in enumerate(layers)}
        labels[split] = y
    return feats, labels


def test_attention_head_learns_spatial_patterns():
    feats, labels = _splits(["block24@t90"])
    cfg = HeadConfig(epochs=8, eval_every=4, batch_size=32, **TINY)
    result = fit_head(feats, labels, CLASSES, cfg)
    assert result.test["top1"] >= 90.0
    assert result.best["lr"] == 5e-2 and result.best["epochs"] in (4, 8)
    assert [(r["lr"], r["epochs"]) for r in result.grid] == [(5e-2, 4), (5e-2, 8)]
    assert result.confusion.sum() == len(labels["test"]) and result.per_class.shape == (CLASSES,)


def test_attention_head_is_the_paper_head():
    head = AttentionHead({"block24": (CHANNELS, SIDE, SIDE)}, num_classes=1000)  # paper defaults
    assert torch.equal(head.cls_token, torch.zeros(1, 1, 1024))
    prefixes = {name.split(".")[0] for name, _ in head.named_parameters()}
    assert prefixes == {"embed", "cls_token", "blocks", "classifier"}  # no positional embedding
    (embed,) = head.embed
    assert embed.norm.normalized_shape == (CHANNELS, SIDE, SIDE)
    assert embed.conv.kernel_size == (1, 1) and embed.conv.out_channels == 1024
    assert len(head.blocks) == 2
    for block in head.blocks:
        assert block.heads == 8 and block.qkv.bias is None and block.qkv.out_features == 3 * 1024
        assert block.mlp[0].out_features == 4 * 1024 and isinstance(block.mlp[1], nn.GELU)
    assert not any(isinstance(m, nn.Dropout) for m in head.modules())
    assert (head.classifier.in_features, head.classifier.out_features) == (1024, 1000)
    with pytest.raises(ValueError, match="map16"):
        MapTokens((CHANNELS, 32, 32), 1024)


def test_block_is_pre_ln_multi_head_attention():
    torch.manual_seed(0)
    block = TransformerBlock(dim=16, heads=4).eval()
    x = torch.randn(2, 5, 16)
    # The attention branch by hand: 4 heads of 4 dims over LN(x).
    q, k, v = block.qkv(block.norm1(x)).split(16, dim=-1)
    split = [t.view(2, 5, 4, 4).transpose(1, 2) for t in (q, k, v)]
    weights = torch.softmax(split[0] @ split[1].mT / 2.0, dim=-1)
    attended = (weights @ split[2]).transpose(1, 2).reshape(2, 5, 16)
    after_attention = x + block.proj(attended)
    expected = after_attention + block.mlp(block.norm2(after_attention))
    torch.testing.assert_close(block(x), expected)
    # Pre-LN: with the MLP branch silenced, the update block(x) - x depends on LN(x) only, so it
    # does not change when x is scaled (a post-LN block would normalise the sum instead).
    nn.init.zeros_(block.mlp[2].weight)
    nn.init.zeros_(block.mlp[2].bias)
    torch.testing.assert_close(block(3 * x) - 3 * x, block(x) - x, atol=1e-4, rtol=1e-4)


def test_tokens_have_no_position():
    """At initialisation (LayerNorm affine is the identity) shuffling pixels leaves logits unchanged."""
    torch.manual_seed(0)
    head = AttentionHead({"a": (CHANNELS, SIDE, SIDE)}, CLASSES, **TINY).eval()
    x = torch.randn(3, CHANNELS, SIDE, SIDE)
    shuffled = x.flatten(2)[..., torch.randperm(SIDE * SIDE)].view_as(x)
    torch.testing.assert_close(head({"a": shuffled}), head({"a": x}), atol=1e-5, rtol=1e-5)


def test_difformer_shares_one_transformer_and_concatenates_cls():
    blocks = {"block19": (CHANNELS, 2, 2), "block24": (CHANNELS // 2, SIDE, SIDE)}

    def head(timesteps: list[int]) -> DifFormerHead:
        shapes = {f"{b}@t{t}": s for t in timesteps for b, s in blocks.items()}
        groups = [[f"{b}@t{t}" for b in blocks] for t in timesteps]
        torch.manual_seed(0)
        return DifFormerHead(shapes, groups, CLASSES, **TINY).eval()

    def count(module: nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    one, two = head([90]), head([90, 150])
    assert count(one) - count(one.classifier) == count(two) - count(two.classifier)
    assert two.classifier.in_features == 2 * TINY["dim"]
    assert len(two.embed) == len(blocks)  # one embedding per block, shared across timesteps
    assert two.groups == [["block19@t90", "block24@t90"], ["block19@t150", "block24@t150"]]

    x = {name: torch.randn(3, *blocks[name.split("@")[0]]) for g in two.groups for name in g}
    cls = [two.encode([x[name] for name in group]) for group in two.groups]
    torch.testing.assert_close(two(x), two.classifier(torch.cat(cls, dim=1)), atol=1e-5, rtol=1e-5)


def test_fit_is_deterministic_given_seed():
    # float32, as ``CacheEntry.load`` returns (the other tests use the cache's float16).
    feats, labels = _splits(["block19@t90", "block19@t150"], sizes=(96, 32, 32), dtype=np.float32)
    cfg = HeadConfig(head="difformer", recipe="adamw", lrs=(1e-3, 3e-3), epochs=2, eval_every=1,
                     batch_size=32, **TINY)
    a = fit_head(feats, labels, CLASSES, cfg)
    b = fit_head(feats, labels, CLASSES, cfg)
    assert a.grid == b.grid and a.test == b.test and a.best == b.best
    assert np.array_equal(a.confusion, b.confusion)
    assert len(a.grid) == 2 * 2 and a.best["weight_decay"] == 0.05


def test_paper_recipe_steps_plain_sgd_and_divides_lr_by_ten_every_seven_epochs():
    cfg = HeadConfig()
    weight = nn.Parameter(torch.ones(3))
    optimizer, _ = make_optimizer([weight], cfg, 5e-2)
    for _ in range(2):  # no momentum, no decay: each step is w -= lr * grad, from the definition
        optimizer.zero_grad()
        (weight * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
        optimizer.step()
    torch.testing.assert_close(weight.detach(), 1 - 2 * 5e-2 * torch.tensor([1.0, 2.0, 3.0]))
    optimizer, scheduler = make_optimizer([nn.Parameter(torch.zeros(1))], cfg, 5e-2)
    assert type(optimizer) is torch.optim.SGD
    group = optimizer.param_groups[0]
    assert (group["momentum"], group["weight_decay"], group["nesterov"]) == (0.0, 0.0, False)
    assert isinstance(scheduler, torch.optim.lr_scheduler.StepLR)
    assert (scheduler.step_size, scheduler.gamma) == (7, 0.1)
    trace = []
    for _ in range(cfg.epochs):
        trace.append(group["lr"])
        optimizer.step()
        scheduler.step()
    np.testing.assert_allclose(trace, np.repeat([5e-2, 5e-3, 5e-4, 5e-5], 7))

    adamw = HeadConfig(recipe="adamw")
    optimizer, scheduler = make_optimizer([nn.Parameter(torch.zeros(1))], adamw, 1e-3)
    assert type(optimizer) is torch.optim.AdamW and adamw.lrs == (1e-4, 3e-4, 1e-3)
    assert isinstance(scheduler, torch.optim.lr_scheduler.CosineAnnealingLR)
    with pytest.raises(ValueError, match="no weight decay"):
        HeadConfig(weight_decay=1e-4)
    with pytest.raises(ValueError, match="builds attention, difformer, not 'mlp'"):
        HeadConfig(head="mlp")


def test_minibatches_span_splits_with_their_labels():
    """Train+val is read in place, without concatenating the (possibly huge) arrays."""
    parts = [{"a": np.arange(n * 2, dtype=np.float16).reshape(n, 2, 1, 1) + 100 * k}
             for k, n in enumerate((5, 3))]
    data = _Maps(parts, [np.arange(5), np.arange(5, 8)])
    whole = np.concatenate([p["a"] for p in parts])
    chunks = [np.array([6, 1, 4]), np.array([7, 0]), np.array([2, 3, 5])]
    for chunk, (maps, y) in zip(chunks, data.batches(chunks, ["a"], torch.device("cpu"))):
        assert np.array_equal(y.numpy(), np.sort(chunk))
        assert maps["a"].dtype == torch.float32
        assert np.array_equal(maps["a"].numpy(), whole[np.sort(chunk)])


@pytest.fixture
def float64():
    """Exact arithmetic for equality tests: the grid and the reference differ only in rounding."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(default)


@pytest.mark.parametrize("head,recipe", [("attention", "paper"), ("difformer", "adamw")])
def test_batched_lr_grid_equals_training_one_by_one(head, recipe, float64):
    layers = ["block19@t90", "block19@t150"]
    feats, labels = _splits(layers, sizes=(80, 8, 24), dtype=np.float32)
    # 8 epochs: the paper's StepLR decays after 7; the cosine runs over all of them.
    cfg = HeadConfig(head=head, recipe=recipe, lrs=(1e-2, 3e-2, 1e-1) if recipe == "paper"
                     else (1e-3, 3e-3, 1e-2), epochs=8, batch_size=32, **TINY)
    shapes = {name: feats["train"][name].shape[1:] for name in layers}
    if head == "attention":
        def build():
            return AttentionHead(shapes, CLASSES, cfg.dim, cfg.heads, cfg.depth)
    else:
        def build():
            return DifFormerHead(shapes, [[layers[0]], [layers[1]]], CLASSES, cfg.dim,
                                 cfg.heads, cfg.depth)
    train = _Maps([feats["train"]], [labels["train"]])
    test = _Maps([feats["test"]], [labels["test"]])
    seen = []
    grid = train_grid(build, train, layers, cfg, cfg.lrs, torch.device("cpu"),
                      {4: lambda g: seen.append(4)}, cfg.epochs, progress=False)
    batched = _grid_logits(grid, test, layers, torch.device("cpu"), 24)
    assert seen == [4] and batched.shape == (3, 24, CLASSES)
    maps = {name: torch.from_numpy(feats["test"][name]).double() for name in layers}
    for lr, logits in zip(cfg.lrs, batched):
        alone = train_one_by_one(build, train, layers, cfg, lr, cfg.epochs)
        with torch.no_grad():
            torch.testing.assert_close(logits, alone(maps), atol=1e-10, rtol=1e-10)
    assert not torch.allclose(batched[0], batched[-1])  # the learning rates did differ


@pytest.mark.parametrize("head", ["attention", "difformer"])
def test_grid_tokens_equal_each_heads_own_embedding(head):
    """The grid's shared-normalisation embedding gives every head its own MapTokens output."""
    layers = ["block19@t90", "block19@t150"]
    shapes = {name: (CHANNELS, SIDE, SIDE) for name in layers}
    seeds = [0, 1, 2]
    models = []
    for seed in seeds:
        torch.manual_seed(seed)
        model = (AttentionHead(shapes, CLASSES, **TINY) if head == "attention" else
                 DifFormerHead(shapes, [[layers[0]], [layers[1]]], CLASSES, **TINY))
        for p in model.parameters():  # LayerNorm's affine starts at 1 and 0: move it
            nn.init.normal_(p, std=0.5)
        models.append(model)
    params, _ = torch.func.stack_module_state(models)
    x = {name: torch.randn(5, CHANNELS, SIDE, SIDE) * 3 + 1 for name in layers}
    inputs = models[0].embed_inputs(x)
    for i, maps in enumerate(inputs):
        prefix = f"embed.{i}."
        tokens = grid_tokens(maps, params[prefix + "norm.weight"], params[prefix + "norm.bias"],
                             params[prefix + "conv.weight"], params[prefix + "conv.bias"],
                             models[0].embed[i].norm.eps)
        for g, model in enumerate(models):
            with torch.no_grad():
                torch.testing.assert_close(tokens[g], model.embed[i](maps), atol=1e-5, rtol=1e-5)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # as on a GPU
            low = grid_tokens(maps, params[prefix + "norm.weight"], params[prefix + "norm.bias"],
                              params[prefix + "conv.weight"], params[prefix + "conv.bias"],
                              models[0].embed[i].norm.eps)
            expected = models[1].embed[i](maps)
        assert low.dtype == expected.dtype == torch.bfloat16
        torch.testing.assert_close(low[1].float(), expected.float(), atol=0.1, rtol=0.05)


def test_last_block_computes_the_cls_row_only():
    """The head uses the CLS output only, so its last block computes that row alone: the same
    numbers as running every block in full."""
    torch.manual_seed(0)
    head = AttentionHead({"a": (CHANNELS, SIDE, SIDE)}, CLASSES, **TINY).eval()
    nn.init.normal_(head.cls_token)
    x = {"a": torch.randn(3, CHANNELS, SIDE, SIDE)}
    with torch.no_grad():
        tokens = head.embed[0](x["a"])
        full = head.blocks(torch.cat([head.cls_token.expand(3, -1, -1), tokens], dim=1))[:, 0]
        torch.testing.assert_close(head(x), head.classifier(full), atol=1e-6, rtol=1e-6)
        block = head.blocks[0]
        torch.testing.assert_close(block(tokens, first_only=True), block(tokens)[:, :1],
                                   atol=1e-6, rtol=1e-6)


# --- heads and metrics as plugins; what a head accepts; the precision policy --------------------
PLUGIN = '''
import numpy as np
from dataclasses import dataclass

from bench.metrics import Metric
from bench.protocol import HeadKind


@dataclass
class CentroidConfig:
    head: str = "centroid"
    seed: int = 0


class CentroidTrainer:
    """Nearest class mean: no grid."""

    def __init__(self, cfg, device, precision, progress, groups):
        pass

    def search(self, data):
        from bench.protocol import metrics
        return [{"shrink": 0.0, **metrics(self._scores(data, ["train"], "val"),
                                          data.labels["val"], data.num_classes)}]

    def refit_predict(self, data, point):
        return self._scores(data, ["train", "val"], "test")

    def _scores(self, data, fit, on):
        import torch
        x = np.concatenate([data.features[s] for s in fit])
        y = np.concatenate([data.labels[s] for s in fit])
        means = np.stack([x[y == c].mean(0) for c in range(data.num_classes)])
        return torch.from_numpy(-((data.features[on][:, None] - means) ** 2).sum(-1))


HEAD = HeadKind("centroid", "nearest class mean", CentroidConfig, CentroidTrainer, "vectors")
TOP3 = Metric("top3", lambda p: (p.top5[:, :3] == p.labels[:, None]).any(1), description="top-3")
'''


@pytest.fixture
def plugin_package(tmp_path, monkeypatch):
    """A package installed only as a dist-info folder on sys.path, declaring a head and a metric
    in its entry points: nothing in bench names them."""
    import importlib
    import sys

    from bench import metrics, protocol

    (tmp_path / "centroid_plugin.py").write_text(PLUGIN)
    info = tmp_path / "centroid_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: centroid-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[bench.heads]\ncentroid = centroid_plugin:HEAD\n\n"
                                           "[bench.metrics]\ntop3 = centroid_plugin:TOP3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    protocol.head_names(), metrics.names()  # the built-ins first
    for registry in (protocol.HEADS, metrics.METRICS):  # discovered afresh, restored after
        monkeypatch.setattr(registry, "_entries", dict(registry._entries))
        monkeypatch.setattr(registry, "_discovered", False)
    yield
    sys.modules.pop("centroid_plugin", None)


def test_a_head_and_a_metric_from_outside_the_package_run_through_the_protocol(plugin_package):
    from bench.results.leaderboard import metric_choices
    from bench.metrics import names
    from bench.protocol import ProbeData, evaluate, head_kind, head_names, protocols
    from bench.stats import bootstrap_intervals

    assert "centroid" in head_names() and protocols()["centroid"] == ("centroid",)
    assert "top3" in names() and "test_top3" in metric_choices()
    kind = head_kind("centroid")
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 8)) * 3
    y = {s: rng.integers(0, 4, 60) for s in ("train", "val", "test")}
    x = {s: (centres[y[s]] + rng.normal(size=(60, 8))).astype(np.float32) for s in y}
    trainer = kind.make_trainer(kind.make_config({}, 0), "cpu", None, False)
    result = evaluate(trainer, ProbeData(x, y, 4))
    top3 = 100 * np.mean([label in row[:3] for row, label in
                          zip(result.predictions.top5, y["test"])])
    assert result.test["top3"] == pytest.approx(top3) and result.test["top1"] > 80
    assert set(bootstrap_intervals(result.predictions, 50).low) == {
        "top1", "top5", "mean_per_class", "top3"}


def test_registering_something_that_is_not_a_head_kind_is_refused():
    from bench.metrics import add
    from bench.protocol import register_head

    with pytest.raises(TypeError, match="must be a bench.protocol.HeadKind"):
        register_head(object())
    with pytest.raises(TypeError, match="must be a bench.metrics.Metric"):
        add(lambda p: p.hits()[0])


@pytest.mark.parametrize("head, pool", [("attention", "2"), ("knn", "map4"), ("linear", "map2")])
def test_a_pool_the_head_cannot_read_is_refused_in_resolve_before_extraction(head, pool):
    from bench.errors import UsageError
    from bench.run.spec import RunOptions, RunSpec, resolve

    spec = RunSpec(backbone="pixels", task="digits", pools=[pool], head=head,
                   backbone_args={"size": 8})
    with pytest.raises(UsageError, match=f"head '{head}' cannot read pool '{pool}'"):
        resolve(spec, RunOptions(device="cpu"))
    resolve(RunSpec(backbone="pixels", task="digits", pools=["map4" if head == "attention"
                                                            else "2"], head=head,
                    backbone_args={"size": 8}), RunOptions(device="cpu"))


def test_trainers_and_extraction_need_a_precision_policy_not_a_device_default():
    from bench.features.extract import extract
    from bench.heads.knn import KnnConfig
    from bench.heads.probe import GridProbeTrainer, ProbeConfig

    with pytest.raises(TypeError, match="PrecisionPolicy is required"):
        GridProbeTrainer(ProbeConfig(), "cpu", None)
    with pytest.raises(TypeError, match="PrecisionPolicy is required"):
        from bench.heads.attention import AttentionTrainer

        AttentionTrainer(HeadConfig(), "cpu", None)
    with pytest.raises(TypeError, match="PrecisionPolicy is required"):
        extract(None, None, [], None, {}, device=torch.device("cpu"), precision="bf16")
    assert KnnConfig().head == "knn"
