"""DeepLabV3 head (ASPP) that exposes its pre-classifier features for distillation."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _cbr(cin: int, cout: int, k: int = 1, dilation: int = 1) -> nn.Sequential:
    pad = 0 if k == 1 else dilation
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=pad, dilation=dilation, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1x1, three dilated 3x3, and image pooling, then a 1x1 projection."""

    def __init__(self, cin: int, cout: int, rates: tuple[int, ...] = (12, 24, 36)):
        super().__init__()
        self.branches = nn.ModuleList([_cbr(cin, cout)] + [_cbr(cin, cout, 3, r) for r in rates])
        # BatchNorm on a 1x1 pooled map fails with batch 1 in training; GroupNorm-free plain conv+ReLU is safe.
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, cout, 1), nn.ReLU(inplace=True))
        self.project = nn.Sequential(_cbr(cout * (len(rates) + 2), cout), nn.Dropout(0.1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [b(x) for b in self.branches]
        pooled = self.pool(x)
        outs.append(pooled.expand(-1, -1, x.shape[2], x.shape[3]))
        return self.project(torch.cat(outs, 1))


class DeepLabV3Head(nn.Module):
    """ASPP -> 3x3 conv-BN-ReLU ('head' feature) -> 1x1 classifier."""

    def __init__(self, cin: int, num_classes: int, width: int = 256, rates: tuple[int, ...] = (12, 24, 36)):
        super().__init__()
        self.aspp = ASPP(cin, width, rates)
        self.conv = _cbr(width, width, 3)
        self.classifier = nn.Conv2d(width, num_classes, 1)
        self.channels = {"aspp": width, "head": width}

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        a = self.aspp(x)
        h = self.conv(a)
        return self.classifier(h), {"aspp": a, "head": h}


def upsample_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
