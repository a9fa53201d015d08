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


def test_each_gpu_runtime_extra_is_bounded_to_its_cuda_major():
    """An open range lets a future build for another CUDA major land under the old extra's name (a CUDA-14
    onnxruntime-gpu under `gpu-cu13`): each GPU extra's onnxruntime-gpu range is closed, and the ranges are
    disjoint. Which CUDA each range's releases are built for is read from their metadata by
    tests/test_install_targets.py."""
    import tomllib

    from packaging.requirements import Requirement

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    ranges = {}
    for extra in ("gpu-cu12", "gpu-cu13"):
        (req,) = [Requirement(r) for r in extras[extra] if r.startswith("onnxruntime-gpu")]
        assert any(s.operator in ("<", "<=", "==", "~=") for s in req.specifier), f"{extra}: {req} has no upper bound"
        ranges[extra] = req.specifier
    releases = [f"1.{minor}.{patch}" for minor in range(15, 60) for patch in range(4)]
    both = [v for v in releases if v in ranges["gpu-cu12"] and v in ranges["gpu-cu13"]]
    assert not both, f"onnxruntime-gpu {both[:3]} would satisfy both CUDA 12 and CUDA 13 extras"
    assert "1.40.0" not in ranges["gpu-cu13"]


def test_the_tensorrt_hint_names_the_build_for_the_drivers_cuda_and_the_exact_release():
    from nfdseg.serve.backends.trt_compat import INSTALL_HINT, tensorrt_pip_spec

    assert tensorrt_pip_spec(12) == "tensorrt-cu12>=10,<11" and tensorrt_pip_spec(13, 11) == "tensorrt-cu13>=11,<12"
    assert tensorrt_pip_spec(12, exact="10.13.0.35") == "tensorrt-cu12==10.13.0.*"
    assert "'tensorrt>=10,<11'" not in INSTALL_HINT, "the bare metapackage installs the CUDA 13 build since 10.13.2"
    assert "tensorrt-cu12>=10,<11" in INSTALL_HINT and "tensorrt-cu13>=10,<11" in INSTALL_HINT
    assert "exact release" in INSTALL_HINT
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from suite_sections import missing_for_tensorrt

    (hint,) = missing_for_tensorrt(lambda name: name != "tensorrt", gpu=True)
    assert "tensorrt-cu12>=10,<11" in hint and "'tensorrt>=10,<11'" not in hint and "exact release" in hint
