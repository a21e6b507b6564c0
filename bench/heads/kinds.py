"""The built-in head kinds, registered by ``bench.protocol``'s discovery (``KINDS``).

Each kind declares everything the engine asks of its head: its settings dataclass (whose fields
carry their ranges), its trainer, what it reads, its command-line options, the grid axes a
grid-edge hint widens, its memory plan and its state's cost (``bench.heads.memory``). Declared
here, apart from their trainers ("module:name" strings, imported when used), so that listing
heads and building the CLI imports no torch. A package adds its own the same way, in one file:
``bench.protocol.register_head`` or the entry-point group ``bench.heads``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bench.protocol import HeadKind, HeadOption
from bench.ranges import parse_integers, parse_numbers

EPOCHS = HeadOption("--epochs", "epochs", int,
                    "training epochs (default: the head's; linear/mlp 40, attention 28)")
LRS = HeadOption("--lrs", "lrs", parse_numbers, "learning-rate grid, e.g. 1e-3,1e-2")
WDS = HeadOption("--wds", "weight_decays", parse_numbers, "weight-decay grid, e.g. 0,1e-4,1e-2")
SHOTS = HeadOption("--shots", "shots", parse_integers,
                   "images per class, e.g. 1,5,10,25 (default 5): one result per k")
GRID = (EPOCHS, LRS, WDS)
GRID_AXES = {"lr": "lrs", "weight_decay": "weight_decays"}
PROBE = dict(options=GRID, axes=GRID_AXES, memory="bench.heads.probe:grid_memory",
             state="bench.heads.probe:grid_state", views=True, online=True)
# The paper's recipe (``bench.protocol.RECIPES``; Mukhopadhyay et al. 2023's finetune.py and
# scripts/*.sh: 28 epochs at batch 128, validation only at the end so nothing is selected)
PAPER = dict(epochs=28, batch_size=128, eval_every=28)
PAPER_LINEAR = {"paper": PAPER | dict(optimizer="sgd-step", standardise=False, lrs=(1e-2,),
                                      weight_decays=(0.0,), halving=False)}
PAPER_ATTENTION = {"paper": PAPER | dict(recipe="paper", lrs=(5e-2,), weight_decay=0.0)}
ATTENTION = dict(options=(EPOCHS, LRS), axes={"lr": "lrs"},
                 memory="bench.heads.attention:attention_memory",
                 state="bench.heads.attention:attention_state", views=True)


@dataclass(frozen=True)
class FewShotKind(HeadKind):
    """k shots per class: one result per (k, draw); the draw is the seed, five by default."""

    def variant(self, config: Any) -> str:
        return f"{config.shots}-shot"

    def expand(self, settings: dict[str, Any]) -> list[dict[str, Any]]:
        shots = settings.get("shots")
        if isinstance(shots, (list, tuple)):
            return [settings | {"shots": int(k)} for k in shots]
        return [settings]


@dataclass(frozen=True)
class DifFeedKind(HeadKind):
    """Trains the backbone's feedback modules (``Backbone.feedback_model``) with its head."""

    def check_backbone(self, backbone: Any, layers: list[str]) -> None:
        backbone.feedback_model(layers)  # a backbone without the wiring: its UsageError


KINDS = (
    HeadKind("linear", "standardised features, Linear; AdamW lr x wd x epochs grid, batched",
             "bench.heads.probe:ProbeConfig", "bench.heads.probe:GridProbeTrainer", "vectors",
             recipes=PAPER_LINEAR, **PROBE),
    HeadKind("bn-linear", "MAE's protocol: BatchNorm without affine, then Linear; batched grid",
             "bench.heads.probe:ProbeConfig", "bench.heads.probe:GridProbeTrainer", "vectors",
             family="linear", **PROBE),
    HeadKind("mlp", "standardised features, ReLU hidden layers; batched grid",
             "bench.heads.probe:ProbeConfig", "bench.heads.probe:GridProbeTrainer", "vectors",
             **PROBE),
    HeadKind("attention", "the paper's attention head on lightly pooled maps (map16)",
             "bench.heads.attention:HeadConfig", "bench.heads.attention:AttentionTrainer", "maps",
             default_pool="map16", recipes=PAPER_ATTENTION, **ATTENTION),
    HeadKind("difformer", "DifFormer: one attention head shared across timesteps, fused",
             "bench.heads.attention:HeadConfig", "bench.heads.attention:AttentionTrainer", "maps",
             family="attention", default_pool="map16", fuses_layers=True, **ATTENTION),
    # Its own leaderboard protocol: CLIP's L-BFGS probe and the AdamW grid give different numbers
    # for one feature set, and a `linear` cell must not switch protocol with whichever won on val.
    HeadKind("logreg", "CLIP's probe: L2 logistic regression by full-batch L-BFGS, C searched on "
             "val (7 decades, then bisection), all C of a round batched",
             "bench.heads.logreg:LogRegConfig", "bench.heads.logreg:LogRegTrainer", "vectors",
             axes={"C": "cs"}, memory="bench.heads.logreg:logreg_memory",
             state="bench.heads.logreg:logreg_state"),
    HeadKind("knn", "DINOv2's weighted kNN (cosine, exp(sim/T)); k selected on val, no training",
             "bench.heads.knn:KnnConfig", "bench.heads.knn:KnnTrainer", "vectors",
             axes={"k": "ks"}, memory="bench.heads.knn:knn_plan",
             state="bench.heads.knn:knn_state"),
    FewShotKind("few-shot", "linear probe on k shots per class (drawn by hash; the seed is the "
                "draw), validated on the rest of train; --shots 1,5: one result per k",
                "bench.heads.fewshot:FewShotConfig", "bench.heads.fewshot:FewShotTrainer",
                "vectors", options=(*GRID, SHOTS), axes=GRID_AXES,
                memory="bench.heads.fewshot:fewshot_memory", state="bench.heads.fewshot:fewshot_state",
                cell_settings=("shots",), default_seeds=5),
    DifFeedKind("diffeed", "DifFeed: feedback modules + linear head trained through the frozen "
                "ADM U-Net (a second pass); --online only, SGD + StepLR(7, 0.1), 28 epochs",
                "bench.heads.diffeed:DifFeedConfig", "bench.heads.diffeed:DifFeedTrainer",
                "vectors", options=(EPOCHS,), online=True, online_only=True,
                recipes={"paper": dict(epochs=28, batch_size=128, lr=1e-2)}),
)
