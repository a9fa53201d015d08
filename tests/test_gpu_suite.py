"""benchmarks/gpu_suite.py on a machine without a GPU: it refuses with the reason, and its --dry-run runs the
same product code paths (train_stage, Segmenter, evaluate) tiny on the CPU from a plain checkout (nfdseg not
installed), recording every fallback and every skipped section with its reason. The GPU figures themselves
come only from running it on a GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "benchmarks" / "gpu_suite.py"
# removes the editable install's import hook, so nfdseg can only come from the checkout the suite maps itself
NO_INSTALL = ('import sys\nsys.meta_path[:] = [f for f in sys.meta_path if "editable" not in '
              'getattr(f, "__module__", "") + getattr(type(f), "__module__", "")]\n')


# what a lent GPU machine may lack (it has torch with CUDA and what the working tree carries, no network)
LENT_MACHINE_LACKS = ("torchvision", "onnx", "onnxslim", "onnxconverter_common", "onnxruntime", "tensorrt",
                      "tensorrt_rtx", "cuda")
# hides them from the path finder, as if not installed (importlib.util.find_spec answers None, as torch expects)
BLOCK = f"""
import importlib.machinery
class _Without:
    def __init__(self, inner):
        self.inner = inner
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {LENT_MACHINE_LACKS!r}:
            return None
        return self.inner.find_spec(name, path, target)
    def invalidate_caches(self):
        self.inner.invalidate_caches()
