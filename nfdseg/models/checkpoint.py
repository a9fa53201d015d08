"""Saving and loading training state (last.pt) and the deliverable (best.pt + checkpoint.json)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nfdseg.artifacts import CHECKPOINT_MANIFEST
from nfdseg.errors import ArtifactError
from nfdseg.fsutil import write_bytes_atomic
from nfdseg.manifest import Manifest, read_manifest

CHECKPOINT_FORMAT = "nfdseg-checkpoint-v1"


def save_torch_atomic(obj: Any, path: Path) -> None:
    """torch.save, atomically. Serialised in memory first: saving straight to the temporary file would name
    the zip records after it, so identical weights would hash differently from run to run."""
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    write_bytes_atomic(path, buf.getvalue())


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_model_from_dir(ckpt_dir: str | Path, device: str | torch.device = "cpu"):
    """Load best.pt described by checkpoint.json in `ckpt_dir`. Returns (model in eval mode, manifest)."""
    from nfdseg.models import build_model

    ckpt_dir = Path(ckpt_dir)
    if ckpt_dir.is_file():
        ckpt_dir = ckpt_dir.parent
    manifest = read_manifest(ckpt_dir / CHECKPOINT_MANIFEST, expect_kind="checkpoint")
    try:
        blob = torch.load(ckpt_dir / manifest.artifact, map_location="cpu", weights_only=False)
    except Exception as e:
        raise ArtifactError(f"cannot read checkpoint {ckpt_dir / manifest.artifact}", seen=f"{type(e).__name__}: {e}",
                            fix="re-run `nfdseg distill` to produce it again") from None
    if not isinstance(blob, dict) or blob.get("format") != CHECKPOINT_FORMAT:
        raise ArtifactError(f"{ckpt_dir / manifest.artifact} is not an nfdseg checkpoint",
                            seen=f"format {blob.get('format') if isinstance(blob, dict) else type(blob).__name__}",
                            fix="pass a directory written by `nfdseg distill`")
    if blob["num_classes"] != manifest.num_classes:
        raise ArtifactError("checkpoint and manifest disagree on the class count",
                            seen=f"checkpoint {blob['num_classes']}, manifest {manifest.num_classes}")
    model = build_model(blob["arch"], blob["num_classes"])
    model.load_state_dict(blob["model"])
    return model.to(device).eval(), manifest


def manifest_of(ckpt_dir: str | Path) -> Manifest:
    return read_manifest(Path(ckpt_dir) / CHECKPOINT_MANIFEST, expect_kind="checkpoint")
