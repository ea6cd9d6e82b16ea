"""CIFAR-style ResNets as the MEST reference builds them (BasicBlock, 1x1 conv + BN shortcuts).

ResNet-32 uses the reference's widths 32-64-128; ResNet-20 the classic 16-32-64; ``tiny`` is a
two-stage, one-block-per-stage model for tests. Init follows the reference: Kaiming normal
(fan_out, ReLU) for convolutions, N(0, 0.01) for the classifier, BN weight 1 and bias 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
import torch.nn.functional as F


@dataclass(frozen=True)
class ResNetSpec:
    """Shape of a CIFAR ResNet: blocks per stage and the width of each stage."""

    blocks_per_stage: tuple[int, ...]
    widths: tuple[int, ...]


RESNET_SPECS: dict[str, ResNetSpec] = {
    "resnet32": ResNetSpec(blocks_per_stage=(5, 5, 5), widths=(32, 64, 128)),
    "resnet20": ResNetSpec(blocks_per_stage=(3, 3, 3), widths=(16, 32, 64)),
    "tiny": ResNetSpec(blocks_per_stage=(1, 1), widths=(8, 12)),
}


class BasicBlock(nn.Module):
    """Two 3x3 conv + BN layers with a residual connection (1x1 conv + BN when the shape changes)."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """A 3x3 stem conv, stages of :class:`BasicBlock` (stride 2 from the second stage on), pool, linear."""

    def __init__(self, spec: ResNetSpec, num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, spec.widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(spec.widths[0])
        in_planes = spec.widths[0]
        for stage, (blocks, planes) in enumerate(zip(spec.blocks_per_stage, spec.widths), start=1):
            layers = []
            for block in range(blocks):
                stride = 2 if stage > 1 and block == 0 else 1
                layers.append(BasicBlock(in_planes, planes, stride))
                in_planes = planes
            self.add_module(f"layer{stage}", nn.Sequential(*layers))
        self.num_stages = len(spec.widths)
        self.linear = nn.Linear(in_planes, num_classes)
        _reference_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        for stage in range(1, self.num_stages + 1):
            out = getattr(self, f"layer{stage}")(out)
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


def _reference_init(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0.0, 0.01)
            nn.init.zeros_(module.bias)
