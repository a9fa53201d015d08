"""What a training stage's result depends on, hashed to its run key: the one policy the trainer records and
distill/stage.py decides by.

A stage's inputs are the data, its own model and training settings, and for a student the distillation
settings (the loss and the fields that loss reads, losses.LOSS_FIELDS) and the teacher's sha256. Their hash,
the run key, is written into last.pt and checkpoint.json; equal keys mean the stage would produce the same run.

Both distill/trainer.py (which records the key and refuses to resume a foreign last.pt) and distill/stage.py
(which keeps, resumes, restarts or refuses a folder, and calls the trainer) import this module; it imports
neither, so the two never import each other in a circle.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from nfdseg.artifacts import CHECKPOINT_MANIFEST
from nfdseg.config import to_dict
from nfdseg.errors import ArtifactError
from nfdseg.fsutil import sha256_json
from nfdseg.models import resolved_pretrained

from .config import RunConfig, adds_logits_kd, identity_dict
from .losses import LOSS_FIELDS


def distill_identity(d) -> dict[str, Any]:
    """The distillation settings that shape a student: its loss and the fields that loss reads, plus logits KD
    (logits_kd_weight, temperature) where logits_kd_weight > 0 adds it to nfd or cwd. So nfd's settings
    do not retrain a kd, cwd or baseline ('none') student, and the guard's thresholds retrain none."""
    out = {"loss": d.loss} | {k: to_dict(getattr(d, k)) for k in LOSS_FIELDS[d.loss]}
    if adds_logits_kd(d):  # the trainer adds logits KD on top of nfd and cwd only
        out |= {"logits_kd_weight": d.logits_kd_weight, "temperature": d.temperature}
    return out


def stage_inputs(cfg: RunConfig, stage: str, teacher_sha: str = "") -> dict[str, Any]:
    """What a stage's result depends on, and nothing else. Teacher: the data and its own stage config. Student:
    the data, its stage config, the distillation config and the teacher's weights (sha256). So a student setting,
    another loss or a re-export never changes the teacher's identity."""
    d = identity_dict(cfg)
    for sc in (d["teacher"], d["student"]):  # how often to log and save changes nothing the stage produces
        for key in ("log_every", "ckpt_every"):
            sc["train"].pop(key, None)
        if sc["model"]["pretrained"] == "torchvision_cached":  # what it loads here: the weights may appear later
            loads = resolved_pretrained(sc["model"]["arch"], "torchvision_cached") or "random"
            sc["model"]["pretrained"] = f"torchvision_cached -> {loads}"
    if stage == "teacher":
        return {"stage": "teacher", "data": d["data"], "teacher": d["teacher"]}
    return {"stage": stage, "data": d["data"], "student": d["student"], "distill": distill_identity(cfg.distill),
            "teacher_sha256": teacher_sha}


def stage_run_key(cfg: RunConfig, stage: str, teacher_sha: str = "") -> str:
    """The hash of stage_inputs: equal keys mean the stage would produce the same run."""
    return sha256_json(stage_inputs(cfg, stage, teacher_sha))


def stage_complete(out_dir: str | Path, run_key: str) -> bool:
    """True when out_dir holds a finished run (checkpoint.json) of exactly this run key."""
    path = Path(out_dir) / CHECKPOINT_MANIFEST
    if not path.is_file():
        return False
    try:
        return json.loads(path.read_text()).get("config", {}).get("run_key") == run_key
    except (OSError, ValueError):
        return False


def stale_error(out: Path, stage: str) -> ArtifactError:
    """The error for a folder that holds a run of other inputs (the trainer's resume and the stage both raise it)."""
    return ArtifactError(f"{out} holds a {stage} run with other inputs (its data, {stage} settings"
                         + (", distillation settings or teacher)" if stage != "teacher" else ")"),
                         fix="pass --restart to rerun the stages whose inputs changed (the others are kept), "
                             "or use a new --out directory")


def saved_config_text(cfg: RunConfig, stage: str) -> str:
    """The config.yaml beside a stage: the fully resolved run config with `base: none`, so that it loads on its own
    (`nfdseg distill --config <this file>` reproduces the run) after the run folder moves to another machine and the
    files it was built on are gone; what it was built on stays as a comment, which the loader does not read."""
    built_on = " ".join(str(cfg.base).splitlines())  # a comment holds one line
    return (f"# {stage} stage: the resolved run config, complete in itself (base: none)\n"
            f"# built on: {built_on}\n"
            + yaml.safe_dump({"base": "none", **{k: v for k, v in cfg.to_dict().items() if k != "base"}},
                             sort_keys=False))