sys.meta_path[:] = [_Without(f) if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
"""


def _run(args, tmp_path, timeout=60, lent_machine=False):
    """The suite in a subprocess, nfdseg from the checkout only; `lent_machine`: also without the packages a lent
    GPU machine may lack."""
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(NO_INSTALL + (BLOCK if lent_machine else ""))
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
    from nfdseg.distill.amp import amp_choice, amp_label

    out = tmp_path / "dry.json"
    r = _run(["--dry-run", "--out", str(out), "--work", str(tmp_path / "work")], tmp_path, timeout=600,
             lent_machine=True)
    assert r.returncode == 0, r.stderr[-3000:]
    d = json.loads(out.read_text())
    assert d["dry_run"] is True and not list((ROOT / "benchmarks/results").glob("gpu_cpu*.json"))
    tr = d["train"]
    # the record says what this CPU ran: bf16 autocast is honoured on a CPU (with or without bf16 units)
    cpu_bf16 = amp_label(amp_choice("bf16", torch.device("cpu"))[0])
    for mode, amp, cl in (("fp32_tf32_off", "off", False), ("bf16", cpu_bf16, False),
                          ("bf16_channels_last", cpu_bf16, True)):
        assert tr[mode]["images_per_s"] > 0 and tr[mode]["device"] == "cpu", mode
        assert tr[mode]["amp_used"] == amp and tr[mode]["channels_last"] is cl, mode
    assert cpu_bf16 == "bf16"
    assert set(tr["speedup_vs_fp32"]) == {"bf16", "bf16_channels_last"}
    v = d["torch"]["variants"]
    assert set(v) == {"fp32_tf32_off", "fp32", "fp16", "bf16", "fp16_cuda_graphs"}
    assert d["torch"]["reference"] == "fp32_tf32_off" and "label_agreement_pct" not in v["fp32_tf32_off"]
    for name, row in v.items():
        if name != "fp32_tf32_off":  # on the CPU every variant runs fp32: identical labels
            assert row["label_agreement_pct"] == 100.0 and row["label_agreement_min_image_pct"] == 100.0, name
        assert row["batch1"]["p50_ms"] > 0 and row["batch4"]["n"] == d["params"]["lat_iters"]
        assert 0 <= row["miou"] <= 100
    cpu = d["torch"]["cpu_fp32"]  # the served student's mIoU on the CPU, beside every device row
    assert cpu["backend"]["device"] == "cpu" and cpu["label_agreement_pct"] == 100.0 and "batch1" not in cpu
    assert d["torch"]["miou_vs_cpu"] == {n: 0.0 for n in v}
    assert "fp16 requested on CPU" in v["fp16"]["backend"]["fallback"]
    assert "CUDA graphs requested on CPU" in v["fp16_cuda_graphs"]["backend"]["fallback"]
    lat = d["latency"]["archs"]
    assert set(lat) == {"deeplabv3_resnet10_w8", "deeplabv3_resnet18"}
    for arch, row in lat.items():
        assert row["eager"]["p50_ms"] > 0 and row["cuda_graphs"]["n"] == d["params"]["lat_iters"], arch
        assert row["cuda_graphs"]["label_agreement_with_eager_pct"] == 100.0
        assert "CUDA graphs requested on CPU" in row["cuda_graphs"]["backend"]["fallback"]
    assert lat["deeplabv3_resnet18"]["params"] > 10 * lat["deeplabv3_resnet10_w8"]["params"]
    for section in ("onnxruntime_cuda", "tensorrt"):
        assert d[section].get("skipped") or d[section].get("batch1"), section
    assert d["complete"] is True and "incomplete" not in d
    assert {k: d["sections"][k]["status"] for k in ("data", "train", "torch", "latency")} == dict.fromkeys(
        ("data", "train", "torch", "latency"), "done")
    assert set(d["sections"]) == {"data", "train", "torch", "latency", "export", "onnxruntime_cuda", "tensorrt"}
    for name, row in v.items():  # each row was timed only after the Segmenter's report matched its expectation
        assert row["expected"] == {"backend": "torch", "device": "cpu", "precision": "fp32", "cuda_graphs": False}
        assert row["backend"]["device"] == "cpu" and row["backend"]["precision"] == "fp32", name
    assert d["tensorrt"]["skipped"].startswith("the TensorRT section needs TensorRT")
    assert "a CUDA GPU (--dry-run" in d["tensorrt"]["skipped"] and "CUDA bindings" in d["tensorrt"]["skipped"]
    assert "onnxruntime-gpu is not installed" in d["onnxruntime_cuda"]["skipped"]
    assert d["sections"]["export"]["reason"].startswith("the ONNX export needs onnx, onnxslim")


@pytest.mark.parametrize("start", ["forkserver", "spawn"])
def test_data_workers_import_nfdseg_from_a_plain_checkout_under_any_start_method(tmp_path, start):
    """Python 3.14 starts workers with forkserver: they do not inherit the parent's checkout mapping."""
    script = tmp_path / "data.py"
    script.write_text(f"""
import multiprocessing, sys
from pathlib import Path
sys.path.insert(0, {str(ROOT / 'benchmarks')!r})
import gpu_suite
if __name__ == "__main__":
    multiprocessing.set_start_method({start!r})
    gpu_suite.use_checkout()
    p = dict(gpu_suite.DRY, train_n=2, val_n=1, train_hw=(16, 24), val_hw=(16, 24))
    root = gpu_suite.make_dataset(Path({str(tmp_path / 'data')!r}), p)
    print(len(list((root / "images" / "train").glob("*.png"))))
""")
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(NO_INSTALL)
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                       env={**os.environ, "PYTHONPATH": str(site)})
    assert r.returncode == 0 and r.stdout.strip() == "2", r.stderr[-2000:]


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
    r = _run(["--dry-run", "--out", str(out), "--work", str(tmp_path / "work"), "--budget", "train=0.05",
              "--budget", "latency=0"], tmp_path, timeout=300)
    assert r.returncode == 1, r.stderr[-3000:]  # nothing was measured: not a finished run
    d = json.loads(out.read_text())
    s = d["sections"]
    assert s["data"]["status"] == "done" and s["train"]["status"] == "over_budget" and s["train"]["budget_s"] == 0.05
    assert "spent its 0 s budget" in d["train"]["stopped"] and d["train"]["teacher_s"] > 0  # what finished is kept
    assert s["torch"]["status"] == "skipped" and "trained student" in s["torch"]["reason"]
    assert "variants" not in d["torch"] and "trained student" in d["torch"]["skipped"]
    assert d["complete"] is False and set(d["incomplete"]) == {"train", "torch", "latency"}
    assert "no time left" in d["incomplete"]["latency"] and "INCOMPLETE" in r.stderr


