"""Channel-wise distillation (Shu et al. 2021): each channel's spatial softmax, KL(teacher || student).

Applied to the logits map, as the CWD paper does for segmentation. Summed over channels and
averaged over samples and channels, times tau^2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import DEFAULT_WEIGHTS, DistillLoss, Features, resize_like


def cwd_kl(s_map: torch.Tensor, t_map: torch.Tensor, tau: float = 4.0) -> torch.Tensor:
    t_map = resize_like(t_map.detach().float(), s_map)
    n, c = s_map.shape[:2]
    s = s_map.float().flatten(2) / tau
    t = t_map.flatten(2) / tau
    p_t = F.softmax(t, dim=2)
    kl = (p_t * (F.log_softmax(t, dim=2) - F.log_softmax(s, dim=2))).sum(2)  # n x c
    return kl.sum() / (n * c) * tau**2


class CWDLoss(DistillLoss):
    name = "cwd"

    def __init__(self, weight: float = DEFAULT_WEIGHTS["cwd"], tau: float = 4.0, **_: object):
        super().__init__()
        self.weight = weight
        self.tau = tau

    def forward(self, s_logits: torch.Tensor, s_feats: Features, t_logits: torch.Tensor, t_feats: Features) -> torch.Tensor:
        return self.weight * cwd_kl(s_logits, t_logits, self.tau)
