"""DifFeed: features of a second U-Net pass that feeds decoder features back into the encoder.

From Mukhopadhyay et al., "Do text-free diffusion models learn discriminative visual
representations?" (arXiv 2311.17921, ECCV 2024), as wired in the authors' code
(github.com/soumik-kanad/diffssl, commit cc2ac30; paths and lines below refer to it):

- First pass: the frozen U-Net on ``x_t`` at timestep ``t``, under ``torch.no_grad``
  (``ssl_diff/ssl_model_feedback_fusion.py`` lines 189-196, ``UNetModel.get_all_features``).
- Feedback module per decoder block ``b`` of ``--feedback_b_list 21 24 27 30 33 36``
  (``scripts/feedback.sh`` line 32): ``--feedback_arch C_B_R`` (line 31) builds a 1x1 convolution
  without bias from C(b) to C(38 - b) channels, ``BatchNorm2d`` with PyTorch's defaults and a
  ReLU (``make_layers``, lines 133-163), initialised by PyTorch's defaults (no zero init).
- Second pass: the same ``x_t`` and ``t`` (lines 182, 214-219); the output of encoder block
  ``38 - b`` (1-based over input blocks, middle block, output blocks: 18 + 1 + 18 = 37 in the
  256x256 model) gets ``feedback_b(first-pass output of b)`` added, resized bilinearly
  (``align_corners=False``) when the sizes differ, before it reaches the next block and the skip
  connection (``guided_diffusion/unet.py`` lines 948-955). The pairs 21->17, 24->14, 27->11,
  30->8, 33->5, 36->2 join blocks of equal shape, so no resizing happens there. In general the
  mirror of decoder block b is the encoder block whose output b takes as its skip connection:
  ``num_blocks + 1 - b``.
- The head reads block 24 of the second pass only (``--first_fw_b_list -1 --second_fw_b_list
  24``, feedback.sh lines 23-24; ``ssl_diff/attention_fusion.py`` lines 35-37).
- Only the head and the feedback modules are optimised (``finetune.py`` lines 36-59): the
  U-Net's weights never change, though gradients flow through its second pass.

The U-Net stays in eval mode whatever ``train()`` is called with (frozen, so dropout is off);
the feedback BatchNorms follow the module's mode: batch statistics while training, running
statistics in eval, as the authors' ``model.train()`` / ``model.eval()`` (finetune.py lines 85,
202) do. Precision is the caller's: run under bf16 autocast like the backbone.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bench.errors import UsageError

FEEDBACK_BLOCKS = (21, 24, 27, 30, 33, 36)  # scripts/feedback.sh line 32
FEEDBACK_MODULE = "conv1x1 (no bias) -> BatchNorm2d (eps 1e-5, momentum 0.1) -> ReLU"
_CANONICAL = re.compile(r"block(\d+)@t(\d+)")


def mirror(block: int, num_blocks: int) -> int:
    """The encoder block whose output decoder block ``block`` takes as its skip: 38 - b in ADM-256."""
    return num_blocks + 1 - block


class FeedbackModule(nn.Sequential):
    """Decoder features -> what is added to the mirrored encoder block (``--feedback_arch C_B_R``)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
        )


