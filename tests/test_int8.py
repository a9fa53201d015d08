"""INT8 (issue 18): calibration from the training split, the parity gate and its remedies ladder, serving through
Segmenter and the CLI, an INT8 engine from the Q/DQ model, and one clear error per bad input.

The model is a tiny ResNet DeepLabV3 trained 60 iterations without distillation (12 % mIoU on the synthetic val
split): the session's 6-iteration student predicts almost one class, so no quantization could move its mIoU."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

import nfdseg.export.int8 as int8_mod
from nfdseg.errors import ArtifactError, ConfigError, DataError
from nfdseg.export.int8 import CANDIDATE_FILE, Int8Options, calibration_set, export_int8
from nfdseg.export.run import ExportConfig, run_export
from nfdseg.manifest import read_manifest

from conftest import TINY_OVERRIDES, tensorrt_like

INT8 = dict(engine="off", fp16=True, int8=True, int8_calib_images=16)


@pytest.fixture(scope="module")
def sharp_model(tmp_path_factory) -> Path:
    from nfdseg.distill.config import load_run_config
    from nfdseg.distill.trainer import train_stage

    over = {**TINY_OVERRIDES, "teacher": {"model": {"arch": "deeplabv3_resnet_tiny"},
                                          "train": {"iters": 60, "batch_size": 8, "eval_every": 60,
                                                    "ckpt_every": 60, "log_every": 30}}}
    out = tmp_path_factory.mktemp("int8") / "model"
    train_stage(load_run_config("quick", over), "teacher", out, progress=False)
    return out


@pytest.fixture(scope="module")
def int8_export(sharp_model) -> Path:
    out = sharp_model.parent / "export"
    summary = run_export(sharp_model, out, ExportConfig(**INT8))
    assert summary["parity"]["passed"], summary["parity"]["text"]
    return out


def _saturated(monkeypatch):
    """Calibrate on images blown up 1000x: every activation range explodes, so real activations round to the zero
    point and the INT8 model loses the classes the fp32 model found (a deliberately broken calibration)."""
    real = int8_mod.calibration_set

    def broken(ckpt, m, n):
        c = real(ckpt, m, n)
        return dataclasses.replace(c, inputs=(c.inputs * 1000.0).astype(np.float32))

    monkeypatch.setattr(int8_mod, "calibration_set", broken)


def test_int8_model_manifest_and_parity(int8_export, sharp_model):
    m = read_manifest(int8_export / "model.int8.json", expect_kind="onnx")
    assert m.precision == "int8" and m.artifact == "model.int8.onnx" and m.parent == "model.onnx"
    info = m.onnx.int8
    assert info.calibration_images == 16 and info.calibration_split == "train" and info.calibration_method == "minmax"
    assert info.per_channel and info.weight_type == "int8" and info.activation_type == "uint8"
    assert info.remedies_used == () and [a["step"] for a in info.attempts] == ["as_configured"]
    ckpt = read_manifest(sharp_model / "checkpoint.json")
    assert info.calibration_sha256 == calibration_set(ckpt, read_manifest(int8_export / "model.json"), 16).sha256
    ops = [n.op_type for n in onnx.load(str(int8_export / "model.int8.onnx")).graph.node]
    assert ops.count("QuantizeLinear") > 10 and ops.count("DequantizeLinear") > ops.count("QuantizeLinear")
    parity = json.loads((int8_export / "parity.json").read_text())
    row = next(r for r in parity["results"] if r["precision"] == "int8")
    assert row["passed"] and abs(row["delta_miou"]) <= 1.0 and len(row["per_class_iou"]) == 8
    assert parity["int8"]["passed"] and parity["budget"]["int8_max_delta_miou"] == 1.0
    assert not (int8_export / CANDIDATE_FILE).exists()


def test_calibration_hash_follows_the_images(int8_export, sharp_model):
    ckpt, m = read_manifest(sharp_model / "checkpoint.json"), read_manifest(int8_export / "model.json")
    a, b, c = calibration_set(ckpt, m, 8), calibration_set(ckpt, m, 8), calibration_set(ckpt, m, 9)
    assert a.sha256 == b.sha256 != c.sha256 and a.inputs.shape == (8, 3, 48, 48) and len(c.names) == 9
    assert a.names[0].startswith("synthetic/train")


def test_gate_refuses_a_broken_calibration_and_keeps_fp32_fp16(sharp_model, tmp_path, monkeypatch, int8_export):
    _saturated(monkeypatch)
    out = tmp_path / "export"
    (out).mkdir()
    (out / "model.int8.onnx").write_bytes(b"stale")  # an earlier export's file must not survive a refusal
    summary = run_export(sharp_model, out, ExportConfig(**INT8, int8_remedies=()))
    assert not summary["parity"]["passed"]
    assert not (out / "model.int8.onnx").exists() and not (out / "model.int8.json").exists()
    assert not list(out.glob(".model.int8*")) and (out / "model.onnx").is_file() and (out / "model.fp16.onnx").is_file()
    parity = json.loads((out / "parity.json").read_text())
    fail = next(f for f in parity["failures"] if "int8" in f["artifact"])
    assert "ΔmIoU" in fail["rule"] and len(fail["per_class"]) == 8
    assert min(r["delta_iou"] for r in fail["per_class"]) < -5  # a class the fp32 model found is lost
    assert parity["int8"]["attempts"][0]["delta_miou"] < -1.0
    assert "INT8 REFUSED" in summary["parity"]["text"] and "ref IoU" in summary["parity"]["text"]
    assert all(r["passed"] for r in parity["results"])  # fp32 and fp16 still pass


def _fake_scores(deltas):
    calls = []

    def score(path):
        d = deltas[len(calls)]
        calls.append(read_manifest(Path(path).with_suffix(".json")))
        return {"miou": 10.0 + d, "delta_miou": d, "passed": abs(d) <= 1.0, "per_class_iou": {}}

    return score, calls


def test_remedies_ladder_order_and_record(int8_export, sharp_model, tmp_path):
    """Scores fail, fail (other method does not help), fail, pass: every remedy is tried in order, the other
    method is dropped because it did not help, the accepted model keeps the ends and sensitive nodes float."""
    import shutil

    out = tmp_path / "exp"
    out.mkdir()
    for name in ("model.onnx", "model.json"):
        shutil.copy(int8_export / name, out / name)
    ckpt, m = read_manifest(sharp_model / "checkpoint.json"), read_manifest(out / "model.json")
    score, calls = _fake_scores([-3.0, -2.0, -2.5, -0.4])
    outcome = export_int8(out / "model.onnx", m, ckpt, out, Int8Options(images=8), score)
    assert outcome.passed and [a["step"] for a in outcome.attempts] == [
        "as_configured", "keep_ends_float", "other_calibration_method", "keep_sensitive_float"]
    assert [c.onnx.int8.calibration_method for c in calls] == ["minmax", "minmax", "percentile", "minmax"]
    final = read_manifest(out / "model.int8.json")
    assert final.onnx.int8.remedies_used == ("keep_ends_float", "keep_sensitive_float")
    kept = set(final.onnx.int8.nodes_kept_float)
    assert len(kept) > len(calls[1].onnx.int8.nodes_kept_float) > 0
    graph = onnx.load(str(out / "model.int8.onnx")).graph
    producers = {o: n for n in graph.node for o in n.output}
    first_conv = next(n for n in graph.node if n.op_type == "Conv")
    assert first_conv.name in kept  # kept float: its weight is a float initializer, not a DequantizeLinear output
    assert producers.get(first_conv.input[1]) is None or producers[first_conv.input[1]].op_type != "DequantizeLinear"
    # none holds: nothing left that looks like an INT8 model
    score, _ = _fake_scores([-3.0, -2.0, -2.5, -1.5])
    outcome = export_int8(out / "model.onnx", m, ckpt, out, Int8Options(images=8), score)
    assert not outcome.passed and len(outcome.attempts) == 4
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "model.onnx"]


def test_segmenter_serves_int8(int8_export):
    from nfdseg.serve import Segmenter

    img = (np.random.default_rng(0).random((40, 56, 3)) * 255).astype(np.uint8)
    seg8 = Segmenter(int8_export, backend="onnxruntime", device="cpu", precision="int8")
    seg32 = Segmenter(int8_export, backend="onnxruntime", device="cpu")
    assert seg8.describe()["precision"] == "int8" and seg8.backend.path.name == "model.int8.onnx"
    assert seg32.describe()["precision"] == "fp32"  # auto never picks INT8
    a, b = seg8.predict(img), seg32.predict(img)
    assert a.labels.shape == (40, 56) and (a.labels == b.labels).mean() > 0.8
    auto = Segmenter(int8_export, precision="int8")  # auto: no engine here; onnxruntime, or OpenVINO if it probed faster
    assert auto.backend.name in ("onnxruntime", "openvino") and auto.backend.path.name == "model.int8.onnx"
    assert auto.describe()["precision"] == "int8" and auto.describe()["device"] == "cpu"


def test_cli_predict_eval_with_int8(int8_export, tmp_path):
    img = tmp_path / "a.png"
    Image.fromarray((np.random.default_rng(1).random((32, 32, 3)) * 255).astype(np.uint8)).save(img)
    cmd = [sys.executable, "-m", "nfdseg.app.cli"]
    r = subprocess.run(cmd + ["predict", str(int8_export), str(img), "--precision", "int8", "--out", str(tmp_path / "p")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "p" / "a_labels.png").is_file()
    r = subprocess.run(cmd + ["eval", str(int8_export), "--precision", "int8", "--quiet", "--limit", "4"],
                       capture_output=True, text=True)
    assert r.returncode == 0 and "(int8)" in r.stdout, r.stdout + r.stderr


def test_int8_errors(int8_export, exported, trained_run, tmp_path, sharp_model, monkeypatch):
    from nfdseg.serve import Segmenter

    with pytest.raises(ArtifactError, match="no model.int8.onnx") as e:
        Segmenter(exported, backend="onnxruntime", precision="int8")
    assert "--int8" in e.value.fix and "model.onnx" in e.value.seen
    with pytest.raises(ConfigError, match="torch backend cannot run INT8"):
        Segmenter(trained_run / "student", backend="torch", precision="int8")
    with pytest.raises(ConfigError, match="at least 8 images"):
        run_export(sharp_model, tmp_path / "a", ExportConfig(**{**INT8, "int8_calib_images": 4}))
    with pytest.raises(DataError, match="training split has only 64") as e:
        run_export(sharp_model, tmp_path / "b", ExportConfig(**{**INT8, "int8_calib_images": 500}))
    assert "at most 64" in e.value.fix
    with pytest.raises(ConfigError, match="INT8 engine is built from the INT8 Q/DQ model"):
        run_export(sharp_model, tmp_path / "c", ExportConfig(engine="on", engine_precision="int8"))
    with pytest.raises(ConfigError, match="symmetric int8 activations"):
        run_export(sharp_model, tmp_path / "c", ExportConfig(**{**INT8, "engine": "on"}, engine_precision="int8"))
    with pytest.raises(ConfigError, match="unknown config key|must be one of|not one of"):
        from nfdseg.config import check_choices
        check_choices(ExportConfig(int8_calib_method="median"))
    # an unreadable calibration image on disk
    from nfdseg import data as data_mod
    from nfdseg.data import SYNTHETIC_CLASSES, FileSource

    pairs = []
    for i in range(10):
        im, mk = tmp_path / f"im{i}.png", tmp_path / f"mk{i}.png"
        Image.fromarray(np.zeros((48, 48, 3), np.uint8)).save(im)
        Image.fromarray(np.zeros((48, 48), np.uint8)).save(mk)
        pairs.append((im, mk))
    pairs[3][0].write_bytes(b"not a png")
    monkeypatch.setattr(data_mod, "build_source", lambda cfg, split: FileSource(pairs, SYNTHETIC_CLASSES, split))
    ckpt, m = read_manifest(sharp_model / "checkpoint.json"), read_manifest(int8_export / "model.json")
    with pytest.raises(DataError, match="calibration image 3 of the training split cannot be read") as e:
        calibration_set(ckpt, m, 8)
    assert "im3.png" in e.value.seen
    # the CLI: one clear error, no traceback
    r = subprocess.run([sys.executable, "-m", "nfdseg.app.cli", "eval", str(exported), "--precision", "int8"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "no model.int8.onnx" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.tensorrt
@pytest.mark.skipif(tensorrt_like() is None or tensorrt_like().flavor != "tensorrt_rtx",
                    reason="needs tensorrt-rtx (builds engines without a GPU)")
def test_int8_engine_from_qdq_with_tensorrt_rtx(sharp_model, tmp_path):
    """A symmetric Q/DQ model parsed strongly typed: the Q/DQ nodes define the precision (TensorRT 11 / RTX)."""
    from nfdseg.export.onnx2engine import EngineProfile, onnx2engine

    out = tmp_path / "export"
    run_export(sharp_model, out, ExportConfig(**{**INT8, "int8_activations": "int8"}))
    m = onnx2engine(out / "model.onnx", read_manifest(out / "model.json"), out, "int8", None, EngineProfile(1, 1, 2),
                    allow_rtx=True, int8_onnx=out / "model.int8.onnx")
    assert (out / m.artifact).is_file() and m.precision == "int8" and m.engine.strongly_typed
    assert m.parent == "model.int8.onnx" and m.config["engine_build"]["fp16_path"] == "int8_strongly_typed"
    assert read_manifest((out / m.artifact).with_suffix(".json"), expect_kind="engine").sha256 == m.sha256
