"""The supervised term of both stages: cross-entropy, optionally class-weighted and with online hard example
mining (OHEM).

OHEM (Shrivastava et al. 2016; the pixel form of PSPNet/CIRKD): of the labelled pixels of a batch, only those whose
predicted probability for their true class is at most `ohem_thresh` count, and at least `ohem_min_kept` of the
hardest are kept (the threshold rises to the min_kept-th smallest probability), so easy road and sky pixels stop
drowning the rare classes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SegCrossEntropy(nn.Module):
    """cross_entropy(logits NxCxHxW, target NxHxW int64) with `weight` (C floats or None), the ignore index, and
    OHEM when 0 < ohem_thresh < 1. Returns the mean over the counted pixels (weighted mean with class weights)."""

    def __init__(self, ignore_index: int, weight: torch.Tensor | None = None, ohem_thresh: float = 0.0,
                 ohem_min_kept: int = 0):
        super().__init__()
        self.ignore_index, self.ohem_thresh, self.ohem_min_kept = ignore_index, float(ohem_thresh), int(ohem_min_kept)
        self.register_buffer("weight", None if weight is None else torch.as_tensor(weight, dtype=torch.float32))

    @property
    def ohem(self) -> bool:
        return 0.0 < self.ohem_thresh < 1.0

    def hard_pixels(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Bool mask NxHxW of the labelled pixels OHEM keeps."""
        with torch.no_grad():
            valid = target != self.ignore_index
            safe = target.masked_fill(~valid, 0)
            p = torch.softmax(logits.float(), 1).gather(1, safe.unsqueeze(1)).squeeze(1)
            p = p.masked_fill(~valid, float("inf"))
            thresh = torch.tensor(self.ohem_thresh, device=logits.device)
            n_valid = int(valid.sum())
            if self.ohem_min_kept > 0 and n_valid > 0:
                kth = p.flatten().kthvalue(min(self.ohem_min_kept, n_valid)).values
                thresh = torch.maximum(thresh, kth)
            return valid & (p <= thresh)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if not bool((target != self.ignore_index).any()):
            return logits.sum() * 0.0  # a crop of ignored pixels only: no gradient, not a NaN
        if self.ohem:
            keep = self.hard_pixels(logits, target)
            if not bool(keep.any()):
                return logits.sum() * 0.0  # nothing hard left in this batch
            target = target.masked_fill(~keep, self.ignore_index)
        return F.cross_entropy(logits, target, weight=self.weight, ignore_index=self.ignore_index)
