"""DifFeed's head (Mukhopadhyay et al., arXiv 2311.17921): feedback modules and a linear head
trained together through the frozen backbone, so ``--online`` only.

The backbone provides the feedback wiring (``Backbone.feedback_model``: ADM's
``bench.backbones.adm.diffeed.DifFeed``); this head asks for it and refuses backbones without
one before anything is extracted. Epoch e trains on view e of each training image (its pixels by
``ViewTransform(augment, size, seed, view=e)``, its noise seeded by ``view_sample_ids(ids, e)``,
as every online head): x -> x_t at the layer's timestep -> the second pass's features (gradients
reach the feedback modules through the frozen U-Net) -> pooled to the cell's pool, flattened ->
Linear -> cross-entropy -> SGD over the feedback modules and the Linear. The recipe is the
authors' (soumik-kanad/diffssl cc2ac30, ``finetune.py``; ``scripts/feedback.sh`` lines 15-16: 28
epochs, lr 1e-2): SGD without momentum or weight decay, StepLR(7, 0.1) stepped per epoch.

Nothing is selected on val: the head trained on train for all its epochs gives the val number and
the test logits (no refit on train+val). Val and test images go through the trained model too,
in eval mode: one deterministic centre view (the backbone's transform) with view 0's noise ids.
Differences from the released scripts: feedback.sh trains the attention head on block 24 (this is
the linear head), at batch 4 on each of 4 GPUs (here 128 by default). No checkpoint/resume: a
stopped job trains again from the start.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.ranges import COUNT, FRACTION, POSITIVE, check_settings, setting

EVAL_BATCH = 64  # val/test images per forward


@dataclass
class DifFeedConfig:
    head: str = "diffeed"
    epochs: int = setting(28, COUNT)  # feedback.sh line 15
    batch_size: int = setting(128, COUNT)
    lr: float = setting(1e-2, POSITIVE)  # feedback.sh line 16
    lr_step: int = setting(7, COUNT)  # StepLR step_size, in epochs (finetune.py)
    lr_gamma: float = setting(0.1, FRACTION)  # StepLR gamma (finetune.py)
    seed: int = 0  # the feedback modules' and the Linear's initialisation, the epoch order

    def __post_init__(self) -> None:
        check_settings(self)


class LinearHead(nn.Module):
    """The cell's pool of one feature map, flattened, then Linear (the paper's linear head)."""

    def __init__(self, point: Any, pool: str, dim: int, num_classes: int):
        super().__init__()
        self.point, self.pool = point, pool
        self.linear = nn.Linear(dim, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        from bench.backbone import pool_features

        return self.linear(pool_features(features.float(), self.point, self.pool).flatten(1))


def train_step(model: Any, head: LinearHead, optimizer: torch.optim.Optimizer,
               images: torch.Tensor, sample_ids: torch.Tensor, labels: torch.Tensor,
               extraction: str = "fp32") -> float:
    """One SGD step of the feedback modules and the head on one minibatch; its loss."""
    from bench.precision import autocast

    with autocast(extraction, images.device):
        [features] = model(images, sample_ids).values()
    loss = F.cross_entropy(head(features), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


class DifFeedTrainer:
    """``bench.protocol.Trainer`` of the ``diffeed`` head: ``search`` trains (online, through
    ``attach``'s source) and scores val once; ``refit_predict`` gives the same model's test
    logits."""

    def __init__(self, config: DifFeedConfig, device: Any, precision: Any, progress: bool = False,
                 groups: Any = None):
        self.config, self.device, self.precision, self.progress = config, device, precision, progress
        self.source: Any = None  # bench.run.online.OnlineSource
        self.task: Any = None
        self.model: Any = None
        self.head: LinearHead | None = None

    def attach(self, source: Any, task: Any) -> None:
        """The train split's online source (backbone, request, augmentation) and the task whose
        val and test images are scored."""
        self.source, self.task = source, task

    def search(self, data: Any) -> list[dict[str, float]]:
        from bench.protocol import metrics

        self.fit(np.asarray(data.labels["train"]), data.num_classes)
        logits = self.logits(self.task.split("val"))
        return [{"lr": self.config.lr, "epochs": self.config.epochs,
                 **metrics(logits, data.labels["val"], data.num_classes)}]

    def refit_predict(self, data: Any, point: dict[str, float]) -> torch.Tensor:
        """No refit (the authors test the model trained on train): its test logits."""
        return self.logits(self.task.split("test"))

    def build(self, num_classes: int) -> tuple[Any, LinearHead]:
        """The feedback model and head, initialised from the seed."""
        src = self.source
        layer, pool = src.request
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed)
            model = src.backbone.feedback_model([layer]).to(self.device)
            model.eval()
            size = src.backbone.input_size
            with torch.no_grad():  # the head's width: one blank image
                [probe] = model(torch.zeros(1, 3, size, size, device=self.device)).values()
            point = src.backbone.feature_point(layer)
            from bench.backbone import pool_features

            dim = pool_features(probe.float(), point, pool).flatten(1).shape[1]
            head = LinearHead(point, pool, dim, num_classes).to(self.device)
        return model, head

    def fit(self, labels: np.ndarray, num_classes: int) -> None:
        from bench.backbone import view_sample_ids
        from bench.heads.streaming import epoch_order

        cfg, src = self.config, self.source
        model, head = self.build(num_classes)
        optimizer = torch.optim.SGD([*model.trainable_parameters(), *head.parameters()],
                                    lr=cfg.lr, momentum=0.0, weight_decay=0.0)
        schedule = torch.optim.lr_scheduler.StepLR(optimizer, cfg.lr_step, cfg.lr_gamma)
        targets = torch.from_numpy(labels.astype(np.int64))
        gen = torch.Generator().manual_seed(cfg.seed)
        for epoch in range(cfg.epochs):
            model.train()
            head.train()
            order = epoch_order(len(labels), gen)
            batches = [order[i:i + cfg.batch_size].tolist()
                       for i in range(0, len(order), cfg.batch_size)]
            for images, ids in src.views(epoch, batches):
                train_step(model, head, optimizer, images, view_sample_ids(ids, epoch),
                           targets[ids].to(self.device), src.extraction)
            schedule.step()
        self.model, self.head = model, head

    @torch.no_grad()
    def logits(self, split: Any) -> torch.Tensor:
        """(N, C) logits of ``split``'s centre views (view 0's noise), in the split's order."""
        from bench.precision import autocast

        model, head, src = self.model, self.head, self.source
        model.eval()
        head.eval()
        n = len(split)
        batches = [list(range(i, min(i + EVAL_BATCH, n))) for i in range(0, n, EVAL_BATCH)]
        out = []
        for images, ids in src.centre(split, batches):
            with autocast(src.extraction, self.device):
                [features] = model(images, ids).values()
            out.append(head(features).float().cpu())
        return torch.cat(out)
