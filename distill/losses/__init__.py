"""Distillation losses by name: nfd, kd, cwd, none. `build_loss` makes one from a DistillConfig."""

from __future__ import annotations

from nfdseg.errors import ConfigError

from .base import DistillLoss
from .cwd import CWDLoss
from .kd import KDLoss
from .nfd import NFDLoss
from .none import NoDistillLoss

LOSSES = ("nfd", "kd", "cwd", "none")
# Weights used when distill.weight is not set: for each loss, the best of a small sweep on the synthetic
# "tune" split (benchmarks/results/distill_tune_cpu2.json), never on the reported "val" split.
DEFAULT_WEIGHTS = {"nfd": 0.1, "kd": 3.0, "cwd": 10.0, "none": 0.0}


def build_loss(cfg, s_channels: dict[str, int], t_channels: dict[str, int]) -> DistillLoss:
    """cfg is a DistillConfig; the channel dicts are the models' `feature_channels`."""
    weight = cfg.weight if cfg.weight is not None else DEFAULT_WEIGHTS.get(cfg.loss, 0.0)
    if cfg.loss == "nfd":
        return NFDLoss(cfg.layers, s_channels, t_channels, weight=weight, norm=cfg.norm)
    if cfg.loss == "kd":
        return KDLoss(weight=weight, temperature=cfg.temperature)
    if cfg.loss == "cwd":
        return CWDLoss(weight=weight, tau=cfg.cwd_tau)
    if cfg.loss == "none":
        return NoDistillLoss()
    raise ConfigError(f"unknown distillation loss '{cfg.loss}'", fix=f"choose one of {', '.join(LOSSES)}")


__all__ = ["DEFAULT_WEIGHTS", "DistillLoss", "NFDLoss", "KDLoss", "CWDLoss", "NoDistillLoss", "build_loss", "LOSSES"]
