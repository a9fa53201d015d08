"""One policy for a training stage's folder, which `nfdseg distill` and `nfdseg pipeline` both call.

A stage's inputs (data, its model and training settings, for a student the distillation settings and the
teacher's sha256) hash to a run key, recorded in last.pt and checkpoint.json. Given a folder:

- a finished run of the same key is kept (nothing is trained), unless `force`;
- a last.pt of the same key is resumed where it stopped;
- a run of other inputs is stale: `on_stale="restart"` deletes it and trains from the start, `"refuse"` stops
  with an error that says how to restart (the CLI's default, so no run is discarded without being asked);
- `force` deletes the folder and trains from the start.

The run key itself (what a stage depends on) is distill/runkey.py's, which the trainer records too; this module
imports the trainer and the trainer never imports it.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from nfdseg.artifacts import CHECKPOINT_MANIFEST, RESUME_STATE
from nfdseg.errors import ConfigError
from nfdseg.manifest import Manifest
from nfdseg.models.checkpoint import manifest_of

from .runkey import stage_complete, stage_run_key, stale_error
from .trainer import train_stage

log = logging.getLogger(__name__)
STALE_POLICIES = ("refuse", "restart")


@dataclass(frozen=True)
class StageOutcome:
    """manifest: the finished run's (None on the non-main ranks of torchrun); state: "up to date" (kept),
    "resumed" or "trained"."""

    manifest: Manifest | None
    state: str


def stage_key(cfg, stage: str, teacher_dir: str | Path | None) -> str:
    """The run key of `stage` under `cfg` (a student's includes its teacher's sha256)."""
    if stage == "teacher":
        return stage_run_key(cfg, stage, "")
    if teacher_dir is None or not (Path(teacher_dir) / CHECKPOINT_MANIFEST).is_file():
        raise ConfigError("the student stage needs a trained teacher",
                          seen=f"no {CHECKPOINT_MANIFEST} in {teacher_dir}" if teacher_dir else "no teacher given",
                          fix="train the teacher first (nfdseg distill --stage teacher), or pass --teacher DIR")
    return stage_run_key(cfg, stage, manifest_of(teacher_dir).sha256)


def saved_run_key(out: Path) -> str | None:
    """The run key of the resumable state in `out` (None when there is none)."""
    last = out / RESUME_STATE
    if not last.is_file():
        return None
    return torch.load(last, map_location="cpu", weights_only=False).get("run_key", "")


def run_stage(cfg, stage: str, out_dir: str | Path, teacher_dir: str | Path | None = None,
              on_stale: Literal[STALE_POLICIES] = "refuse", force: bool = False, progress: bool = True) -> StageOutcome:
    """Keep, resume, restart or refuse the stage in out_dir as the module docstring says; train when needed."""
    if on_stale not in STALE_POLICIES:
        raise ConfigError(f"unknown stale-run policy '{on_stale}'", fix=f"one of {', '.join(STALE_POLICIES)}")
    out = Path(out_dir)
    key = stage_key(cfg, stage, teacher_dir)
    if force and out.exists():
        log.info("%s: --force, starting %s over", stage, out)
        shutil.rmtree(out)
    if stage_complete(out, key):
        return StageOutcome(manifest_of(out), "up to date")
    saved = saved_run_key(out)
    if saved is not None and saved != key:
        if on_stale == "refuse":
            raise stale_error(out, stage)
        log.info("%s: the inputs changed since %s was trained; starting it over", stage, out)
        shutil.rmtree(out)
        saved = None
    m = train_stage(cfg, stage, out, teacher_dir=teacher_dir, progress=progress)
    return StageOutcome(m, "resumed" if saved is not None else "trained")
