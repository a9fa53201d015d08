"""parity.json's OpenVINO rows (issue 28): model.onnx and model.int8.onnx on OpenVINO's CPU plugin under the same
gates as onnxruntime's (fp32: pixel agreement with the checkpoint; INT8: |ΔmIoU|), written by `nfdseg export`, run
by `nfdseg check` without torch, and a "skipped: OpenVINO not installed" row where it is not installed."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from conftest import block_openvino
from nfdseg.errors import ArtifactError
from nfdseg.export.parity import ParityBudget, run_parity

OV_FP32, OV_INT8 = "model.onnx (OpenVINO CPU)", "model.int8.onnx (OpenVINO CPU)"


def _rows(report):
    return {r["artifact"]: r for r in report["results"]}


def test_export_writes_openvino_rows_for_fp32_and_int8(trained_run, tmp_path):
    pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install 'nfdseg[openvino]')")
    from nfdseg.export.run import ExportConfig, run_export

    out = tmp_path / "export"
    summary = run_export(trained_run / "student", out, ExportConfig(engine="off", fp16=False, int8=True,
                                                                    int8_calib_images=8))
    report = json.loads((out / "parity.json").read_text())
    rows = _rows(report)
    assert report["openvino"].startswith("checked on OpenVINO CPU (openvino ")
    fp32 = rows[OV_FP32]
    assert fp32["precision"] == "fp32" and fp32["backend"]["backend"] == "openvino"
    assert fp32["backend"]["device"] == "cpu" and fp32["backend"]["execution_devices"] == "CPU"
    assert fp32["rule"].startswith("pixel agreement")
    assert fp32["pixel_agreement_pct"] >= 99.9 and fp32["passed"]
    assert (out / "model.int8.onnx").is_file(), summary["parity"]["text"]
    int8 = rows[OV_INT8]
    assert int8["precision"] == "int8" and int8["backend"]["artifact"].endswith("model.int8.onnx")
    assert int8["rule"].startswith("|ΔmIoU|") and int8["passed"] == (abs(int8["delta_miou"]) <= 1.0)
    assert OV_INT8 in summary["parity"]["text"] and OV_FP32 in summary["parity"]["text"]


def test_an_openvino_row_over_budget_refuses_openvino_for_that_file_not_the_export(exported, trained_run, tmp_path,
                                                                                     monkeypatch, caplog):
    """onnxruntime serves the files within budget, OpenVINO does not: the export stands; parity.json lists OpenVINO
    as refused for the file, `auto` never picks it there, and `--backend openvino` serves it with a loud warning."""
    pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install 'nfdseg[openvino]')")
    import nfdseg.export.parity as parity
    from nfdseg.serve import Segmenter
    from nfdseg.serve.backends import cpu_choice

    real_judge = parity.judge

    def openvino_breaks(res, budget):  # as if OpenVINO's plugin rounded this model beyond the budget
        ok, rule = real_judge(res, budget)
        return (False, rule.replace("passed", "FAILED")) if "OpenVINO" in res["artifact"] else (ok, rule)

    monkeypatch.setattr(parity, "judge", openvino_breaks)
    out = tmp_path / "export"
    shutil.copytree(exported, out)
    report = run_parity(out, trained_run / "student", ParityBudget(max_images=4))
    assert report["passed"] and not report["failures"], report["failures"]
    assert [(r["file"], r["backend"]) for r in report["refused"]] == [("model.onnx", "openvino")]
    assert "REFUSED openvino for model.onnx" in parity.format_report(report)
    (out / "parity.json").write_text(json.dumps(report))

    monkeypatch.setattr(cpu_choice, "probe_ms", lambda b, x, **k: 1.0 if b.name == "openvino" else 50.0)
    with caplog.at_level("WARNING"):
        assert Segmenter(out, backend="auto", device="cpu").backend.name == "onnxruntime"
        assert "OpenVINO broke model.onnx's parity budget" in caplog.text
        caplog.clear()
        assert Segmenter(out, backend="openvino", device="cpu").backend.name == "openvino"
        assert "PARITY: openvino on model.onnx broke its parity budget" in caplog.text


def test_without_openvino_the_rows_say_skipped(exported, trained_run, monkeypatch):
    block_openvino(monkeypatch)
    report = run_parity(exported, trained_run / "student", ParityBudget(max_images=2))
    assert report["openvino"] == "skipped: OpenVINO not installed"
    skipped = {n["artifact"]: n["reason"] for n in report["not_run"]}
    assert skipped[OV_FP32].startswith("skipped: OpenVINO not installed (pip install 'nfdseg[openvino]'")
    assert report["passed"] and OV_FP32 not in _rows(report)


def test_a_model_openvino_cannot_compile_is_reported_not_failed(exported, trained_run, monkeypatch):
    pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install 'nfdseg[openvino]')")
    import nfdseg.serve.backends.openvino_backend as ovb

    def broken(self, *a, **k):
        raise ArtifactError("OpenVINO cannot compile model.onnx for CPU at input [1, 3, 48, 48]", seen="planted")

    monkeypatch.setattr(ovb.OpenVinoBackend, "__init__", broken)
    report = run_parity(exported, trained_run / "student", ParityBudget(max_images=2))
    reason = {n["artifact"]: n["reason"] for n in report["not_run"]}[OV_FP32]
    assert reason.startswith("OpenVINO cannot serve it: OpenVINO cannot compile") and "planted" in reason


def test_check_without_torch_runs_the_openvino_rows(exported, tmp_path):
    """The runtime-only install (no torch): `nfdseg check` compares with model.onnx on onnxruntime, and still runs
    OpenVINO's rows."""
    pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install 'nfdseg[openvino]')")
    out = tmp_path / "export"
    shutil.copytree(exported, out)
    code = ("import sys; sys.modules['torch'] = None\n"
            "from nfdseg.app.cli import main\n"
            f"sys.exit(main(['check', r'{out}', '--parity-images', '4']))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads((out / "parity.json").read_text())
    assert report["reference"] == "model.onnx" and report["torch_miou"] is None
    assert _rows(report)[OV_FP32]["passed"] and OV_FP32 in r.stdout
