"""Distillation losses by name: nfd, kd, cwd, none. `build_loss` makes one from a DistillConfig."""

from __future__ import annotations

from nfdseg.errors import ConfigError
from nfdseg.models import default_pairs

from ..config import LOSSES
from .base import DEFAULT_WEIGHTS, DistillLoss
from .cwd import CWDLoss
from .kd import KDLoss
from .nfd import NFDLoss
from .none import NoDistillLoss

# The DistillConfig fields each loss reads: build_loss hands a loss these and no others, so this table is also what
# a student's run key holds of the distillation settings (distill/runkey.py). The runaway guard's thresholds
# (max_ratio, guard_iters, max_abs_logit) are in none of them: they can only stop a run, never change a finished
# student.
LOSS_FIELDS = {"nfd": ("weight", "layers", "norm", "reduction"), "kd": ("weight", "temperature"),
               "cwd": ("weight", "cwd_tau"), "none": ()}


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
    if cfg.loss not in LOSS_FIELDS:
        raise ConfigError(f"unknown distillation loss '{cfg.loss}'", fix=f"choose one of {', '.join(LOSSES)}")
    read = {k: getattr(cfg, k) for k in LOSS_FIELDS[cfg.loss]}  # the loss sees only the fields its key holds
    if "weight" in read and read["weight"] is None:  # distill.weight unset: the loss's default, resolved here once
        read["weight"] = DEFAULT_WEIGHTS[cfg.loss]
    if cfg.loss == "nfd":
        pairs = parse_pairs(read["layers"]) if read["layers"] else default_pairs(teacher_family, student_family)
        return NFDLoss(pairs, s_channels, t_channels, weight=read["weight"], norm=read["norm"],
                       reduction=read["reduction"])
    if cfg.loss == "kd":
        return KDLoss(weight=read["weight"], temperature=read["temperature"])
    if cfg.loss == "cwd":
        return CWDLoss(weight=read["weight"], tau=read["cwd_tau"])
    return NoDistillLoss()


__all__ = ["DEFAULT_WEIGHTS", "LOSS_FIELDS", "DistillLoss", "NFDLoss", "KDLoss", "CWDLoss", "NoDistillLoss",
           "build_loss", "LOSSES", "parse_pairs"]
