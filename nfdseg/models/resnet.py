"""A ResNet backbone with dilation for both block types and configurable widths.

Parameter names match torchvision's ResNet, so torchvision (or any compatible) weights load
into the standard-width variants. Returns the four stage outputs by name; no hooks.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn


def _conv3x3(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, width: int, stride: int = 1, dilation: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv3x3(cin, width, stride, dilation)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = _conv3x3(width, width, 1, dilation)
        self.bn2 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int = 1, dilation: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = _conv3x3(width, width, stride, dilation)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, width * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(width * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNetBackbone(nn.Module):
    """ResNet at output stride 8 (layers 3 and 4 dilated 2 and 4) or 16/32, as DeepLabV3 uses it."""

    def __init__(self, block: str, depths: tuple[int, ...], widths: tuple[int, ...], output_stride: int = 8,
                 stem_width: int | None = None):
        super().__init__()
        blk = {"basic": BasicBlock, "bottleneck": Bottleneck}[block]
        stem = stem_width or widths[0]
        self.conv1 = nn.Conv2d(3, stem, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        dilate = {8: (False, True, True), 16: (False, False, True), 32: (False, False, False)}[output_stride]
        self._cin, self._dilation = stem, 1
        self.layer1 = self._make(blk, widths[0], depths[0], 1, False)
        self.layer2 = self._make(blk, widths[1], depths[1], 2, dilate[0])
        self.layer3 = self._make(blk, widths[2], depths[2], 2, dilate[1])
        self.layer4 = self._make(blk, widths[3], depths[3], 2, dilate[2])
        self.channels = {f"layer{i + 1}": w * blk.expansion for i, w in enumerate(widths)}
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make(self, blk, width: int, depth: int, stride: int, dilate: bool) -> nn.Sequential:
        prev_dilation = self._dilation
        if dilate:
            self._dilation *= stride
            stride = 1
        downsample = None
        if stride != 1 or self._cin != width * blk.expansion:
            downsample = nn.Sequential(nn.Conv2d(self._cin, width * blk.expansion, 1, stride, bias=False),
                                       nn.BatchNorm2d(width * blk.expansion))
        layers = [blk(self._cin, width, stride, prev_dilation, downsample)]
        self._cin = width * blk.expansion
        layers += [blk(self._cin, width, 1, self._dilation) for _ in range(1, depth)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        out = OrderedDict()
        for name in ("layer1", "layer2", "layer3", "layer4"):
            x = getattr(self, name)(x)
            out[name] = x
        return out
