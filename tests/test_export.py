"""Export: ONNX contents and options, FP16, parity budgets, TensorRT build path, Triton config, bad inputs."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from nfdseg.models.checkpoint import load_model_from_dir
from nfdseg.errors import ArtifactError, ConfigError
from nfdseg.export.parity import ParityBudget, run_parity
from nfdseg.export.run import ExportConfig, run_export
from nfdseg.export.torch2onnx import IR_VERSION, OnnxExportOptions, load_onnx_checked
from nfdseg.manifest import read_manifest

from conftest import tensorrt_like


def test_onnx_graph_and_manifest(exported, trained_run):
    m = read_manifest(exported / "model.json", expect_kind="onnx")
    proto = onnx.load(str(exported / "model.onnx"))
    assert proto.ir_version == IR_VERSION and m.onnx.opset == 17
    assert [i.name for i in proto.graph.input] == ["input"] and [o.name for o in proto.graph.output] == ["logits"]
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["N", 3, "H", "W"]
    student, _ = load_model_from_dir(trained_run / "student")
    n_conv = sum(isinstance(mod, torch.nn.Conv2d) for mod in student.modules())
    assert sum(n.op_type == "Conv" for n in proto.graph.node) == n_conv, "only the student's convs are exported"
    assert m.parent_sha256 and m.classes.num_classes == 8 and m.inputs[0].dtype == "float32"


def test_dynamic_size_matches_torch(exported, trained_run):
    student, _ = load_model_from_dir(trained_run / "student")
    x = np.random.default_rng(0).standard_normal((3, 3, 40, 72)).astype(np.float32)
    ref = student(torch.from_numpy(x)).detach().numpy()
    out = ort.InferenceSession(str(exported / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    assert out.shape == (3, 8, 40, 72)
    np.testing.assert_allclose(out, ref, atol=1e-4)


def test_fp16_model_keeps_fp32_io_and_passes_budget(exported):
    proto = onnx.load(str(exported / "model.fp16.onnx"))
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert proto.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(init.data_type == onnx.TensorProto.FLOAT16 for init in proto.graph.initializer)
    report = json.loads((exported / "parity.json").read_text())
    fp16 = next(r for r in report["results"] if r["artifact"] == "model.fp16.onnx")
    assert fp16["passed"] and abs(fp16["delta_miou"]) <= 0.5 and fp16["max_abs_error"] < 0.1
    fp32 = next(r for r in report["results"] if r["artifact"] == "model.onnx")
    assert fp32["pixel_agreement_pct"] >= 99.9 and fp32["max_abs_error"] < 1e-3
    assert read_manifest(exported / "model.fp16.json").precision == "fp16"


def test_in_graph_normalization_and_argmax(trained_run, tmp_path):
    from nfdseg.serve import Segmenter

    cfg = ExportConfig(onnx=OnnxExportOptions(output="labels", normalize_in_graph=True), fp16=False, engine="off")
    summary = run_export(trained_run / "student", tmp_path, cfg)
    assert summary["parity"]["passed"]
    proto = onnx.load(str(tmp_path / "model.onnx"))
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert proto.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    imgs = [np.random.default_rng(i).integers(0, 255, (48, 48, 3), dtype=np.uint8) for i in range(4)]
    a = [p.labels for p in Segmenter(tmp_path / "model.onnx").predict(imgs)]
    b = [p.labels for p in Segmenter(trained_run / "student", backend="torch").predict(imgs)]
    agree = np.mean([np.mean(x == y) for x, y in zip(a, b)])
    assert agree >= 0.999


def test_static_hw_fixes_height_and_width_only(exported, trained_run, tmp_path):
    """`nfdseg export --static-hw`: H and W are the training input size (48x48) in the graph and the manifest,
    the batch stays dynamic, other sizes are refused by onnxruntime, and served images of any size match the
    dynamic export (the runtime resizes to the input size either way)."""
    from nfdseg.serve import Segmenter

    r = subprocess.run([sys.executable, "-m", "nfdseg.app.cli", "export", str(trained_run / "student"), "--static-hw",
                        "--no-fp16", "--engine", "off", "--parity-images", "4", "--out", str(tmp_path)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    proto = onnx.load(str(tmp_path / "model.onnx"))
    dims = lambda t: [d.dim_param or d.dim_value for d in t.type.tensor_type.shape.dim]  # noqa: E731
    assert dims(proto.graph.input[0]) == ["N", 3, 48, 48]
    m = read_manifest(tmp_path / "model.json", expect_kind="onnx")
    assert list(m.inputs[0].shape) == ["N", 3, 48, 48] and list(m.outputs[0].shape) == ["N", 8, 48, 48]
    static = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    dynamic = ort.InferenceSession(str(exported / "model.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((3, 3, 48, 48)).astype(np.float32)
    out = static.run(None, {"input": x})[0]
    assert out.shape == (3, 8, 48, 48)
    np.testing.assert_allclose(out, dynamic.run(None, {"input": x})[0], atol=1e-4)
    with pytest.raises(Exception, match="(?i)dimension"):
        static.run(None, {"input": x[:, :, :40, :]})
    imgs = [np.random.default_rng(i).integers(0, 255, (h, w, 3), dtype=np.uint8)
            for i, (h, w) in enumerate([(37, 91), (48, 48), (64, 20)])]
    a = Segmenter(tmp_path / "model.onnx", backend="onnxruntime", device="cpu").predict(imgs)
    b = Segmenter(exported / "model.onnx", backend="onnxruntime", device="cpu").predict(imgs)
    assert all(np.array_equal(p.labels, q.labels) for p, q in zip(a, b))


def test_parity_budget_failure_names_images(exported, trained_run):
    report = run_parity(exported, trained_run / "student", ParityBudget(fp32_min_agreement=100.01, max_images=8))
    assert not report["passed"]
    fail = next(f for f in report["failures"] if f["artifact"] == "model.onnx")
    assert "pixel agreement" in fail["rule"]


def test_check_command_exit_codes(exported, trained_run, tmp_path):
    # on a copy: `check` rewrites parity.json, and the session's export must keep its own record for other tests
    exported = Path(shutil.copytree(exported, tmp_path / "export"))
    ok = subprocess.run([sys.executable, "-m", "nfdseg.app.cli", "check", str(exported), "--parity-images", "8"],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "model.fp16.onnx" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "nfdseg.app.cli", "check", str(exported), "--parity-images", "8",
                          "--fp32-min-agreement", "100.5"], capture_output=True, text=True)
    assert bad.returncode == 1 and "FAILED model.onnx" in bad.stdout


def test_bad_inputs(trained_run, tmp_path, exported):
    with pytest.raises(ArtifactError, match="not an nfdseg checkpoint directory"):
        run_export(tmp_path, tmp_path / "out")
    fake = tmp_path / "fake"
    shutil.copytree(trained_run / "student", fake)
    torch.save({"state_dict": {}}, fake / "best.pt")
    with pytest.raises(ArtifactError, match="does not match its manifest"):
        run_export(fake, tmp_path / "out")
    with pytest.raises(ArtifactError, match="disagrees with the checkpoint's 8 classes"):
        run_export(trained_run / "student", tmp_path / "out", expect_classes=19)
    with pytest.raises(ConfigError, match="opset 11 is not supported"):
        run_export(trained_run / "student", tmp_path / "out", ExportConfig(onnx=OnnxExportOptions(opset=11)))
    broken = tmp_path / "broken.onnx"
    broken.write_bytes((exported / "model.onnx").read_bytes()[:5000])
    with pytest.raises(ArtifactError, match="not a valid ONNX model"):
        load_onnx_checked(broken)
    cli = subprocess.run([sys.executable, "-m", "nfdseg.app.cli", "export", str(tmp_path / "nothing")],
                         capture_output=True, text=True)
    assert cli.returncode == 2 and "error:" in cli.stderr and "Traceback" not in cli.stderr


def test_engine_compatibility_refusals(exported):
    from dataclasses import replace

    from nfdseg.manifest import EngineInfo
    from nfdseg.serve.backends.tensorrt_backend import check_engine_compatible
    from nfdseg.serve.backends.trt_compat import GpuInfo, TrtModule

    m = read_manifest(exported / "model.json")
    eng = replace(m, kind="engine", engine=EngineInfo("10.13.0", "tensorrt", "NVIDIA H100", "9.0", "fp16", "fp16", False))
    with pytest.raises(ArtifactError, match="built with tensorrt 10.13.0; this machine has tensorrt 11.0"):
        check_engine_compatible(eng, TrtModule(None, "tensorrt", "11.0.1"), GpuInfo("NVIDIA H100", "9.0"))
    with pytest.raises(ArtifactError, match="compute capability 9.0"):
        check_engine_compatible(eng, TrtModule(None, "tensorrt", "10.13.0"), GpuInfo("NVIDIA A100", "8.0"))
    with pytest.raises(ArtifactError, match="needs a CUDA GPU"):
        check_engine_compatible(eng, TrtModule(None, "tensorrt", "10.13.0"), None)
    # TensorRT refuses an engine of another patch release ("expecting library version X got Y"): so do we
    with pytest.raises(ArtifactError, match="built with tensorrt 10.13.0; this machine has tensorrt 10.13.2"):
        check_engine_compatible(eng, TrtModule(None, "tensorrt", "10.13.2"), GpuInfo("NVIDIA H100", "9.0"))
    assert check_engine_compatible(eng, TrtModule(None, "tensorrt", "10.13.0"), GpuInfo("NVIDIA H100", "9.0")) == []


@pytest.mark.tensorrt
@pytest.mark.skipif(tensorrt_like() is None, reason="neither tensorrt nor tensorrt-rtx is installed")
def test_engine_build_path(trained_run, tmp_path):
    """Builds a real engine with whatever TensorRT flavour is installed (tensorrt-rtx builds without a GPU)."""
    tm = tensorrt_like()
    cfg = ExportConfig(engine="on", engine_allow_rtx=True, parity=ParityBudget(max_images=4),
                       triton_dir=str(tmp_path / "triton"))
    summary = run_export(trained_run / "student", tmp_path / "exp", cfg)
    eng = summary["engine"]
    assert eng["path"] and eng["precision_built"] == "fp16"
    m = read_manifest(tmp_path / "exp" / (eng["path"].rsplit("/", 1)[1].replace(".engine", ".json")), expect_kind="engine")
    assert m.engine.tensorrt_flavor == tm.flavor and m.engine.precision_built == "fp16"
    assert m.engine.strongly_typed == tm.strongly_typed_only
    assert m.engine.profile["input"][2] == [8, 3, 48, 48]
    assert f"_fp16_trt{tm.short_version}_" in m.artifact
    assert (tmp_path / "exp" / m.artifact).with_suffix(".log").stat().st_size > 0
    assert (tmp_path / "triton/nfdseg_trt/1/model.plan").is_file()
    report = json.loads((tmp_path / "exp/parity.json").read_text())
    not_run = {n["artifact"]: n["reason"] for n in report["not_run"]}
    ran = {r["artifact"]: r for r in report["results"]}
    from nfdseg.serve.backends.trt_compat import current_gpu

    if current_gpu() is None:  # built without a GPU (TensorRT-RTX can): parity must say it did not run, and why
        assert m.artifact in not_run and m.artifact not in ran, report
        assert "GPU" in not_run[m.artifact], not_run[m.artifact]
    else:  # on a GPU the engine is checked like any artifact
        assert m.artifact in ran and m.artifact not in not_run and ran[m.artifact]["passed"], report
    assert report["passed"] and not report["failures"]


def test_triton_config_parses_with_tritons_protobuf(exported, trained_run):
    model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2",
                                           reason="tritonclient[grpc] is not installed")
    from google.protobuf import text_format

    m = read_manifest(exported / "model.json")
    cfg = text_format.Parse((trained_run / "triton/nfdseg_onnx/config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert cfg.platform == "onnxruntime_onnx" and cfg.max_batch_size == 8
    assert cfg.input[0].name == m.inputs[0].name and cfg.output[0].name == m.outputs[0].name
    assert cfg.input[0].data_type == model_config_pb2.TYPE_FP32 and list(cfg.input[0].dims) == [3, -1, -1]
    assert list(cfg.output[0].dims) == [8, -1, -1]
    assert cfg.dynamic_batching.max_queue_delay_microseconds > 0 and list(cfg.dynamic_batching.preferred_batch_size)
    assert (trained_run / "triton/nfdseg_onnx/1/model.onnx").is_file()


def _gpu_and_tensorrt_reason():
    from nfdseg.serve.backends.trt_compat import current_gpu

    tm = tensorrt_like()
    if tm is None:
        return "TensorRT is not installed"
    if current_gpu() is None:
        return "running a TensorRT engine needs a CUDA GPU and cuda-python; none here"
    if tm.flavor == "tensorrt_rtx":
        return "only TensorRT-RTX is installed; its engines target RTX GPUs, not this one"
    return None


@pytest.mark.gpu
@pytest.mark.tensorrt
@pytest.mark.skipif(_gpu_and_tensorrt_reason() is not None, reason=str(_gpu_and_tensorrt_reason()))
def test_engine_runs_and_matches_onnx(trained_run, tmp_path):
    """On a GPU with TensorRT: build, then serve through TensorRTBackend (set_input_shape, execute_async_v3)."""
    from nfdseg.serve import Segmenter

    cfg = ExportConfig(engine="on", profile=__import__("nfdseg.export.onnx2engine", fromlist=["x"]).EngineProfile(1, 2, 4))
    summary = run_export(trained_run / "student", tmp_path, cfg)
    assert summary["parity"]["passed"], summary["parity"]["text"]
    imgs = [np.random.default_rng(i).integers(0, 255, (48, 48, 3), dtype=np.uint8) for i in range(6)]
    trt_seg = Segmenter(tmp_path, backend="tensorrt")
    assert trt_seg.backend.max_batch == 4  # 6 images are split 4 + 2
    a = trt_seg.predict(imgs)
    b = Segmenter(tmp_path / "model.onnx", backend="onnxruntime", device="cpu").predict(imgs)
    assert np.mean([np.mean(x.labels == y.labels) for x, y in zip(a, b)]) >= 0.99
