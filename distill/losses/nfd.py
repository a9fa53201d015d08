"""Normalized Feature Distillation (Liu, Yang, Chen 2022, arXiv 2207.05256).

For each distilled layer: N(F) = (F - mean) / sqrt(var + eps), per sample and per channel over HxW,
no affine. The loss is the L2 distance between N(F_teacher) and N(connector(F_student)), divided
by H*W, averaged over the batch, summed over layers, times `weight`.

"L2 distance" is read as the squared norm by default (`norm="squared"`): its gradient is
proportional to the per-element error, like the MSE feature losses NFD is compared against, and
its size does not depend on how far apart the features are. `norm="euclidean"` gives the plain
norm (square root of the sum), offered for completeness.
"""

from __future__ import annotations

import torch

from .base import DistillLoss, Features, make_connectors, resize_like


def normalize_feature(f: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Per-sample, per-channel standardisation over H and W (no affine parameters)."""
    f = f.float()
    mean = f.mean(dim=(2, 3), keepdim=True)
    var = f.var(dim=(2, 3), keepdim=True, unbiased=False)
    return (f - mean) / torch.sqrt(var + eps)


def nfd_distance(f_s: torch.Tensor, f_t: torch.Tensor, norm: str = "squared", eps: float = 1e-5) -> torch.Tensor:
    """NFD term for one layer and same-shaped inputs: batch mean of ||N(f_t) - N(f_s)||_2^(2|1) / (H*W)."""
    diff = normalize_feature(f_t, eps) - normalize_feature(f_s, eps)
    h, w = diff.shape[-2:]
    per_sample = diff.pow(2).flatten(1).sum(1)
    if norm == "euclidean":
        per_sample = per_sample.clamp_min(1e-12).sqrt()
    return (per_sample / (h * w)).mean()


class NFDLoss(DistillLoss):
    name = "nfd"

    def __init__(self, layers: tuple[str, ...], s_channels: dict[str, int], t_channels: dict[str, int],
                 weight: float = 0.01, norm: str = "squared"):
        super().__init__()
        if norm not in ("squared", "euclidean"):
            from nfdseg.errors import ConfigError

            raise ConfigError("distill.norm must be 'squared' or 'euclidean'", seen=repr(norm))
        self.layers, self.weight, self.norm = tuple(layers), weight, norm
        self.connectors = make_connectors(self.layers, s_channels, t_channels)

    def forward(self, s_logits: torch.Tensor, s_feats: Features, t_logits: torch.Tensor, t_feats: Features) -> torch.Tensor:
        total = s_logits.new_zeros((), dtype=torch.float32)
        for layer in self.layers:
            f_s = s_feats[layer]
            if layer in self.connectors:
                f_s = self.connectors[layer](f_s)
            f_t = t_feats[layer].detach()
            f_s = resize_like(f_s, f_t)
            total = total + nfd_distance(f_s, f_t, self.norm)
        return self.weight * total
