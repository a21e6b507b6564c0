"""The batched grid probe's fast paths: hand-written linear gradients and successive halving."""

from __future__ import annotations

import torch

from bench.probe import ProbeConfig, fit_probe, train_grid

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
    full = fit_probe(feats, labels, 10, ProbeConfig(**small))
    halved = fit_probe(feats, labels, 10, ProbeConfig(halving=True, **small))
    assert [sum(r["epochs"] == e for r in halved.grid) for e in (1, 2, 3)] == [6, 3, 2]
    key = lambda r: (r["lr"], r["weight_decay"], r["epochs"])  # noqa: E731
    scores = {key(r): r["top1"] for r in full.grid}
    for record in halved.grid:  # survivors train exactly as in the full grid
        assert abs(record["top1"] - scores[key(record)]) < 0.5
    first = sorted((r for r in full.grid if r["epochs"] == 1), key=lambda r: -r["top1"])
    kept = {(r["lr"], r["weight_decay"]) for r in halved.grid if r["epochs"] == 2}
    assert kept == {(r["lr"], r["weight_decay"]) for r in first[:3]} or \
        first[2]["top1"] == first[3]["top1"]  # a tie at the cut goes to the lower grid index
    # halving is a head setting, so it is in the resolved protocol and the result's identity
    from dataclasses import asdict

    from bench.protocol import head_kind

    assert asdict(head_kind("linear").make_config({"halving": True}, 0))["halving"] is True
