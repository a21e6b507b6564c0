"""The batched grid probe's fast paths: hand-written linear gradients and successive halving."""

from __future__ import annotations

import math

import torch

from bench.heads.probe import ProbeConfig, fit_probe, train_grid

from .test_engine import _digit_features


def test_hand_written_gradients_equal_autograd():
    torch.manual_seed(0)
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    cfg = ProbeConfig(epochs=1)
    model = train_grid(x, y, 3, torch.tensor([1e-2, 3e-2]), torch.tensor([0.0, 0.1]), cfg, {})
    heads = model.heads
    batch = model.norm(x, train=False)
    manual = heads.linear_gradients(batch, y)
    logits = heads(batch)  # (G, N, C) through autograd
    loss = sum(torch.nn.functional.cross_entropy(g, y) for g in logits)
    auto = torch.autograd.grad(loss, list(heads.parameters()))
    for a, b in zip(manual, auto):
        torch.testing.assert_close(a, b)


def test_successive_halving_keeps_the_better_half_and_their_scores():
    _, feats, labels = _digit_features()
    small = {"epochs": 3, "eval_every": 1, "lrs": (1e-3, 1e-2, 1e-1), "weight_decays": (0.0, 1e-2)}
    full = fit_probe(feats, labels, 10, ProbeConfig(halving=False, **small))
    halved = fit_probe(feats, labels, 10, ProbeConfig(halving=True, **small))
    counts = [sum(r["epochs"] == e for r in halved.grid) for e in (1, 2, 3)]
    assert counts[0] == 6 and 3 <= counts[1] < 6 and 2 <= counts[2] <= counts[1]
    key = lambda r: (r["lr"], r["weight_decay"], r["epochs"])  # noqa: E731
    scores = {key(r): r["top1"] for r in full.grid}
    for record in halved.grid:  # survivors train exactly as in the full grid
        assert abs(record["top1"] - scores[key(record)]) < 0.5
    first = sorted((r for r in full.grid if r["epochs"] == 1), key=lambda r: -r["top1"])
    kept = {(r["lr"], r["weight_decay"]) for r in halved.grid if r["epochs"] == 2}
    # the better half, every point tied with the last one kept, and every point within one
    # binomial standard error of the best on the validation images
    p, n = first[0]["top1"] / 100, len(labels["val"])
    floor = min(first[2]["top1"], first[0]["top1"] - 100 * math.sqrt(p * (1 - p) / n))
    assert kept == {(r["lr"], r["weight_decay"]) for r in first if r["top1"] >= floor}
    for head in ("bn-linear", "mlp"):  # the other heads keep their grid points the same way
        other = fit_probe(feats, labels, 10, ProbeConfig(head=head, hidden=32, **small))
        assert [sum(r["epochs"] == e for r in other.grid) for e in (1, 2, 3)][0] == 6
        assert other.test["top1"] > 50
    # halving is a head setting, so it is in the resolved protocol and the result's identity
    from dataclasses import asdict

    from bench.protocol import head_kind

    assert asdict(head_kind("linear").make_config({"halving": True}, 0))["halving"] is True


