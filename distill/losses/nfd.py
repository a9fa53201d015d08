"""Normalized Feature Distillation (Liu, Yang, Chen 2022, arXiv 2207.05256).

For each distilled (student, teacher) feature pair: N(F) = (F - mean) / sqrt(var + eps), per sample and
per channel over HxW, no affine. The loss is an L2 distance between N(F_teacher) and
N(connector(F_student)), averaged over the batch, summed over pairs, times `weight`.

Two choices define the size of that distance (d = N(F_t) - N(F_s), C x H x W per sample):

- `norm`: the paper's "L2 distance" read as the squared norm sum(d^2) ("squared", the default: its gradient
  is proportional to the per-element error, like the MSE feature losses NFD is compared against) or as
  the plain norm sqrt(sum(d^2)) ("euclidean").
- `reduction`: what the distance is divided by. "element" (the default) divides by C*H*W, so
  squared -> mean(d^2) and euclidean -> sqrt(mean(d^2)) (the RMS of d). Normalized features have unit
  variance per channel, so this size does not depend on the channel count or the feature resolution:
  one weight holds from 64-channel quick models to 2048-channel ResNet-101 features.
  "spatial" is the paper's literal division by H*W. Its size grows with the width: squared gives C*mean(d^2)
  (32x larger on a 2048-channel layer4 than on a 64-channel one), euclidean gives sqrt(C/(H*W)) *
  RMS(d), which the public re-implementations use and which shrinks as the resolution grows.
"""

from __future__ import annotations

import torch

from nfdseg.errors import ConfigError

from ..config import NORMS, REDUCTIONS
from .base import DEFAULT_WEIGHTS, DistillLoss, Features, make_connectors, pair_key, resize_like



def normalize_feature(f: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Per-sample, per-channel standardisation over H and W (no affine parameters)."""
    f = f.float()
    mean = f.mean(dim=(2, 3), keepdim=True)
    var = f.var(dim=(2, 3), keepdim=True, unbiased=False)
    return (f - mean) / torch.sqrt(var + eps)


def nfd_distance(f_s: torch.Tensor, f_t: torch.Tensor, norm: str = "squared", reduction: str = "element",
                 eps: float = 1e-5) -> torch.Tensor:
    """NFD term for one pair of same-shaped N x C x H x W inputs, averaged over the batch.

    squared:   sum(d^2) / D          euclidean: sqrt(sum(d^2)) / sqrt(D)   (reduction "element", D = C*H*W)
    squared:   sum(d^2) / (H*W)      euclidean: sqrt(sum(d^2)) / (H*W)     (reduction "spatial")
    """
    diff = normalize_feature(f_t, eps) - normalize_feature(f_s, eps)
    c, h, w = diff.shape[-3:]
    per_sample = diff.pow(2).flatten(1).sum(1)
    euclid = norm == "euclidean"
    if euclid:
        per_sample = per_sample.clamp_min(1e-12).sqrt()
    if reduction == "element":
        denom = float(c * h * w) ** (0.5 if euclid else 1.0)
    else:
        denom = float(h * w)
    return (per_sample / denom).mean()


class NFDLoss(DistillLoss):
    """`layers`: feature pairs (student name, teacher name); a plain name means the same name on both."""

    name = "nfd"

    def __init__(self, layers, s_channels: dict[str, int], t_channels: dict[str, int],
                 weight: float = DEFAULT_WEIGHTS["nfd"], norm: str = "squared", reduction: str = "element"):
        super().__init__()
        if norm not in NORMS:
            raise ConfigError("distill.norm must be 'squared' or 'euclidean'", seen=repr(norm))
        if reduction not in REDUCTIONS:
            raise ConfigError("distill.reduction must be 'element' or 'spatial'", seen=repr(reduction))
        self.pairs = tuple((p, p) if isinstance(p, str) else (p[0], p[1]) for p in layers)
        self.layers = tuple(s if s == t else f"{s}:{t}" for s, t in self.pairs)
        self.weight = weight
        self.norm, self.reduction = norm, reduction
        self.connectors = make_connectors(self.pairs, s_channels, t_channels)

    def forward(self, s_logits: torch.Tensor, s_feats: Features, t_logits: torch.Tensor, t_feats: Features) -> torch.Tensor:
        total = s_logits.new_zeros((), dtype=torch.float32)
        for s_name, t_name in self.pairs:
            f_s = s_feats[s_name]
            key = pair_key(s_name, t_name)
            if key in self.connectors:
                f_s = self.connectors[key](f_s)
            f_t = t_feats[t_name].detach()
            f_s = resize_like(f_s, f_t)
            total = total + nfd_distance(f_s, f_t, self.norm, self.reduction)
        return self.weight * total
