"""benchmarks/gpu_suite.py on a machine without a GPU: it refuses with the reason, and its --dry-run runs the
same product code paths (train_stage, Segmenter, evaluate) tiny on the CPU from a plain checkout (nfdseg not
installed), recording every fallback and every skipped section with its reason. The GPU figures themselves
come only from running it on a GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "benchmarks" / "gpu_suite.py"
# removes the editable install's import hook, so nfdseg can only come from the checkout the suite maps itself
NO_INSTALL = ('import sys\nsys.meta_path[:] = [f for f in sys.meta_path if "editable" not in '
              'getattr(f, "__module__", "") + getattr(type(f), "__module__", "")]\n')


def _run(args, tmp_path, timeout=60):
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(NO_INSTALL)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(site), "OMP_NUM_THREADS": "2"}
    return subprocess.run([sys.executable, str(SUITE), *args], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=tmp_path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible: the suite would run, not refuse")
def test_refuses_without_a_gpu(tmp_path):
    r = _run([], tmp_path)
    assert r.returncode == 2 and "needs a CUDA GPU" in r.stderr and "Traceback" not in r.stderr
    r = _run(["--dry-run"], tmp_path)
    assert r.returncode == 2 and "--dry-run needs --out" in r.stderr


@pytest.mark.slow
def test_dry_run_goes_through_the_product_from_a_plain_checkout(tmp_path):
    out = tmp_path / "dry.json"
    r = _run(["--dry-run", "--out", str(out), "--work", str(tmp_path / "work")], tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    d = json.loads(out.read_text())
    assert d["dry_run"] is True and not list((ROOT / "benchmarks/results").glob("gpu_cpu*.json"))
    tr = d["train"]
    for mode in ("fp32_tf32_off", "amp_bf16_channels_last"):
        assert tr[mode]["images_per_s"] > 0 and tr[mode]["device"] == "cpu"
    assert tr["amp_bf16_channels_last"]["amp_used"] == "off", "the trainer records that the CPU ran fp32"
    v = d["torch"]["variants"]
    assert set(v) == {"fp32_tf32_off", "fp32", "fp16", "bf16", "fp16_cuda_graphs"}
    assert d["torch"]["reference"] == "fp32_tf32_off" and "label_agreement_pct" not in v["fp32_tf32_off"]
    for name, row in v.items():
        if name != "fp32_tf32_off":  # on the CPU every variant runs fp32: identical labels
            assert row["label_agreement_pct"] == 100.0 and row["label_agreement_min_image_pct"] == 100.0, name
        assert row["batch1"]["p50_ms"] > 0 and row["batch4"]["n"] == d["params"]["lat_iters"]
        assert 0 <= row["miou"] <= 100
    assert "fp16 requested on CPU" in v["fp16"]["backend"]["fallback"]
    assert "CUDA graphs requested on CPU" in v["fp16_cuda_graphs"]["backend"]["fallback"]
    for section in ("onnxruntime_cuda", "tensorrt"):
        assert d[section].get("skipped") or d[section].get("batch1"), section