def test_grid_adamw_equals_torch_optim_adamw_point_by_point():
    """Each grid point trains as torch.optim.AdamW (decay on weights only) under the cosine
    schedule would, on the same minibatches: the in-place update is the textbook one."""
    torch.manual_seed(0)
    x, y = torch.randn(150, 6), torch.randint(0, 3, (150,))  # three order blocks
    cfg = ProbeConfig(epochs=2, batch_size=64)
    lrs, wds = torch.tensor([1e-2, 3e-2]), torch.tensor([0.0, 0.1])
    model = train_grid(x, y, 3, lrs, wds, cfg, {})
    inputs = model.norm(x, train=False)
    steps = cfg.epochs * 3
    from bench.heads.streaming import epoch_order
    for g, (lr, wd) in enumerate(zip(lrs.tolist(), wds.tolist())):
        w = torch.zeros(6, 3, requires_grad=True)
        b = torch.zeros(3, requires_grad=True)
        opt = torch.optim.AdamW([{"params": [w], "weight_decay": wd},
                                 {"params": [b], "weight_decay": 0.0}], lr=lr)
        cosine = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda t: 0.5 * (1 + math.cos(math.pi * t / steps)))
        gen = torch.Generator().manual_seed(cfg.seed)
        for _ in range(cfg.epochs):
            order = torch.from_numpy(epoch_order(len(x), gen))
            for i in range(0, len(x), cfg.batch_size):
                idx = order[i : i + cfg.batch_size]
                loss = torch.nn.functional.cross_entropy(inputs[idx] @ w + b, y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                cosine.step()
        torch.testing.assert_close(model.heads.weights[0][g].T, w.detach(), atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(model.heads.biases[0][g], b.detach(), atol=1e-6, rtol=1e-5)


def test_bf16_policy_runs_the_linear_grid_in_bf16_close_to_fp32():
    from bench.precision import resolve_precision
    from bench.heads.probe import GridProbeTrainer

    policy = resolve_precision("bf16", "cpu")
    assert policy.heads == "bf16"
    assert GridProbeTrainer(ProbeConfig(), "cpu", precision=policy).matmul == torch.bfloat16
    assert GridProbeTrainer(ProbeConfig(), "cpu", precision=resolve_precision("fp32", "cpu")).matmul \
        == torch.float32
    torch.manual_seed(0)
    x, y = torch.randn(64, 32), torch.randint(0, 5, (64,))
    cfg = ProbeConfig(epochs=1)
    model = train_grid(x, y, 5, torch.tensor([1e-2]), torch.tensor([0.0]), cfg, {},
                       matmul=torch.bfloat16)
    batch = model.norm(x, train=False)
    rounded = model.heads.linear_gradients(batch, y)
    model.heads.matmul = torch.float32
    exact = model.heads.linear_gradients(batch, y)
    assert not torch.equal(exact[0], rounded[0])  # the GEMMs did run in bf16
    torch.testing.assert_close(rounded[0], exact[0], atol=2e-3, rtol=2e-2)
    _, feats, labels = _digit_features()
    small = ProbeConfig(epochs=5, eval_every=5, lrs=(1e-2,), weight_decays=(0.0,))
    full = fit_probe(feats, labels, 10, small)
    half = fit_probe(feats, labels, 10, small, precision=policy)
    assert abs(full.test["top1"] - half.test["top1"]) < 1.5
    # the search ran in bf16, the selected point's refit (one head) in float32: it equals the
    # fp32 trainer's refit of the same point
    from bench.protocol import ProbeData

    data, point = ProbeData(feats, labels, 10), {"lr": 1e-2, "weight_decay": 0.0, "epochs": 5}
    exact = GridProbeTrainer(small, "cpu", precision=resolve_precision("fp32", "cpu"))
    torch.testing.assert_close(GridProbeTrainer(small, "cpu", precision=policy).refit_predict(data, point),
                               exact.refit_predict(data, point), atol=0, rtol=0)


def test_halving_never_cuts_between_equal_scores_nor_before_a_quarter_of_the_epochs():
    """The grid is lr-major: cutting ties by grid index used to favour the first points."""
    from bench.heads.probe import _survivors

    assert _survivors([50, 70, 70, 70, 70, 20], 0) == [1, 2, 3, 4]  # 4 tied: all stay
    assert _survivors([10, 90, 30, 80], 0) == [1, 3]
    x, y = torch.randn(64, 5), torch.randint(0, 3, (64,))
    lrs = torch.tensor([1e-3, 1e-2, 1e-1, 1.0])
    wds = torch.zeros(4)
    kept = {}

    def tied(epoch):
        def at(model):
            kept[epoch] = list(model.points)
            return [1.0] * len(model.points)  # every point scores the same
        return at

    cfg = ProbeConfig(epochs=8, eval_every=1, batch_size=32, halving=True)
    train_grid(x, y, 3, lrs, wds, cfg, {e: tied(e) for e in range(1, 9)})
    assert all(points == [0, 1, 2, 3] for points in kept.values())  # nothing cut on a tie

    def ranked(epoch):
        def at(model):
            kept[epoch] = list(model.points)
            return [float(p) for p in model.points]  # the last grid point is best
        return at

    kept.clear()
    train_grid(x, y, 3, lrs, wds, cfg, {e: ranked(e) for e in range(1, 9)})
    assert kept[1] == kept[2] == [0, 1, 2, 3]  # no cut before epoch 8 / 4 = 2
    assert kept[3] == [2, 3] and kept[4] == [3]  # then halving, keeping the best


def test_halving_never_drops_a_point_within_validation_noise_of_the_best():
    """Binomial standard error of the best top-1 on n images: 100 * sqrt(p (1 - p) / n). On the
    100-class set the full grid's winner was one validation image behind the leader when halving
    cut it; a point that close must train on."""
    from bench.heads.probe import _survivors

    scores = [90.0, 89.9, 89.8, 89.7, 80.0, 70.0]
    se = 100 * math.sqrt(0.9 * 0.1 / 1000)  # 0.95 points on 1,000 images
    assert _survivors(scores, 1000) == [g for g, s in enumerate(scores) if s >= 90.0 - se]
    assert _survivors(scores, 1000) == [0, 1, 2, 3]  # the plain better half would be [0, 1, 2]
    assert _survivors(scores, 100_000) == [0, 1, 2]  # SE 0.09: the half rule decides
    assert _survivors([100.0, 100.0, 99.0, 98.0], 50) == [0, 1]  # p = 1: no noise margin