class DifFeed(nn.Module):
    """Trainable feedback modules around a frozen ADM backbone; returns second-pass features.

    ``layers`` are the backbone's layer names (``block24@t150``, ``24`` at the backbone's default
    timestep, ...), all at one timestep: the one both passes run at. ``feedback_blocks`` are the
    decoder blocks fed back, each to its mirror. The backbone is a submodule (``.to()`` moves
    it) but frozen: only ``trainable_parameters()`` train, and ``trainable_state_dict()`` is
    what a checkpoint needs besides the backbone's own weights.
    """

    def __init__(
        self,
        backbone: Any,  # an ADMBackbone (not imported: it builds its DifFeed, feedback_model)
        layers: Sequence[str] = ("block24",),
        feedback_blocks: Sequence[int] = FEEDBACK_BLOCKS,
    ):
        super().__init__()
        if not callable(getattr(backbone, "unet_features", None)):  # ADMBackbone's, duck-typed
            raise UsageError(
                f"DifFeed needs an ADM backbone (a diffusion/adm preset), not {type(backbone).__name__}"
            )
        if backbone.noise_draws != 1:
            raise UsageError(
                "DifFeed trains on one noise draw per pass (a new draw= each epoch); create the "
                f"backbone with noise_draws=1, not {backbone.noise_draws}"
            )
        self.backbone = backbone.requires_grad_(False).eval()
        unet = backbone.unet
        self.layers = tuple(dict.fromkeys(backbone.canonical_layer(layer) for layer in layers))
        if not self.layers:
            raise UsageError("DifFeed needs at least one layer, e.g. block24@t150")
        parsed = [_CANONICAL.fullmatch(layer) for layer in self.layers]
        self.blocks = tuple(int(m.group(1)) for m in parsed if m)
        timesteps = sorted({int(m.group(2)) for m in parsed if m})
        if len(timesteps) != 1:
            raise UsageError(
                f"DifFeed layers {list(self.layers)} must share one timestep (both passes run at "
                "it); train one DifFeed per timestep"
            )
        self.t = timesteps[0]
        first_decoder = len(unet.input_blocks) + 2
        sources = sorted({int(b) for b in feedback_blocks})
        bad = [b for b in sources if not first_decoder <= b <= unet.num_blocks]
        if not sources or bad:
            raise UsageError(
                f"feedback blocks {bad or '(none)'}: give decoder blocks "
                f"{first_decoder}..{unet.num_blocks}, e.g. 21 24 27 30 33 36"
            )
        self.pairs = tuple((b, mirror(b, unet.num_blocks)) for b in sources)
        unused = [target for _, target in self.pairs if target > max(self.blocks)]
        if unused:
            raise UsageError(
                f"feedback into blocks {unused} comes after the deepest layer asked for "
                f"(block {max(self.blocks)}): it would never train; drop those feedback blocks"
            )
        channels = [c for c, _ in unet.block_shapes]
        self.feedback = nn.ModuleDict({
            str(source): FeedbackModule(channels[source - 1], channels[target - 1])
            for source, target in self.pairs
        })

    @property
    def config(self) -> dict[str, Any]:
        """What besides the backbone (its ``config`` and weights) and the training changes the
        features: for a result identity."""
        return {
            "method": "difeed",
            "layers": list(self.layers),
            "t": self.t,
            "feedback": [[source, target] for source, target in self.pairs],
            "feedback_module": FEEDBACK_MODULE,
            "first_pass": "no_grad, same x_t and t as the second pass",
        }

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The feedback modules' parameters: what an optimiser gets besides the head's."""
        return list(self.feedback.parameters())

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Feedback weights and BatchNorm running statistics: what a checkpoint must hold."""
        return self.feedback.state_dict()

    def load_trainable_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        self.feedback.load_state_dict(state)

    def train(self, mode: bool = True) -> DifFeed:
        """Feedback BatchNorms follow ``mode``; the frozen U-Net stays in eval mode."""
        super().train(mode)
        self.backbone.eval()
        return self

    def forward(
        self,
        x0: torch.Tensor,
        sample_ids: torch.Tensor | Sequence[int] | None = None,
        draw: int = 0,
    ) -> dict[str, torch.Tensor]:
        """Second-pass outputs (B, C, H, W) keyed by ``self.layers``, for clean images ``x0``
        in [-1, 1] noised at ``self.t`` with the backbone's seeded noise of (image, ``draw``):
        pass a new ``draw`` each epoch for the fresh noise the authors draw on every pass."""
        outputs = self.block_features(self.noised(x0, sample_ids, draw), self.t)
        return {layer: outputs[block] for layer, block in zip(self.layers, self.blocks)}

    def noised(
        self,
        x0: torch.Tensor,
        sample_ids: torch.Tensor | Sequence[int] | None = None,
        draw: int = 0,
    ) -> torch.Tensor:
        """``x_t`` at ``self.t`` exactly as the backbone's extraction noises image ``sample_id``
        (in draw ``draw``); without ``sample_ids`` image i of the batch counts as i."""
        if sample_ids is None:
            ids: Sequence[int] = range(x0.shape[0])
        else:  # one transfer for a tensor on the GPU, not one per image
            ids = sample_ids.tolist() if isinstance(sample_ids, torch.Tensor) else list(sample_ids)
        eps = self.backbone.noise(ids, draw, tuple(x0.shape[1:]))
        t = torch.full((x0.shape[0],), self.t, dtype=torch.long)
        return self.backbone.schedule.q_sample(x0.float(), t, eps)

    def block_features(self, x_t: torch.Tensor, t: torch.Tensor | int) -> dict[int, torch.Tensor]:
        """{block: second-pass output} for ``self.blocks``, given noised ``x_t`` at ``t`` (one
        timestep per image, or one for all). Gradients reach the feedback modules only."""
        x_t, t, y = self.backbone.unet_inputs(x_t, t)
        unet = self.backbone.unet
        first = self.backbone.unet_features(x_t, t, [s for s, _ in self.pairs], y)  # no_grad
        added = {}
        for source, target in self.pairs:
            feedback = self.feedback[str(source)](first[source])
            ds = unet.block_shapes[target - 1][1]
            size = (x_t.shape[-2] // ds, x_t.shape[-1] // ds)
            if feedback.shape[-2:] != size:
                feedback = F.interpolate(feedback, size=size, mode="bilinear", align_corners=False)
            added[target] = feedback
        return unet.features(x_t, t, self.blocks, y, added=added)
