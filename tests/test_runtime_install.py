"""`pip install 'nfdseg[cpu]'` (the CPU runtime, no other extra) in a clean virtual environment is a working
runtime without torch.

Slow (a virtual environment and a pip install from PyPI, ~1 minute); it needs the package index, and skips
with that reason when pip cannot reach it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _run(cmd, **kw) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env, timeout=600, **kw)


@pytest.fixture(scope="module")
def runtime_env(tmp_path_factory) -> Path:
    """A virtual environment with nfdseg[cpu] installed from this checkout, no other extra: its bin/ folder."""
    env_dir = tmp_path_factory.mktemp("runtime-venv")
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    bin_dir = env_dir / "bin"
    # A non-editable install from a copy-free build of the checkout, as a user would from a wheel.
    r = _run([bin_dir / "python", "-m", "pip", "install", "--quiet", "--disable-pip-version-check", f"{ROOT}[cpu]"],
             cwd=env_dir)
    if r.returncode != 0:
        text = r.stdout + r.stderr
        if any(s in text for s in ("Could not find a version", "Failed to establish", "Temporary failure",
                                   "No matching distribution", "Network is unreachable")):
            pytest.skip(f"pip could not reach the package index: {text.strip().splitlines()[-1]}")
        raise AssertionError(f"pip install nfdseg[cpu] failed:\n{text[-3000:]}")
    return bin_dir


def test_runtime_only_install_has_no_torch(runtime_env):
    r = _run([runtime_env / "python", "-c", "import importlib.util as u; print([m for m in "
              "('torch', 'torchvision', 'onnx', 'gradio', 'matplotlib') if u.find_spec(m)])"])
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]", f"the runtime-only install pulled heavy packages: {r.stdout}"


def test_runtime_only_install_segments_evaluates_benches_and_checks(runtime_env, exported, tmp_path):
    nfdseg = runtime_env / "nfdseg"
    rng = np.random.default_rng(0)
    img = tmp_path / "frame.png"
    Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(img)
    out = tmp_path / "pred"

    r = _run([nfdseg, "predict", exported, img, "--out", out], cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    labels = np.asarray(Image.open(out / "frame_labels.png"))
    assert labels.shape == (40, 56)
    assert labels.max() < 8  # the synthetic scenes' 8 classes

    r = _run([nfdseg, "eval", exported, "--data", "default", "--limit", "4", "--quiet"], cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "mIoU" in r.stdout

    r = _run([nfdseg, "bench", exported, "--batch", "1", "--concurrency", "", "--duration", "0", "--min-iters", "2",
              "--warmup", "1", "--quiet"], cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr

    r = _run([nfdseg, "check", exported, "--parity-images", "4"], cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "model.fp16.onnx" in r.stdout


def test_a_command_of_a_missing_extra_names_the_extra(runtime_env, tmp_path):
    r = _run([runtime_env / "nfdseg", "distill", "--out", tmp_path / "run", "--quiet"], cwd=tmp_path)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert "pip install 'nfdseg[train]'" in r.stderr, r.stderr


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
