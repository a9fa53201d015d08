"""The one-shot pipeline on a tiny config: report figures equal the manifests, reruns skip, --force reruns,
foreign output directories are refused, and a failed write never leaves a complete-looking artifact."""

import errno
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from nfdseg.fsutil import atomic_path, write_json_atomic
from nfdseg.manifest import read_manifest

TINY = ["--set", "teacher.model.arch=deeplabv3_resnet_tiny", "--set", "student.model.arch=deeplabv3_resnet_tiny",
        "--set", "teacher.train.iters=6", "--set", "student.train.iters=6", "--set", "teacher.train.eval_every=3",
        "--set", "student.train.eval_every=3", "--set", "data.synthetic_val=12", "--set", "data.synthetic_train=32",
        "--set", "data.synthetic_size=[48,48]", "--set", "data.input_size=[48,48]", "--set", "data.crop_size=[48,48]",
        "--set", "teacher.train.batch_size=4", "--set", "student.train.batch_size=4", "--bench-seconds", "4"]


def pipeline(out, *extra):
    return subprocess.run([sys.executable, "-m", "nfdseg.app.cli", "pipeline", "--out", str(out), "--quiet", *TINY, *extra],
                          capture_output=True, text=True)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("pipe") / "run"
    r = pipeline(out)
    assert r.returncode == 0, r.stdout + r.stderr
    STDOUT[out] = r.stdout
    STDERR[out] = r.stderr
    return out


STDOUT: dict = {}
STDERR: dict = {}


def test_the_report_names_the_distillation_that_ran():
    from nfdseg.app.report import distillation_label

    assert distillation_label({"loss": "nfd", "logits_kd_weight": 0.0}) == "NFD"
    assert distillation_label({"loss": "nfd", "logits_kd_weight": 3.0}) == "NFD + logits KD"  # the camvid_cpu preset
    assert distillation_label({"loss": "cwd", "logits_kd_weight": 1.0}) == "CWD + logits KD"
    assert distillation_label({"loss": "kd", "logits_kd_weight": 3.0}) == "KD"
    assert distillation_label(None) == "NFD"


def test_report_matches_manifests(run_dir):
    rep = json.loads((run_dir / "report.json").read_text())
    t = read_manifest(run_dir / "teacher/checkpoint.json")
    s = read_manifest(run_dir / "student/checkpoint.json")
    b = read_manifest(run_dir / "baseline/checkpoint.json")
    assert rep["miou"]["teacher"] == t.metrics["miou"] and rep["miou"]["student_nfd"] == s.metrics["miou"]
    assert rep["miou"]["baseline"] == b.metrics["miou"]
    assert rep["nfd_gain_over_baseline"] == pytest.approx(s.metrics["miou"] - b.metrics["miou"], abs=1e-3)
    assert b.config["distill"]["loss"] == "none" and s.config["distill"]["loss"] == "nfd"
    assert rep["distillation"] == "NFD" and "student (NFD)" in rep["per_class_iou"]
    assert "| NFD student (torch) |" in (run_dir / "report.md").read_text()
    lead = rep["teacher_lead"]
    assert lead["lead"] == pytest.approx(t.metrics["miou"] - b.metrics["miou"], abs=1e-3)
    assert lead["small"] == (lead["lead"] < 3.0)
    assert f"{lead['lead']:+.2f} mIoU points" in (run_dir / "report.md").read_text()
    said_on_the_console = STDOUT[run_dir] if not lead["small"] else STDERR[run_dir]
    assert f"leads the undistilled student by {'only ' if lead['small'] else ''}{lead['lead']:+.2f}" in said_on_the_console
    parity = json.loads((run_dir / "export/parity.json").read_text())
    assert parity["images"] == 12, "the report's ONNX figures cover the whole validation split"
    assert rep["checks"]["student_miou_matches_parity_torch"], "torch in parity = the student's own evaluation"
    onnx = next(r for r in parity["results"] if r["artifact"] == "model.onnx")
    assert rep["miou"]["onnx_fp32"] == onnx["miou"]
    assert rep["cost"]["student"]["params_m"] == pytest.approx(s.metrics["params"] / 1e6, abs=1e-4)
    assert rep["cost"]["student"]["gflops"] > 0
    backends = {row["backend"] for row in rep["bench"]}
    assert {"onnxruntime", "torch", "openvino"} <= backends
    ov_rows = [row for row in rep["bench"] if row["backend"] == "openvino"]
    if importlib.util.find_spec("openvino"):  # timed (or left out to fit the budget, said), its version recorded
        assert "openvino" in rep["versions"] and all("error" not in row for row in ov_rows)
        assert "| openvino | model.onnx |" in (run_dir / "report.md").read_text()
    else:
        assert all("OpenVINO, which is not installed" in row["error"] for row in ov_rows)
    assert rep["bench_budget"]["total_s"] == 4.0 and rep["bench_budget"]["min_iters"] == 2
    assert all(row["infer"]["n"] >= 2 for row in rep["bench"] if "infer" in row), "the minimum count is honoured"
    assert "Bench budget 4 s" in (run_dir / "report.md").read_text()
    md = (run_dir / "report.md").read_text()
    assert f"| teacher | {t.metrics['miou']:.2f} |" in md and "No TensorRT engine was built" in md
    for png in rep["plots"]:
        assert (run_dir / png).stat().st_size > 1000
    deploy = {p.name for p in (run_dir / "deploy").iterdir()}
    assert {"model.onnx", "model.json", "classes.json", "usage.py"} <= deploy


