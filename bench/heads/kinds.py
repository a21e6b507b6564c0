"""The built-in head kinds, registered by ``bench.protocol``'s discovery (``KINDS``).

Declared here, apart from their trainers, so that listing heads (CLI choices) imports no torch.
A package adds its own the same way, or through the entry-point group ``bench.heads``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bench.protocol import HeadKind

_GRID = {"--epochs": "epochs", "--lrs": "lrs", "--wds": "weight_decays"}
_NET = {"--epochs": "epochs", "--lrs": "lrs"}


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


KINDS = (
    HeadKind("linear", "standardised features, Linear; AdamW lr x wd x epochs grid, batched",
             "bench.heads.probe:ProbeConfig", "bench.heads.probe:GridProbeTrainer", "vectors", flags=_GRID),
    HeadKind("bn-linear", "MAE's protocol: BatchNorm without affine, then Linear; batched grid",
             "bench.heads.probe:ProbeConfig", "bench.heads.probe:GridProbeTrainer", "vectors",
             family="linear", flags=_GRID),
    HeadKind("mlp", "standardised features, ReLU hidden layers; batched grid",
             "bench.heads.probe:ProbeConfig", "bench.heads.probe:GridProbeTrainer", "vectors", flags=_GRID),
    HeadKind("attention", "the paper's attention head on lightly pooled maps (map16)",
             "bench.heads.attention:HeadConfig", "bench.heads.attention:AttentionTrainer", "maps", default_pool="map16",
             flags=_NET),
    HeadKind("difformer", "DifFormer: one attention head shared across timesteps, fused",
             "bench.heads.attention:HeadConfig", "bench.heads.attention:AttentionTrainer", "maps", family="attention",
             default_pool="map16", fuses_layers=True, flags=_NET),
    # Its own leaderboard protocol: CLIP's L-BFGS probe and the AdamW grid give different numbers
    # for one feature set, and a `linear` cell must not switch protocol with whichever won on val.
    HeadKind("logreg", "CLIP's probe: L2 logistic regression by full-batch L-BFGS, C searched on "
             "val (7 decades, then bisection), all C of a round batched",
             "bench.heads.logreg:LogRegConfig", "bench.heads.logreg:LogRegTrainer", "vectors"),
    HeadKind("knn", "DINOv2's weighted kNN (cosine, exp(sim/T)); k selected on val, no training",
             "bench.heads.knn:KnnConfig", "bench.heads.knn:KnnTrainer", "vectors"),
    FewShotKind("few-shot", "linear probe on k shots per class (drawn by hash; the seed is the "
                "draw), validated on the rest of train; --shots 1,5: one result per k",
                "bench.heads.fewshot:FewShotConfig", "bench.heads.fewshot:FewShotTrainer", "vectors",
                flags=_GRID | {"--shots": "shots"}, default_seeds=5),
)
