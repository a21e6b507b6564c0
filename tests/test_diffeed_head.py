"""The ``diffeed`` head (issue 30, item 4): DifFeed's feedback modules and a linear head trained
online through the frozen tiny ADM; a step equals a hand-written one, a run logs a result and is
reused, and it is refused without --online or on a backbone without feedback wiring."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import bench
from bench.heads.diffeed import LinearHead, train_step

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = dict(backbone="diffusion-tiny", task="digits", layers=["block24@t150"], pools=["2"],
            task_args={"limit": 40})


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BENCH_WEIGHTS", str(tmp_path_factory.mktemp("weights")))
        return bench.create_backbone("diffusion-tiny", t=150)


def test_a_training_step_is_the_hand_written_one(tiny):
    """Same feedback modules, same Linear, same images and view-seeded noise: the head's step
    and one written out (x_t, second pass, pool, Linear, cross-entropy, p -= lr * grad) leave
    the same parameters; the U-Net's weights do not move."""
    from bench.backbone import view_sample_ids

    torch.manual_seed(0)
    model = tiny.feedback_model(["block24@t150"])
    point = tiny.feature_point("block24@t150")
    head = LinearHead(point, "2", 4 * tiny.unet.block_shapes[23][0], 10)
    theirs, their_head = copy.deepcopy(model), copy.deepcopy(head)
    unet_before = {k: v.clone() for k, v in tiny.unet.state_dict().items()}
    initial = [p.detach().clone() for p in [*model.feedback.parameters(), *head.parameters()]]
    x0 = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    y = torch.tensor([0, 3, 3, 7])
    ids = view_sample_ids(torch.tensor([5, 1, 9, 2]), 3)
    lr = 0.5
    model.train()
    head.train()
    optimizer = torch.optim.SGD([*model.trainable_parameters(), *head.parameters()], lr=lr,
                                momentum=0.0, weight_decay=0.0)
    train_step(model, head, optimizer, x0, ids, y)

    theirs.train()
    eps = tiny.noise(ids.tolist(), 0, (3, 64, 64))
    x_t = tiny.schedule.q_sample(x0, torch.full((4,), 150), eps)
    features = theirs.block_features(x_t, 150)[24]
    logits = their_head.linear(F.adaptive_avg_pool2d(features, 2).flatten(1))
    F.cross_entropy(logits, y).backward()
    params = [*theirs.feedback.parameters(), *their_head.parameters()]
    with torch.no_grad():
        for p in params:
            p -= lr * p.grad
    ours = [*model.feedback.parameters(), *head.parameters()]
    assert len(ours) == len(params) == 3 * 6 + 2
    for a, b in zip(ours, params):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for (name, a), (_, b) in zip(model.feedback.named_buffers(), theirs.feedback.named_buffers()):
        torch.testing.assert_close(a.float(), b.float(), rtol=1e-5, atol=1e-6, msg=name)
    assert all(not torch.equal(a, b) for a, b in zip(ours, initial))  # every parameter moved
    for key, value in tiny.unet.state_dict().items():
        assert torch.equal(value, unet_before[key]), key
    assert all(p.grad is None for p in tiny.unet.parameters())


def test_a_tiny_diffeed_run_logs_a_result_and_is_reused(tmp_path, monkeypatch):
    from bench.cli import main

    monkeypatch.setenv("BENCH_WEIGHTS", str(tmp_path / "weights"))
    argv = ["run", "--backbone", "diffusion-tiny", "--task", "digits", "--task-arg", "limit=40",
            "--layer", "block24@t150", "--pool", "2", "--head", "diffeed", "--online",
            "--epochs", "2", "--probe-arg", "batch_size=16", "--probe-arg", "lr=0.05",
            "--workers", "0", "--no-progress", "--cache-dir", str(tmp_path / "cache")]
    assert main(argv) == 0
    from bench.api import run
    from bench.run.spec import RunOptions, RunSpec

    options = RunOptions(workers=0, progress=False, cache_dir=str(tmp_path / "cache"))
    spec = RunSpec(**TINY, head="diffeed", online=True,
                   head_args={"epochs": 2, "batch_size": 16, "lr": 0.05})
    [record] = run(spec, options)
    assert record.reused
    assert record.best == {"lr": 0.05, "epochs": 2}  # nothing selected: the one point
    assert record.metrics["test_top1"] >= 10.0  # chance or better, ten classes


@pytest.mark.parametrize("flags, message", [
    (["--backbone", "diffusion-tiny", "--layer", "block24@t150"],
     "head diffeed trains through the frozen backbone: add --online"),
    (["--backbone", "pixels", "--backbone-arg", "size=4", "--online"],
     "has no feedback (DifFeed) wiring"),
])
def test_diffeed_is_refused_before_any_work(tmp_path, monkeypatch, capsys, flags, message):
    from bench.cli import main

    monkeypatch.setenv("BENCH_WEIGHTS", str(tmp_path / "weights"))
    cache = tmp_path / "cache"
    assert main(["run", "--task", "digits", "--head", "diffeed", "--workers", "0",
                 "--no-progress", "--cache-dir", str(cache), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not cache.exists() or not any(cache.rglob("*.npy"))  # nothing extracted


def test_the_paper_recipe_and_ranges():
    """--recipe paper is the authors' feedback.sh settings (28 epochs, lr 1e-2, batch 128, SGD
    with StepLR(7, 0.1)); settings outside their ranges are refused."""
    from dataclasses import replace

    from bench.errors import UsageError
    from bench.run.spec import RunSpec, head_config

    spec = RunSpec("diffusion-tiny", "digits", head="diffeed", online=True, recipe="paper")
    cfg = head_config(spec)
    assert (cfg.epochs, cfg.batch_size, cfg.lr, cfg.lr_step, cfg.lr_gamma) == (28, 128, 1e-2, 7, 0.1)
    for bad in ({"lr_gamma": 2.0}, {"batch_size": 0}, {"epochs": 0}):
        with pytest.raises(UsageError, match="out of range"):
            head_config(replace(spec, recipe="bench", head_args=bad))
