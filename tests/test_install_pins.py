"""The project's own requirements never make pip swap the installed torch for another build.

`pip install -e '.[dev]'` (the README's test command) and `.[all]` (its pipeline command) run after the
torch the machine provides is installed; a requirement that conflicts with that torch (a cuda-python major its
CUDA build does not accept, say) makes pip resolve the conflict by replacing torch. Asked as a dry run, pip
must want to install nothing but nfdseg itself.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.parametrize("extras", ["dev", "all", "all-cu13"])  # all-cu13: the Docker image
def test_extras_keep_the_installed_torch(tmp_path, extras):
    import torch

    report = tmp_path / "report.json"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--disable-pip-version-check",
                        "--report", str(report), "-e", f".[{extras}]"], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    if r.returncode != 0 and any(s in r.stderr for s in ("Failed to establish", "Temporary failure",
                                                          "Network is unreachable", "No matching distribution")):
        pytest.skip(f"pip could not reach the package index: {r.stderr.strip().splitlines()[-1]}")
    assert r.returncode == 0, r.stderr[-2000:]
    wanted = {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in json.loads(report.read_text())["install"]}
    wanted.pop("nfdseg", None)
    assert "torch" not in wanted and "torchvision" not in wanted, (
        f"pip would replace torch {torch.__version__} to satisfy nfdseg[{extras}]: {wanted}")
