"""torchvision ResNet-50, at any width: the supervised reference row and SimCLR."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench.backbones._shared import FrozenBackbone, frozen
from bench.backbone import MAP, VECTOR, FeaturePoint
from bench.features.weights import resolve

STAGES = ("layer1", "layer2", "layer3", "layer4")


def resnet50_net(width: float = 1.0) -> nn.Module:
    """torchvision's ResNet-50 with every channel count scaled by ``width``, classifier removed.

    SimCLR's 2x/4x widen all layers (stem and block outputs too), unlike torchvision's
    ``wide_resnet50_2``, which widens only the bottlenecks; fractional widths give test-sized nets.
    """
    from torchvision.models import resnet50
    from torchvision.models.resnet import Bottleneck

    def c(n: int) -> int:
        return max(1, int(n * width))

    with torch.device("meta"):  # a free skeleton: every layer with weights is rebuilt below
        net = resnet50()
    net.inplanes = c(64)
    net.conv1 = nn.Conv2d(3, c(64), kernel_size=7, stride=2, padding=3, bias=False)
    net.bn1 = nn.BatchNorm2d(c(64))
    for i, (name, blocks) in enumerate(zip(STAGES, (3, 4, 6, 3))):
        setattr(net, name, net._make_layer(Bottleneck, c(64 * 2**i), blocks, stride=min(i + 1, 2)))
    net.fc = nn.Identity()
    return net


class ResNetBackbone(FrozenBackbone):
    """A torchvision ResNet run stage by stage, stopping after the deepest requested stage."""

    def __init__(
        self, net: nn.Module, config: dict[str, Any], transform: Callable, size: int, digest: str
    ):
        super().__init__(config, transform, size, ("avgpool",), "none", digest)
        self.net = frozen(net)

    def feature_points(self) -> list[FeaturePoint]:
        stride = {"layer1": 4, "layer2": 8, "layer3": 16, "layer4": 32}
        dim = self.net.layer4[-1].conv3.out_channels
        return [
            *(FeaturePoint(s, MAP, f"output of stage {s} (stride {stride[s]})") for s in STAGES),
            FeaturePoint(
                "avgpool",
                VECTOR,
                f"global average pool of layer4 ({dim}-d): the "
                "standard linear-probe feature (= the model's forward without fc)",
            ),
        ]

    def forward_features(
        self, x: torch.Tensor, layers: Sequence[str], sample_ids: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        net = self.net
        deepest = 4 if "avgpool" in layers else max(STAGES.index(layer) + 1 for layer in layers)
        x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        out = {}
        for stage in STAGES[:deepest]:
            x = getattr(net, stage)(x)
            if stage in layers:
                out[stage] = x
        if "avgpool" in layers:
            out["avgpool"] = torch.flatten(net.avgpool(x), 1)
        return out


def torchvision_file(url: str) -> Path:
    """A torchvision weights file: torch hub's cache ($TORCH_HOME) if it is there, else bench's."""
    import torch.hub

    cached = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
    return cached if cached.is_file() else resolve(url)
