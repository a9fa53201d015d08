"""The baseline: no distillation term (the student trains on cross-entropy alone)."""

from __future__ import annotations

import torch

from .base import DistillLoss, Features


class NoDistillLoss(DistillLoss):
    name = "none"

    def __init__(self, **_: object):
        super().__init__()

    def forward(self, s_logits: torch.Tensor, s_feats: Features, t_logits: torch.Tensor, t_feats: Features) -> torch.Tensor:
        return s_logits.new_zeros((), dtype=torch.float32)
