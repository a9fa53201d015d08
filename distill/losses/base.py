"""The one signature every distillation loss shares.

loss(student_logits, student_feats, teacher_logits, teacher_feats) -> scalar tensor (already weighted).
Teacher tensors are detached inside each loss, so no gradient can reach the teacher.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nfdseg.errors import ConfigError

Features = dict[str, torch.Tensor]

# The one home of the default weights (distill.weight unset): build_loss resolves distill.weight against this once
# and hands the result to the loss; each loss's constructor takes the same value as its signature's default.
# For each loss, the best of a small sweep on the synthetic "tune" split, never on the reported "val" split.
# nfd's is for its default reading (norm squared, reduction element), chosen at two widths (the quick pair and
# ResNet-50 -> ResNet-18): benchmarks/results/distill_tune_cpu2.json. kd/cwd: the earlier sweep, same file.
DEFAULT_WEIGHTS = {"nfd": 10.0, "kd": 3.0, "cwd": 10.0, "none": 0.0}


class DistillLoss(nn.Module):
    name = "base"

    def forward(self, s_logits: torch.Tensor, s_feats: Features, t_logits: torch.Tensor, t_feats: Features) -> torch.Tensor:
        raise NotImplementedError


def resize_like(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Bilinear resize of x to ref's spatial size (no-op when they match)."""
    if x.shape[-2:] == ref.shape[-2:]:
        return x
    return F.interpolate(x, size=ref.shape[-2:], mode="bilinear", align_corners=False)


def pair_key(s_name: str, t_name: str) -> str:
    """The connector's name for a (student, teacher) feature pair: the plain name when both are the same."""
    return s_name if s_name == t_name else f"{s_name}_to_{t_name}"


def make_connectors(pairs, s_channels: dict[str, int], t_channels: dict[str, int]) -> nn.ModuleDict:
    """A 1x1 conv per (student, teacher) pair whose channel counts differ (training only, never exported).
    `pairs` holds (student name, teacher name) tuples; a plain string means the same name on both."""
    conns = nn.ModuleDict()
    for pair in pairs:
        s_name, t_name = (pair, pair) if isinstance(pair, str) else pair
        if s_name not in s_channels or t_name not in t_channels:
            shown = s_name if s_name == t_name else f"{s_name}:{t_name}"
            raise ConfigError(
                f"distillation layer '{shown}' is not a feature of both models",
                seen=f"student has {sorted(s_channels)}, teacher has {sorted(t_channels)}",
                fix="set distill.layers to student:teacher pairs (e.g. high:layer4), or plain names both models "
                    "return, or leave it empty for the default pairs of these model families",
            )
        if s_channels[s_name] != t_channels[t_name]:
            conns[pair_key(s_name, t_name)] = nn.Conv2d(s_channels[s_name], t_channels[t_name], 1, bias=False)
    return conns
