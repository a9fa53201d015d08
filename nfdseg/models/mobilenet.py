"""MobileNetV3-Large students: LR-ASPP and DeepLabV3 heads, built from torchvision without weights.

The backbone's parameter names are torchvision's (`backbone.<i>...`); the head is torchvision's `classifier`
(kept as `head.` in SegModel; `load_pretrained` maps `classifier.` to it). Features for distillation:
`low` (stride 8, 40 channels), `high` (stride 16, dilated, 960 channels) and, for DeepLabV3, `aspp` and
`head` (the 256-channel map before the 1x1 classifier).
"""

from __future__ import annotations

import torch
from torch import nn


def _stage_positions(features: nn.Sequential) -> tuple[int, int]:
    """Indices of the stride-8 block (low) and the last block (high), as torchvision's segmentation models pick them."""
    stages = [0] + [i for i, b in enumerate(features) if getattr(b, "_is_cn", False)] + [len(features) - 1]
    return stages[-4], stages[-1]


def build_mobilenetv3(head: str, num_classes: int) -> tuple[nn.Module, nn.Module, dict[str, int]]:
    """(backbone returning {'low', 'high'}, head module, feature channels) for head 'deeplabv3' or 'lraspp'."""
    if head == "lraspp":
        from torchvision.models.segmentation import lraspp_mobilenet_v3_large

        tv = lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=num_classes)
        return tv.backbone, tv.classifier, {"low": tv.classifier.low_classifier.in_channels,
                                            "high": tv.classifier.cbr[0].in_channels}
    from torchvision.models import mobilenet_v3_large
    from torchvision.models._utils import IntermediateLayerGetter
    from torchvision.models.segmentation.deeplabv3 import DeepLabHead

    # what torchvision's deeplabv3_mobilenet_v3_large builds (without its aux head), also returning `low`
    features = mobilenet_v3_large(weights=None, dilated=True).features
    low, high = _stage_positions(features)
    backbone = IntermediateLayerGetter(features, {str(low): "low", str(high): "high"})
    classifier = DeepLabHead(features[high].out_channels, num_classes)
    return backbone, classifier, {"low": features[low].out_channels, "high": features[high].out_channels,
                                  "aspp": 256, "head": 256}


def mobilenetv3_forward(head_kind: str, head: nn.Module, feats: dict[str, torch.Tensor]) -> torch.Tensor:
    """Logits at feature resolution; adds 'aspp' and 'head' to feats for the DeepLabV3 head."""
    if head_kind == "lraspp":
        return head(feats)
    a = head[0](feats["high"])
    h = head[3](head[2](head[1](a)))
    feats.update(aspp=a, head=h)
    return head[4](h)
