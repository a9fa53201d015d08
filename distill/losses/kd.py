"""Logit knowledge distillation: pixel-wise KL(teacher || student) on temperature-softened logits, times T^2."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import DEFAULT_WEIGHTS, DistillLoss, Features, resize_like


def kd_kl(s_logits: torch.Tensor, t_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    t = resize_like(t_logits.detach().float(), s_logits)
    log_p_s = F.log_softmax(s_logits.float() / temperature, dim=1)
    p_t = F.softmax(t / temperature, dim=1)
    kl = (p_t * (torch.log(p_t.clamp_min(1e-12)) - log_p_s)).sum(1)  # per pixel
    return kl.mean() * temperature**2


class KDLoss(DistillLoss):
    name = "kd"

    def __init__(self, weight: float = DEFAULT_WEIGHTS["kd"], temperature: float = 1.0, **_: object):
        super().__init__()
        self.weight = weight
        self.temperature = temperature

    def forward(self, s_logits: torch.Tensor, s_feats: Features, t_logits: torch.Tensor, t_feats: Features) -> torch.Tensor:
        return self.weight * kd_kl(s_logits, t_logits, self.temperature)
