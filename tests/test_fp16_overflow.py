"""FP16 export of models whose activations leave the float16 range (max 65504): the scan names the first op that
overflows, those nodes stay float32, the FP16 twin's outputs stay finite and parity passes; the manifest says so."""

import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from nfdseg.export.overflow import OVERFLOW_LIMIT, find_fp16_overflow
from nfdseg.fsutil import sha256_file
from nfdseg.manifest import read_manifest


def chain(scale: float) -> onnx.ModelProto:
    """x -> conv1 (x*scale) -> relu -> conv2 (/scale) -> conv3 (x2): the output is 2*relu(x), the middle is huge."""
    eye = np.eye(2, dtype=np.float32).reshape(2, 2, 1, 1)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], name="conv1"), helper.make_node("Relu", ["a"], ["b"], name="relu"),
             helper.make_node("Conv", ["b", "w2"], ["c"], name="conv2"), helper.make_node("Conv", ["c", "w3"], ["y"], name="conv3")]
    g = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 4, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, 4, 4])],
                          [numpy_helper.from_array(eye * scale, "w1"), numpy_helper.from_array(eye / scale, "w2"),
                           numpy_helper.from_array(eye * 2, "w3")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def test_scan_names_the_first_overflowing_op_and_what_reads_it():
    x = np.full((2, 2, 4, 4), 0.5, np.float32)
    x[1, 0, 2, 3] = 30.0  # one pixel of the second image: 30 * 3000 = 90000 > 65504
    res = find_fp16_overflow(chain(3000.0), x)
    assert res["first"] == {"node": "conv1", "op": "Conv", "max_abs": 90000.0}
    assert res["nodes"] == {"conv1": ["output"], "relu": ["output", "input"], "conv2": ["input"]}
    assert res["largest_abs"] == 90000.0 and res["images"] == 2 and res["limit"] == OVERFLOW_LIMIT
    assert find_fp16_overflow(chain(3000.0), x[:1])["fp32_nodes"] == [], "1500 is far inside the float16 range"
    down = find_fp16_overflow(chain(3000.0), x, downstream=True)
    assert down["fp32_nodes"] == ["conv1", "relu", "conv2", "conv3"] and down["downstream"]
    big = find_fp16_overflow(chain(20000.0), x[:1])  # weights above the converter's 1e4 clamp
    assert big["nodes"] == {"conv1": ["weights"]} and big["first"] is None


def _blow_up(src, dst, scale):
    """Copy a checkpoint with the classifier scaled by `scale`: the same label map, logits beyond float16."""
    shutil.copytree(src, dst)
    blob = torch.load(dst / "best.pt", weights_only=False)
    for k in ("head.classifier.weight", "head.classifier.bias"):
        blob["model"][k] = blob["model"][k] * scale
    torch.save(blob, dst / "best.pt")
    meta = json.loads((dst / "checkpoint.json").read_text())
    meta["sha256"] = sha256_file(dst / "best.pt")
    (dst / "checkpoint.json").write_text(json.dumps(meta))
    return dst


@pytest.fixture(scope="module")
def exploded(trained_run, tmp_path_factory):
    return _blow_up(trained_run / "student", tmp_path_factory.mktemp("fp16") / "student", 1e6)


def _fp16_result(out):
    parity = json.loads((out / "parity.json").read_text())
    return parity, next(r for r in parity["results"] if r["artifact"] == "model.fp16.onnx")


def test_logits_beyond_fp16_stay_fp32_and_pass_parity(exploded, tmp_path):
    from nfdseg.export.run import ExportConfig, run_export

    # Without the scan the FP16 twin overflows: the check below can fail.
    run_export(exploded, tmp_path / "plain", ExportConfig(engine="off", fp16_calibration_images=0))
    parity, fp16 = _fp16_result(tmp_path / "plain")
    assert not parity["passed"] and not fp16["passed"]

    summary = run_export(exploded, tmp_path / "guarded", ExportConfig(engine="off"))
    parity, fp16 = _fp16_result(tmp_path / "guarded")
    assert parity["passed"] and fp16["passed"], summary["parity"]["text"]
    assert fp16["pixel_agreement_pct"] >= 99.9
    m = read_manifest(tmp_path / "guarded/model.fp16.json")
    ov = m.onnx.fp16_overflow
    assert ov["first"]["op"] == "Conv" and "classifier" in ov["first"]["node"] and ov["first"]["max_abs"] > 65504
    assert ov["first"]["node"] in m.onnx.kept_fp32_nodes and any("Resize" in n for n in m.onnx.kept_fp32_nodes)
    assert summary["fp16"]["calibration_images"] == 4 and summary["fp16"]["first_overflow"] == ov["first"]

    sess = ort.InferenceSession(str(tmp_path / "guarded/model.fp16.onnx"), providers=["CPUExecutionProvider"])
    assert sess.get_outputs()[0].type == "tensor(float)"
    x = np.random.default_rng(0).normal(0, 1, (1, 3, 48, 48)).astype(np.float32)
    y = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    assert np.isfinite(y).all() and np.abs(y).max() > 65504, "the logits are kept at their fp32 size"


def test_ordinary_model_keeps_no_extra_nodes(exported):
    m = read_manifest(exported / "model.fp16.json")
    assert m.onnx.kept_fp32_nodes == () and m.onnx.fp16_overflow["first"] is None
    assert m.onnx.fp16_overflow["images"] == 4


def test_still_non_finite_falls_back_to_everything_after_the_first_overflow(exploded, tmp_path, monkeypatch):
    from nfdseg.export import run as export_run

    seen = []

    def non_finite_once(path, x):  # as if the runtime still overflowed with only the overflowing nodes in fp32
        seen.append(path)
        return len(seen) == 1

    monkeypatch.setattr(export_run, "_non_finite", non_finite_once)
    summary = export_run.run_export(exploded, tmp_path / "down", export_run.ExportConfig(engine="off"))
    assert summary["fp16"]["downstream"] and summary["fp16"]["still_non_finite"] is False and len(seen) == 2
    m = read_manifest(tmp_path / "down/model.fp16.json")
    ov = m.onnx.fp16_overflow
    assert ov["downstream"] and "after the first overflow" in {r for rs in ov["nodes"].values() for r in rs}
    first = list(m.onnx.kept_fp32_nodes).index(ov["first"]["node"])
    assert len(m.onnx.kept_fp32_nodes) > first + 2, "the first overflowing op and what follows it stay fp32"
    assert summary["parity"]["passed"], summary["parity"]["text"]
