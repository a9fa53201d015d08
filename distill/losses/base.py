"""The one signature every distillation loss shares.

loss(student_logits, student_feats, teacher_logits, teacher_feats) -> scalar tensor (already weighted).
Teacher tensors are detached inside each loss, so no gradient can reach the teacher.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

Features = dict[str, torch.Tensor]


class DistillLoss(nn.Module):
    name = "base"

    def forward(self, s_logits: torch.Tensor, s_feats: Features, t_logits: torch.Tensor, t_feats: Features) -> torch.Tensor:
        raise NotImplementedError


def resize_like(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Bilinear resize of x to ref's spatial size (no-op when they match)."""
    if x.shape[-2:] == ref.shape[-2:]:
        return x
    return F.interpolate(x, size=ref.shape[-2:], mode="bilinear", align_corners=False)


def make_connectors(layers: tuple[str, ...], s_channels: dict[str, int], t_channels: dict[str, int]) -> nn.ModuleDict:
    """A 1x1 conv per layer whose student and teacher channel counts differ (training only, never exported)."""
    from nfdseg.errors import ConfigError

    conns = nn.ModuleDict()
    for layer in layers:
        if layer not in s_channels or layer not in t_channels:
            raise ConfigError(
                f"distillation layer '{layer}' is not a feature of both models",
                seen=f"student has {sorted(s_channels)}, teacher has {sorted(t_channels)}",
                fix="set distill.layers to names both models return",
            )
        if s_channels[layer] != t_channels[layer]:
            conns[layer] = nn.Conv2d(s_channels[layer], t_channels[layer], 1, bias=False)
    return conns