def test_the_better_student_is_deployed_and_recorded(run_dir):
    rep = json.loads((run_dir / "report.json").read_text())
    s = read_manifest(run_dir / "student/checkpoint.json")
    b = read_manifest(run_dir / "baseline/checkpoint.json")
    choice = rep["student_choice"]
    # the choice re-scores both checkpoints image by image: the same figures as the trainer's evaluation
    assert choice["student_miou"] == pytest.approx(s.metrics["miou"], abs=0.01)
    assert choice["baseline_miou"] == pytest.approx(b.metrics["miou"], abs=0.01)
    better = "student" if s.metrics["miou"] >= b.metrics["miou"] else "baseline"
    assert choice["deployed"] == better and choice["rule"] == "better"
    lo, hi = choice["gap_ci95"]
    assert lo <= hi and (lo > 0 or hi < 0) == ("larger than that noise" in choice["message"])
    onnx = read_manifest(run_dir / "export/model.json")
    assert onnx.parent_sha256 == (s if better == "student" else b).sha256, "the exported model is the chosen one"
    assert onnx.metrics["student_choice"] == choice
    assert choice["message"] in STDOUT[run_dir].strip().splitlines()[-3], "the pipeline's last lines say it"
    md = (run_dir / "report.md").read_text()
    assert md.splitlines()[2].lstrip("> *").lower().startswith(("the baseline beat", "distilled student"))
    assert ("THE BASELINE BEAT" in md.splitlines()[2]) == (choice["gap"] < 0)


def test_pinned_student_is_exported_even_when_worse(run_dir, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    r = pipeline(run, "--deploy", "baseline")
    assert r.returncode == 0, r.stdout + r.stderr
    b = read_manifest(run / "baseline/checkpoint.json")
    onnx = read_manifest(run / "export/model.json")
    assert onnx.parent_sha256 == b.sha256 and onnx.metrics["student_choice"]["deployed"] == "baseline"
    assert onnx.metrics["student_choice"]["rule"] == "baseline" and "pinned with --deploy" in r.stdout
    triton = json.loads(next((run / "triton").glob("*/1/manifest.json")).read_text())
    assert triton["metrics"]["student_choice"]["deployed"] == "baseline", "the Triton copy says it too"
    rep = json.loads((run / "report.json").read_text())
    assert rep["checks"]["student_miou_matches_parity_torch"], "parity's torch figure is the baseline's own"
    r = pipeline(run, "--deploy", "baseline", "--no-baseline")
    assert r.returncode == 2 and "--deploy baseline needs the baseline student" in r.stderr


def test_rerun_skips_and_force_reruns(run_dir):
    before = (run_dir / "student/checkpoint.json").read_text()
    r = pipeline(run_dir)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("skipped") == 5
    assert (run_dir / "student/checkpoint.json").read_text() == before
    r = pipeline(run_dir, "--force", "bench")
    assert "bench     done" in r.stdout and "student   skipped" in r.stdout


def _files(folder):
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.iterdir() if p.is_file()}


def _states(stdout):
    return {line.split()[1]: line.split()[2] for line in stdout.splitlines() if line.startswith("[")}


def test_overwrite_reruns_only_the_stages_whose_inputs_changed(run_dir, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    teacher, baseline = _files(run / "teacher"), _files(run / "baseline")
    student_sha = read_manifest(run / "student/checkpoint.json").sha256
    # a distillation setting: the NFD student and what follows it rerun; the teacher and the baseline do not
    r = pipeline(run, "--overwrite", "--set", "distill.weight=0.05")
    assert r.returncode == 0, r.stderr
    assert _states(r.stdout) == {"teacher": "skipped", "student": "done", "baseline": "skipped", "export": "done",
                                 "bench": "done", "report": "done"}
    assert _files(run / "teacher") == teacher and _files(run / "baseline") == baseline
    assert read_manifest(run / "student/checkpoint.json").sha256 != student_sha
    # a student setting: both students rerun, the teacher never
    r = pipeline(run, "--overwrite", "--set", "distill.weight=0.05", "--set", "student.train.iters=4")
    assert r.returncode == 0, r.stderr
    assert _states(r.stdout)["teacher"] == "skipped" and _states(r.stdout)["baseline"] == "done"
    assert _files(run / "teacher") == teacher
    # re-exporting leaves every checkpoint as it is
    students = _files(run / "student")
    r = pipeline(run, "--set", "distill.weight=0.05", "--set", "student.train.iters=4", "--force", "export")
    assert _states(r.stdout)["export"] == "done" and _files(run / "teacher") == teacher
    assert _files(run / "student") == students


def test_refuses_other_runs_and_foreign_dirs(run_dir, tmp_path):
    r = pipeline(run_dir, "--set", "distill.weight=0.5")
    assert r.returncode == 2 and "another run's artifacts" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "mine.txt").write_text("precious")
    r = pipeline(tmp_path)
    assert r.returncode == 2 and "not written by `nfdseg pipeline`" in r.stderr
    assert (tmp_path / "mine.txt").read_text() == "precious"
    r = subprocess.run([sys.executable, "-m", "nfdseg.app.cli", "pipeline", "--config", str(tmp_path / "nope.yaml")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "config file not found" in r.stderr


def test_full_disk_leaves_no_complete_looking_file(tmp_path, monkeypatch):
    target = tmp_path / "model.json"
    write_json_atomic(target, {"old": True})

    def disk_full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError):
        with atomic_path(target) as tmp:
            tmp.write_text('{"new": tr')  # half written...
            disk_full()
    assert json.loads(target.read_text()) == {"old": True}, "the old file is intact"
    assert [p.name for p in tmp_path.iterdir()] == ["model.json"], "no temporary file is left behind"
    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError):
        write_json_atomic(tmp_path / "new.json", {"x": 1})
    assert not (tmp_path / "new.json").exists()
