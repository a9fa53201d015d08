"""One policy for the export folder, which `nfdseg export` and `nfdseg pipeline` both call.

An export's inputs are the checkpoint (sha256 of best.pt) and the export settings; their hash is recorded in
export_summary.json. Given a folder:

- an export of the same key is kept (nothing is rebuilt), unless `force`;
- otherwise the folder is emptied and exported again, but only when everything in it is something an export
  writes (an earlier or interrupted export); a folder that holds anything else is refused, so pointing --out at
  the wrong directory never deletes a user's files.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from nfdseg.artifacts import CHECKPOINT, ENGINE_LOG_SUFFIX, ENGINE_SUFFIX, EXPORT_SUMMARY, PARITY_REPORT, TIMING_CACHE
from nfdseg.errors import ArtifactError
from nfdseg.fsutil import sha256_file, sha256_json, write_json_atomic

from .parity import format_report

log = logging.getLogger(__name__)
# What an export writes into its folder (model*.onnx and their model*.json manifests, engines with their .json
# and build .log, the timing cache, parity.json, export_summary.json, atomic-write leftovers).
EXPORT_PATTERNS = ("model*.onnx", "model*.json", "*" + ENGINE_SUFFIX, "*.json", "*" + ENGINE_LOG_SUFFIX, TIMING_CACHE,
                   PARITY_REPORT, EXPORT_SUMMARY, ".*.tmp*", "*.tmp")


@dataclass(frozen=True)
class ExportOutcome:
    """summary: the export's record (export_summary.json, with "parity_passed"); state: "up to date" or
    "exported"; parity_text: the parity table of this run ("" when kept)."""

    summary: dict[str, Any]
    state: str
    parity_text: str = ""


def export_key(ckpt_dir: str | Path, cfg) -> str:
    return sha256_json({"student": sha256_file(Path(ckpt_dir) / CHECKPOINT), "export": repr(cfg)})


def check_export_dir(out: Path) -> None:
    """Refuse (ArtifactError) an --out that is a file or holds anything an export does not write."""
    if not out.exists():
        return
    if not out.is_dir():
        raise ArtifactError(f"the export folder {out} is a file", fix="choose another --out directory")
    foreign = sorted(p.name for p in out.iterdir() if not any(fnmatch(p.name, pat) for pat in EXPORT_PATTERNS)
                     or p.is_dir())
    if foreign:
        raise ArtifactError(f"{out} holds files an export does not write, so it is not emptied for this export",
                            seen=", ".join(foreign[:8]), fix="choose an empty or new --out directory")


def build_then_move(out: Path, build) -> Any:
    """The one check-then-build-then-move of an export: `build(folder)` writes into a temporary folder beside
    `out`; only when it returns is the folder moved onto `out` (an earlier export there is replaced in two
    renames). An error or Ctrl-C removes the temporary folder and leaves `out` as it was: nothing half-made is
    ever under the export's name."""
    check_export_dir(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
    try:
        if (out / TIMING_CACHE).is_file():  # TensorRT's timing cache carries over between builds
            shutil.copy2(out / TIMING_CACHE, building / TIMING_CACHE)
        result = build(building)
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / out.name)
        os.replace(building, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return result
    finally:
        if building.exists():
            shutil.rmtree(building, ignore_errors=True)


def export_stage(ckpt_dir: str | Path, out_dir: str | Path, cfg, force: bool = False,
                 expect_classes: int | None = None) -> ExportOutcome:
    """Keep the export in out_dir when it matches ckpt_dir and cfg; otherwise export again (run_export)."""
    from .run import run_export

    out = Path(out_dir)
    ckpt = Path(ckpt_dir)
    ckpt = ckpt.parent if ckpt.is_file() else ckpt
    key = export_key(ckpt, cfg) if (ckpt / CHECKPOINT).is_file() else None
    done = out / EXPORT_SUMMARY
    if key and not force and done.is_file():
        try:
            record = json.loads(done.read_text())
        except (OSError, ValueError):
            record = {}
        if record.get("key") == key:
            return ExportOutcome(record, "up to date")
    if key is None:  # not a checkpoint folder: run_export says so, and nothing here is touched
        run_export(ckpt, out, cfg, expect_classes=expect_classes)

    def build(folder: Path) -> dict[str, Any]:
        summary = run_export(ckpt, folder, cfg, expect_classes=expect_classes) | {"out": str(out)}
        record = {k: v for k, v in summary.items() if k != "parity"} | {"key": key,
                                                                          "parity_passed": summary["parity"]["passed"]}
        write_json_atomic(folder / EXPORT_SUMMARY, record)
        return summary, record

    summary, record = build_then_move(out, build)
    return ExportOutcome(record, "exported", summary["parity"]["text"])


def recorded_parity_text(out: Path) -> str:
    """The parity table of a kept export, from its parity.json."""
    path = Path(out) / PARITY_REPORT
    return format_report(json.loads(path.read_text())) if path.is_file() else ""
