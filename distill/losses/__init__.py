"""Distillation losses by name: nfd, kd, cwd, none. `build_loss` makes one from a DistillConfig."""

from __future__ import annotations

from nfdseg.errors import ConfigError

from ..config import LOSSES
from .base import DistillLoss
from .cwd import CWDLoss
from .kd import KDLoss
from .nfd import NFDLoss
from .none import NoDistillLoss

# The one home of the default weights (distill.weight unset; the loss constructors read them too): for each
# loss, the best of a small sweep on the synthetic "tune" split, never on the reported "val" split.
# nfd's is for its default reading (norm squared, reduction element), chosen at two widths (the quick pair and
# ResNet-50 -> ResNet-18): benchmarks/results/distill_tune_cpu2.json. kd/cwd: the earlier sweep, same file.
DEFAULT_WEIGHTS = {"nfd": 10.0, "kd": 3.0, "cwd": 10.0, "none": 0.0}


def parse_pairs(layers) -> tuple[tuple[str, str], ...]:
    """distill.layers entries -> (student name, teacher name) pairs: 'high:layer4' or 'head' (same on both)."""
    pairs = []
    for entry in layers:
        s, _, t = str(entry).partition(":")
        pairs.append((s.strip(), (t or s).strip()))
    return tuple(pairs)


def build_loss(cfg, s_channels: dict[str, int], t_channels: dict[str, int], student_family: str = "",
               teacher_family: str = "") -> DistillLoss:
    """cfg is a DistillConfig; the channel dicts are the models' `feature_channels`, the families their
    `family` (used for nfd's default pairs when distill.layers is empty)."""
    weight = cfg.weight if cfg.weight is not None else DEFAULT_WEIGHTS.get(cfg.loss, 0.0)
    if cfg.loss == "nfd":
        if cfg.layers:
            pairs = parse_pairs(cfg.layers)
        else:
            from nfdseg.models import default_pairs

            pairs = default_pairs(teacher_family, student_family)
        return NFDLoss(pairs, s_channels, t_channels, weight=weight, norm=cfg.norm, reduction=cfg.reduction)
    if cfg.loss == "kd":
        return KDLoss(weight=weight, temperature=cfg.temperature)
    if cfg.loss == "cwd":
        return CWDLoss(weight=weight, tau=cfg.cwd_tau)
    if cfg.loss == "none":
        return NoDistillLoss()
    raise ConfigError(f"unknown distillation loss '{cfg.loss}'", fix=f"choose one of {', '.join(LOSSES)}")


__all__ = ["DEFAULT_WEIGHTS", "DistillLoss", "NFDLoss", "KDLoss", "CWDLoss", "NoDistillLoss", "build_loss", "LOSSES",
           "parse_pairs"]
