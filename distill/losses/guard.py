"""The runaway-loss guard of the student stage: stop before an exploding distillation writes a checkpoint.

A distillation term far larger than the cross-entropy at the start (an NFD weight chosen for another
width, say) drives the student's features and logits to huge values within a few iterations, and the
checkpoint, its FP16 export and everything after inherit them. The guard logs the distillation/CE ratio at
the first iteration, stops when it (as the ratio of the sums since the start) exceeds `max_ratio` during the
first `guard_iters` iterations, and stops whenever the logits are non-finite or exceed `max_abs_logit`, with an
error naming the loss, the ratio and the fix.
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
        self.d_sum = self.ce_sum = 0.0

    def _fix(self, ratio: float | None) -> str:
        target = ""
        if ratio and ratio > 0 and self.weight:
            target = f" (about {self.weight * 10 / ratio:.3g} gives a ratio near 10)"
        other = (" or use distill.reduction=element (the default: its size does not grow with the channel count)"
                 if self.name == "nfd" and self.cfg.reduction != "element" else
                 " or use the other NFD reading (distill.norm=euclidean)" if self.name == "nfd" else "")
        return f"lower distill.weight{target}{other}; raise distill.max_ratio only if this ratio is intended"

    def check(self, it: int, ce: torch.Tensor, loss_d: torch.Tensor, logits: torch.Tensor) -> float:
        """Call once per micro-batch before backward; returns the distill/CE ratio. Raises ConfigError on a runaway."""
        ce_v, d_v = float(ce.detach()), float(loss_d.detach())
        ratio = d_v / max(ce_v, 1e-12)
        # the bound applies to the ratio of the sums so far: exactly the first ratio at the start (where a
        # runaway shows), without stopping a sound run on one batch whose cross-entropy happens to be small
        self.d_sum, self.ce_sum = self.d_sum + d_v, self.ce_sum + ce_v
        running = self.d_sum / max(self.ce_sum, 1e-12)
        if self.first_ratio is None:
            self.first_ratio = ratio
            log.info("student stage starts: distillation %s = %.4g, cross-entropy %.4g, ratio %.3g (limit %g)",
                     self.what, d_v, ce_v, ratio, self.cfg.max_ratio)
        if (self.cfg.max_ratio and it < self.start + self.cfg.guard_iters
                and (running > self.cfg.max_ratio or not math.isfinite(running))):
            raise ConfigError(
                f"the distillation loss {self.what} is {running:.3g}x the cross-entropy at student iteration {it} "
                f"(limit distill.max_ratio={self.cfg.max_ratio:g}): training would run away, so no checkpoint "
                f"was written", seen=f"distillation {d_v:.4g}, cross-entropy {ce_v:.4g} at this iteration; "
                f"ratio of the sums since the start {running:.3g}", fix=self._fix(running))
        if self.cfg.max_abs_logit:
            peak = float(logits.detach().abs().max())
            if not math.isfinite(peak) or peak > self.cfg.max_abs_logit:
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