class _StandInTrainer:
    """train_stage as a CUDA machine's trainer runs it, without a GPU: it records `metrics` the way
    checkpoint.json does, amp spelled by `spell` (the trainer's AMP_LABELS, or the old str(dtype) spelling)."""

    def __init__(self, spell):
        self.spell, self.calls = spell, []

    def __call__(self, cfg, stage, out_dir, **kwargs):
        from nfdseg.distill.amp import amp_choice

        t = getattr(cfg, stage).train
        dtype, why = amp_choice(t.amp, torch.device("cuda"))
        self.calls.append((stage, t.amp, t.channels_last))
        metrics = {"images_per_s": 100.0 + 10 * len(self.calls), "train_time_s": 1.0, "miou": 12.5,
                   "device": "cuda:0", "amp": self.spell(dtype), "amp_reason": why, "channels_last": t.channels_last}
        return types.SimpleNamespace(metrics=metrics)


def _old_spelling(dtype):
    return "off" if dtype is None else str(dtype).replace("torch.", "")


def test_a_cuda_trainer_record_in_the_trainers_spelling_fills_every_training_row(tmp_path, monkeypatch):
    from nfdseg.distill import trainer

    suite = _suite_module()
    fake = _StandInTrainer(trainer.amp_label)
    monkeypatch.setattr(trainer, "train_stage", fake)
    out: dict = {}
    served = suite.train_section(suite.DRY, tmp_path / "data", tmp_path, "cuda", out, suite.Budget("train", 60))
    tr = out["train"]
    assert served == tmp_path / "served" and tr["served_student"]["val_miou"] == 12.5
    assert [tr[m]["amp_used"] for m in ("fp32_tf32_off", "bf16", "bf16_channels_last")] == ["off", "bf16", "bf16"]
    assert [tr[m]["channels_last"] for m in ("fp32_tf32_off", "bf16", "bf16_channels_last")] == [False, False, True]
    assert set(tr["speedup_vs_fp32"]) == {"bf16", "bf16_channels_last"}
    assert ("student", "bf16", True) in fake.calls and ("student", "off", False) in fake.calls


def test_a_run_that_measures_nothing_is_not_complete(tmp_path, monkeypatch):
    """The old trainer spelled bf16 'bfloat16': every bf16 row was dropped, every later section skipped for want
    of a student, and the JSON still said complete with exit 0. Now the run is incomplete, exit 1, with why."""
    from nfdseg.distill import trainer

    suite = _suite_module()
    monkeypatch.setattr(trainer, "train_stage", _StandInTrainer(_old_spelling))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a stand-in CUDA machine
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: None)
    monkeypatch.setattr(suite, "GPU", suite.DRY)
    monkeypatch.setattr(suite, "use_checkout", lambda: None)
    out = tmp_path / "gpu.json"
    code = suite.main(["--out", str(out), "--work", str(tmp_path / "work"), "--budget", "latency=0"])
    d = json.loads(out.read_text())
    assert code == 1 and d["complete"] is False
    assert "amp 'bfloat16' (asked for 'bf16')" in d["incomplete"]["train"]
    assert d["train"]["bf16"]["record"]["amp_used"] == "bfloat16" and d["train"]["fp32_tf32_off"]["images_per_s"]
    assert "trained student" in d["incomplete"]["torch"]


def test_the_tensorrt_reason_names_tensorrt_first():
    suite = _suite_module()
    plan = suite.runtime_plan(False, lambda name: name in ("onnxruntime",), gpu=True)
    assert plan["trt_why_not"].startswith("the TensorRT section needs TensorRT")
    assert "CUDA bindings" in plan["trt_why_not"] and "the ONNX export needs onnx, onnxslim" in plan["trt_why_not"]
    plan = suite.runtime_plan(False, lambda name: True, gpu=False)
    assert plan["trt_why_not"] == "the TensorRT section needs a CUDA GPU" and "ONNX" not in plan["trt_why_not"]


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
