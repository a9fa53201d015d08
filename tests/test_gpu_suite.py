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
    assert d["complete"] is True and d["sections"]["torch"]["status"] == "done"
    assert set(d["sections"]) == {"data", "train", "torch", "export", "onnxruntime_cuda", "tensorrt"}
    for name, row in v.items():  # each row was timed only after the Segmenter's report matched its expectation
        assert row["expected"] == {"backend": "torch", "device": "cpu", "precision": "fp32", "cuda_graphs": False}
        assert row["backend"]["device"] == "cpu" and row["backend"]["precision"] == "fp32", name
    assert "TensorRT" in d["tensorrt"]["skipped"] and "a CUDA GPU" in d["tensorrt"]["skipped"]


def _suite_module():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import gpu_suite

    return gpu_suite


class _FakeSegmenter:
    """Reports what a CUDA provider that did not load leaves: onnxruntime on the CPU. Counts every call."""

    def __init__(self, report):
        self.report, self.calls = report, 0

    def describe(self):
        return dict(self.report)

    def predict(self, *a, **k):
        self.calls += 1

    def __getattr__(self, name):  # evaluate() or anything else touching the Segmenter counts as running it
        self.calls += 1
        raise AssertionError(f"the suite used the Segmenter ({name}) although it reports the wrong backend")


def test_suite_refuses_to_time_a_backend_its_report_contradicts():
    suite = _suite_module()
    expect = {"backend": "onnxruntime", "provider": "CUDAExecutionProvider", "device": "cuda", "precision": "fp16",
              "fallback": ""}
    seg = _FakeSegmenter({"backend": "onnxruntime", "provider": "CPUExecutionProvider", "device": "cpu",
                          "precision": "fp32", "fallback": "onnxruntime lists CUDAExecutionProvider but could not "
                                                            "create it"})
    row, labels = suite.measure(seg, images=[None], source=None, p=suite.DRY, ref_labels=None, expect=expect)
    assert seg.calls == 0 and labels is None and "batch1" not in row
    assert "provider 'CPUExecutionProvider' (asked for 'CUDAExecutionProvider')" in row["skipped"]
    assert "device 'cpu'" in row["skipped"] and "could not create it" in row["skipped"]
    ok = {**seg.report, "provider": "CUDAExecutionProvider", "device": "cuda:0", "precision": "fp16", "fallback": ""}
    assert suite.backend_mismatch(ok, expect) == ""
    missing = suite.missing_for_tensorrt(lambda name: name == "tensorrt", gpu=True)
    assert len(missing) == 1 and "CUDA bindings" in missing[0], "TensorRT alone is not enough to start the section"


def test_section_budgets_stop_a_section_and_the_rest_say_why(tmp_path):
    out = tmp_path / "dry.json"
    r = _run(["--dry-run", "--out", str(out), "--work", str(tmp_path / "work"), "--budget", "train=0.05"], tmp_path,
             timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    d = json.loads(out.read_text())
    s = d["sections"]
    assert s["data"]["status"] == "done" and s["train"]["status"] == "over_budget" and s["train"]["budget_s"] == 0.05
    assert "spent its 0 s budget" in d["train"]["stopped"] and d["train"]["teacher_s"] > 0  # what finished is kept
    assert s["torch"]["status"] == "skipped" and "trained student" in s["torch"]["reason"]
    assert d["complete"] is True and "variants" not in d["torch"] and "trained student" in d["torch"]["skipped"]


def test_json_is_written_after_each_section_so_a_kill_keeps_what_finished(tmp_path):
    script = tmp_path / "killed.py"
    script.write_text(f"""
import os, signal, sys
sys.path.insert(0, {str(ROOT / 'benchmarks')!r})
from suite_sections import Recorder
out = {{}}
rec = Recorder(__import__('pathlib').Path({str(tmp_path / 'r.json')!r}), out, total_s=60)
rec.run("first", 10, lambda b: out.setdefault("first", {{"figure": 1.5}}))
rec.run("second", 10, lambda b: os.kill(os.getpid(), signal.SIGKILL))
""")
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert r.returncode == -9
    d = json.loads((tmp_path / "r.json").read_text())
    assert d["first"] == {"figure": 1.5} and d["sections"]["first"]["status"] == "done"
    assert "second" not in d["sections"] and d["complete"] is False
    assert not list(tmp_path.glob(".r.json.*")), "no temporary file left looking like a result"


def test_the_export_runs_in_a_child_stopped_at_its_budget(tmp_path):
    suite = _suite_module()
    student = tmp_path / "no-student"  # the child is stopped before it gets to read it
    plan = {"skip_export": "", "tensorrt_ok": False}
    with pytest.raises(suite.OverBudget, match="export spent its 0 s budget"):
        suite.export_section(student, tmp_path, {}, suite.Budget("export", 0.2), plan)
