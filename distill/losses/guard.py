"""The runaway-loss guard of the student stage: stop before an exploding distillation writes a checkpoint.

A distillation term far larger than the cross-entropy at the start (an NFD reading whose size grows with the
channel count, say) drives the student's features and logits to huge values within a few iterations, and the
checkpoint, its FP16 export and everything after inherit them. The guard logs the distillation/CE ratio at the
first iteration. During the first `guard_iters` iterations it stops when the *judged* ratio (the ratio of the
sums since the start, divided by the loss's weight where that weight is above 1) exceeds `max_ratio`; at every
iteration it stops when the logits are non-finite or exceed `max_abs_logit`. The error names the loss, the
ratio and the fix.

Why divide by a weight above 1: a large weight is a choice (the default NFD weight, 10, makes the bounded
element-reduced term ~40x the cross-entropy of 8 classes and ~110x that of 2 classes, by design), while a
runaway is a term both far above the cross-entropy and out of proportion to its weight: NFD with the paper's
spatial reduction at 2048 teacher channels and weight 0.1 starts near 800x (at 64 channels, 25x: fine).
Under torchrun every rank decides on the sums over all ranks, so they stop together instead of leaving the
others waiting in the next all-reduce.
"""

from __future__ import annotations

import logging
import math

import torch

from nfdseg.errors import ConfigError

log = logging.getLogger(__name__)


class RunawayGuard:
    """`cfg` is the DistillConfig; `loss` the built distillation loss (for its name, weight and reading)."""

    def __init__(self, cfg, loss, start_iter: int = 0):
        self.cfg, self.start = cfg, start_iter
        self.name = getattr(loss, "name", cfg.loss)
        self.weight = float(getattr(loss, "weight", 0.0) or 0.0)
        reading = f", norm {loss.norm}, reduction {loss.reduction}" if self.name == "nfd" else ""
        self.what = f"{self.name} (weight {self.weight:g}{reading})"
        self.first_ratio: float | None = None
        self.device: torch.device | None = None
        self.d_sum = self.ce_sum = 0.0

    def _fix(self, ratio: float | None, size_out_of_proportion: bool = False) -> str:
        other = (" use distill.reduction=element (the default: its size does not grow with the channel count) or"
                 if self.name == "nfd" and self.cfg.reduction != "element" else
                 " use the other NFD reading (distill.norm=euclidean) or" if self.name == "nfd" else "")
        if size_out_of_proportion:
            target = (f" (about {self.weight * 10 / ratio:.3g} gives a ratio near 10)"
                      if ratio and ratio > 0 and self.weight else "")
            return (f"{other.strip()} lower distill.weight{target}; raise distill.max_ratio only if this ratio is "
                    f"intended").strip()
        target = f" (about {self.weight * 10 / ratio:.3g} gives a ratio near 10)" if ratio and ratio > 0 and self.weight else ""
        return f"{other.strip()} lower distill.weight{target}".strip()

    def _all_ranks(self, d_v: float, ce_v: float, peak: float) -> tuple[float, float, float]:
        """Sums of the losses and the largest |logit| over every rank (this rank's alone without torchrun)."""
        dist = torch.distributed
        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return d_v, ce_v, peak
        device = self.device if self.device is not None else torch.device("cpu")
        sums = torch.tensor([d_v, ce_v], dtype=torch.float64, device=device)
        top = torch.tensor([peak if math.isfinite(peak) else math.inf], dtype=torch.float64, device=device)
        dist.all_reduce(sums)
        dist.all_reduce(top, op=dist.ReduceOp.MAX)
        return float(sums[0]), float(sums[1]), float(top[0])

    def check(self, it: int, ce: torch.Tensor, loss_d: torch.Tensor, logits: torch.Tensor) -> float:
        """Call once per micro-batch before backward; returns the distill/CE ratio. Raises ConfigError on a runaway."""
        self.device = logits.device
        peak = float(logits.detach().abs().max()) if self.cfg.max_abs_logit else 0.0
        d_v, ce_v, peak = self._all_ranks(float(loss_d.detach()), float(ce.detach()), peak)
        ratio = d_v / max(ce_v, 1e-12)
        per_weight = 1.0 / max(self.weight, 1.0)
        # the bound applies to the ratio of the sums so far: exactly the first ratio at the start (where a
        # runaway shows), without stopping a sound run on one batch whose cross-entropy happens to be small
        self.d_sum, self.ce_sum = self.d_sum + d_v, self.ce_sum + ce_v
        running = self.d_sum / max(self.ce_sum, 1e-12)
        if self.first_ratio is None:
            self.first_ratio = ratio
            log.info("student stage starts: distillation %s = %.4g, cross-entropy %.4g, ratio %.3g (judged %.3g; "
                     "limit %g)", self.what, d_v, ce_v, ratio, ratio * per_weight, self.cfg.max_ratio)
        if (self.cfg.max_ratio and it < self.start + self.cfg.guard_iters
                and (running * per_weight > self.cfg.max_ratio or not math.isfinite(running))):
            raise ConfigError(
                f"the distillation loss {self.what} is {running:.3g}x the cross-entropy at student iteration {it}, "
                f"judged {running * per_weight:.3g}x (divided by the weight where it is above 1; limit "
                f"distill.max_ratio={self.cfg.max_ratio:g}): "
                f"training would run away, so no checkpoint was written",
                seen=f"distillation {d_v:.4g}, cross-entropy {ce_v:.4g} at this iteration; "
                f"ratio of the sums since the start {running:.3g}", fix=self._fix(running, True))
        if self.cfg.max_abs_logit and (not math.isfinite(peak) or peak > self.cfg.max_abs_logit):
            raise ConfigError(
                f"the student's logits {'are not finite' if not math.isfinite(peak) else f'reached |x| = {peak:.3g}'}"
                f" at iteration {it} (limit distill.max_abs_logit={self.cfg.max_abs_logit:g}) while training "
                f"with the distillation loss {self.what}; no checkpoint was written",
                seen=f"distillation/cross-entropy ratio {ratio:.3g} (first iteration: {self.first_ratio:.3g})",
                fix=self._fix(ratio))
        return ratio

    def check_weights(self, model: torch.nn.Module, it: int) -> None:
        """Before a checkpoint is saved: every parameter and buffer must be finite."""
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if t.is_floating_point() and not torch.isfinite(t).all():
                raise ConfigError(f"the student's {name} is not finite at iteration {it} while training with the "
                                  f"distillation loss {self.what}; no checkpoint was written",
                                  seen=f"first-iteration distillation/cross-entropy ratio {self.first_ratio}",
                                  fix=self._fix(self.first_ratio))
