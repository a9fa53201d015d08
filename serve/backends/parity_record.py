"""What an export's parity record says about serving one of its files on one runtime: parity.json lists under
"refused" a runtime beside onnxruntime (OpenVINO) that broke its budget on a file (export/parity.py). `auto` never
picks such a runtime for that file; asked for by name, it serves with a loud warning."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from nfdseg.artifacts import PARITY_REPORT

from .base import Backend

log = logging.getLogger(__name__)


def parity_refusal(path: Path, backend: str) -> str | None:
    """The rule `backend` broke on this file in its export's parity.json (export/parity.py lists a runtime beside
    onnxruntime that is over budget on a file as "refused"), or None: nothing recorded against it."""
    folder = path if path.is_dir() else path.parent
    try:
        report = json.loads((folder / PARITY_REPORT).read_text())
    except (OSError, ValueError):
        return None
    refused = report.get("refused") if isinstance(report, dict) else None
    for r in refused if isinstance(refused, list) else []:
        if isinstance(r, dict) and r.get("backend") == backend and r.get("file") == path.name:
            return str(r.get("rule", "over its parity budget"))
    return None


def note_refused_runtime(b: Backend) -> None:
    """A runtime parity refused for this file, served because it was asked for by name: say so, loudly."""
    rule = parity_refusal(b.path, b.name)
    if rule is not None:
        log.warning("PARITY: %s on %s broke its parity budget at export (%s); its results differ from the "
                    "checkpoint's beyond the budget: serve it with --backend onnxruntime (or auto)",
                    b.name, b.path.name, rule)
