"""examples/cpp: the C++ program builds, gives exactly Segmenter.predict's labels (and nfdseg predict's overlay)
on odd-sized images of every decoded kind, and refuses bad input with one message and a non-zero exit."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cpp_probe import make_images, make_probe_export

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "examples" / "cpp" / "build.sh"
CRASH_SIGNS = ("terminate called", "Segmentation fault", "Aborted", "core dumped", "Traceback")


@pytest.fixture(scope="session")
def cpp_program(tmp_path_factory) -> Path:
    """examples/cpp built with build.sh (headers fetched by apt, the onnxruntime wheel's library)."""
    import sys

    build = tmp_path_factory.mktemp("cpp_build")
    env = {**os.environ, "BUILD_DIR": str(build), "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(BUILD)], env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode == 3:  # a prerequisite (compiler, cmake, a header, the ORT headers) cannot be had here
        pytest.skip(f"the C++ example cannot be built here: {proc.stderr.strip()}")
    assert proc.returncode == 0, f"examples/cpp/build.sh failed:\n{proc.stdout}\n{proc.stderr}"
    program = Path(proc.stdout.strip().splitlines()[-1])
    assert program.is_file()
    return program


def run_cpp(program: Path, *args, expect_rc: int | None = 0) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(program), *map(str, args)], capture_output=True, text=True, timeout=120)
    output = proc.stdout + proc.stderr
    assert not any(s in output for s in CRASH_SIGNS), output
    if expect_rc is not None:
        assert proc.returncode == expect_rc, output
    return proc


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    return make_images(tmp_path_factory.mktemp("cpp_images"))


def assert_same_as_python(program: Path, artifact: Path, images: list[Path], out: Path, min_classes: int = 1) -> None:
    """The C++ label maps equal Segmenter.predict's pixel for pixel, and its overlays equal nfdseg's."""
    from nfdseg.preprocess import load_image, overlay
    from nfdseg.serve import Segmenter

    run_cpp(program, artifact, *images, "--out", out, "--threads", 1)
    seg = Segmenter(artifact, backend="onnxruntime", device="cpu")
    seen = set()
    for path in images:
        ref = seg.predict(path).labels
        got = np.asarray(Image.open(out / f"{path.stem}_labels.png"))
        assert got.shape == ref.shape, path.name
        agreement = float((got == ref).mean())
        assert agreement == 1.0, f"{path.name}: {agreement * 100:.3f} % of pixels agree"
        ov = np.asarray(Image.open(out / f"{path.stem}_overlay.png").convert("RGB"))
        np.testing.assert_array_equal(ov, overlay(load_image(path), ref, seg.palette, 0.5), err_msg=path.name)
        seen.update(np.unique(ref).tolist())
    assert len(seen) >= min_classes, f"only classes {sorted(seen)} seen: the comparison would be too weak"


@pytest.mark.parametrize("color_order", ["RGB", "BGR"])
def test_probe_labels_equal_python_on_every_image_kind(cpp_program, images, tmp_path, color_order):
    """The probe's labels are the preprocessed grey levels: equality here is resize, EXIF, alpha, 16-bit,
    JPEG decoding, normalisation and colour order all matching Python's to the last bit."""
    probe = make_probe_export(tmp_path / "probe", color_order=color_order)
    assert_same_as_python(cpp_program, probe, images, tmp_path / "out", min_classes=100)


def test_probe_is_sensitive_to_the_resize_filter(images, tmp_path):
    """The probe tells resize filters apart: with Pillow's BICUBIC instead of BILINEAR most labels change,
    so the equality above cannot come from a model that ignores its input."""
    from nfdseg.preprocess import load_image, normalize, resize_labels
    from nfdseg.serve import Segmenter

    probe = make_probe_export(tmp_path / "probe")
    seg = Segmenter(probe, backend="onnxruntime", device="cpu")
    path = next(p for p in images if p.name == "rgb_37x53.png")
    rgb = load_image(path)
    other = np.asarray(Image.fromarray(rgb).resize((20, 24), Image.BICUBIC))
    logits = seg.backend.infer(normalize(other, seg.manifest.preprocess)[None])
    changed = (resize_labels(logits[0].argmax(0).astype(np.uint8), rgb.shape[:2]) != seg.predict(path).labels).mean()
    assert changed > 0.5


@pytest.mark.parametrize("model", ["", "model.onnx", "model.fp16.onnx"])
def test_exported_student_labels_equal_segmenter(cpp_program, exported, images, tmp_path, model):
    """The tiny trained student as `nfdseg export` wrote it: the directory (fp32, as Segmenter picks on a CPU)
    and each ONNX file given by itself."""
    artifact = exported / model if model else exported
    assert_same_as_python(cpp_program, artifact, images[:8], tmp_path / "out", min_classes=2)


def test_in_graph_normalisation_and_label_output(cpp_program, trained_run, images, tmp_path):
    """--normalize-in-graph (uint8 NHWC input) and --output labels (uint8 label map out of the graph)."""
    from nfdseg.export.run import ExportConfig, run_export
    from nfdseg.export.torch2onnx import OnnxExportOptions

    cfg = ExportConfig(onnx=OnnxExportOptions(output="labels", normalize_in_graph=True), fp16=False, engine="off")
    run_export(trained_run / "student", tmp_path / "export", cfg)
    assert_same_as_python(cpp_program, tmp_path / "export", images[:8], tmp_path / "out", min_classes=2)


def test_latency_report(cpp_program, tmp_path, images):
    probe = make_probe_export(tmp_path / "probe")
    proc = run_cpp(cpp_program, probe, images[0], images[1], "--out", tmp_path / "out", "--repeat", 3,
                   "--json", tmp_path / "lat.json")
    assert proc.stdout.count(" ms (decode ") == 2
    report = json.loads((tmp_path / "lat.json").read_text())
    assert [len(r["total_ms_all"]) for r in report["images"]] == [3, 3]
    assert all(r["total_ms"] > 0 and r["infer_ms"] <= r["total_ms"] for r in report["images"])
    assert report["backend"].startswith("onnxruntime ")


# ---- bad input: one message, a non-zero exit, never a crash ---------------------------------------------------

@pytest.fixture
def probe_copy(tmp_path) -> Path:
    return make_probe_export(tmp_path / "probe")


def _error(proc) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    return proc.stderr


def test_missing_and_wrong_manifest(cpp_program, probe_copy, images, tmp_path):
    img = images[0]
    err = _error(run_cpp(cpp_program, tmp_path / "nowhere", img, expect_rc=2))
    assert "artifact not found" in err
    (probe_copy / "model.json").rename(probe_copy / "kept.json")
    assert "manifest not found" in _error(run_cpp(cpp_program, probe_copy, img, expect_rc=2))
    (probe_copy / "model.json").write_text("{ not json")
    assert "is not valid JSON" in _error(run_cpp(cpp_program, probe_copy, img, expect_rc=2))
    good = json.loads((probe_copy / "kept.json").read_text())
    (probe_copy / "model.json").write_text(json.dumps({**good, "format_version": 99}))
    assert "format version 99" in _error(run_cpp(cpp_program, probe_copy, img, expect_rc=2))
    broken = {**good, "preprocess": {**good["preprocess"], "input_size": [24]}}
    (probe_copy / "model.json").write_text(json.dumps(broken))
    assert "input_size must be [height, width]" in _error(run_cpp(cpp_program, probe_copy, img, expect_rc=2))
    del good["classes"]
    (probe_copy / "model.json").write_text(json.dumps(good))
    assert "field 'classes' is missing" in _error(run_cpp(cpp_program, probe_copy, img, expect_rc=2))


def test_model_the_manifest_does_not_describe(cpp_program, probe_copy, images, exported, tmp_path):
    img = images[0]
    good = json.loads((probe_copy / "model.json").read_text())

    def with_manifest(**changes) -> str:
        (probe_copy / "model.json").write_text(json.dumps({**good, **changes}))
        return _error(run_cpp(cpp_program, probe_copy, img, expect_rc=2))

    # another model file under the manifest: its sha256 differs
    shutil.copy(exported / "model.onnx", probe_copy / "model.onnx")
    assert "sha256 differs" in _error(run_cpp(cpp_program, probe_copy, img, expect_rc=2))
    good["sha256"] = ""  # without a hash to catch it, the graph itself is compared with the manifest
    err = with_manifest()
    assert "does not match its manifest" in err and "256 classes" in err
    make_probe_export(probe_copy)
    good = json.loads((probe_copy / "model.json").read_text())
    inputs = [{**good["inputs"][0], "name": "image"}]
    assert "graph input 'input'" in with_manifest(inputs=inputs)
    assert "graph input float32" in with_manifest(onnx={**good["onnx"], "normalize_in_graph": True})
    names = good["classes"]["names"][:8]
    err = with_manifest(classes={**good["classes"], "names": names, "palette": good["classes"]["palette"][:8]})
    assert "8 classes" in err and "does not match its manifest" in err


def test_unreadable_images_are_skipped_with_a_message(cpp_program, probe_copy, images, tmp_path):
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"this is not an image")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(images[0].read_bytes()[:200])
    truncated_jpeg = tmp_path / "truncated_jpeg.jpg"  # Pillow refuses it too ("image file is truncated")
    jpeg = next(p for p in images if p.suffix == ".jpg").read_bytes()
    truncated_jpeg.write_bytes(jpeg[: len(jpeg) // 2])
    tiny = tmp_path / "tiny.png"
    Image.fromarray(np.zeros((1, 9, 3), np.uint8)).save(tiny)
    from nfdseg.errors import InputError
    from nfdseg.preprocess import load_image

    with pytest.raises(InputError):
        load_image(truncated_jpeg)
    proc = run_cpp(cpp_program, probe_copy, garbage, truncated, truncated_jpeg, tmp_path / "missing.jpg", tiny,
                   tmp_path, images[0], "--out", tmp_path / "out", expect_rc=1)
    assert proc.stdout.count("skipped: error:") == 6, proc.stdout
    assert "not a readable image" in proc.stdout and "image file not found" in proc.stdout
    assert "too small to segment" in proc.stdout
    assert (tmp_path / "out" / f"{images[0].stem}_labels.png").is_file()  # the good image is still done
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"{images[0].stem}_labels.png",
                                                                   f"{images[0].stem}_overlay.png"]


def test_bad_options_and_unavailable_runtimes(cpp_program, probe_copy, images):
    img = images[0]
    assert "pass an artifact and at least one image" in _error(run_cpp(cpp_program, probe_copy, expect_rc=2))
    assert "unknown option --frobnicate" in _error(run_cpp(cpp_program, probe_copy, img, "--frobnicate", expect_rc=2))
    assert "--alpha needs a number" in _error(run_cpp(cpp_program, probe_copy, img, "--alpha", "x", expect_rc=2))
    assert "unknown device" in _error(run_cpp(cpp_program, probe_copy, img, "--device", "gpu", expect_rc=2))
    # the wheel's CPU library has no CUDA provider: said, not silently replaced by the CPU
    err = _error(run_cpp(cpp_program, probe_copy, img, "--device", "cuda", expect_rc=2))
    assert "could not add the CUDA execution provider" in err
    err = _error(run_cpp(cpp_program, probe_copy, img, "--backend", "tensorrt", expect_rc=2))
    assert "holds no TensorRT engine" in err


def test_engine_needs_the_tensorrt_build(cpp_program, probe_copy, images):
    """An export directory with an engine: this (CPU) build says it has no TensorRT backend, and an engine's
    manifest handed to the ONNX Runtime backend is refused, both before anything is loaded."""
    from dataclasses import replace

    from nfdseg.manifest import EngineInfo, read_manifest, write_manifest

    (probe_copy / "probe_fp32_trt10.13_sm87.engine").write_bytes(b"not deserialized by this build")
    info = EngineInfo(tensorrt_version="10.13.0.35", tensorrt_flavor="tensorrt", gpu_name="Orin",
                      compute_capability="8.7", precision_requested="fp32", precision_built="fp32",
                      strongly_typed=False)
    engine = replace(read_manifest(probe_copy / "model.json"), kind="engine", engine=info, sha256="", created="",
                     artifact="probe_fp32_trt10.13_sm87.engine")
    write_manifest(engine, probe_copy / "probe_fp32_trt10.13_sm87.json")
    err = _error(run_cpp(cpp_program, probe_copy, images[0], "--backend", "tensorrt", expect_rc=2))
    assert "built without TensorRT" in err and "NFDSEG_WITH_TENSORRT=ON" in err
    err = _error(run_cpp(cpp_program, probe_copy / "probe_fp32_trt10.13_sm87.engine", images[0], expect_rc=2))
    assert "is a TensorRT engine, not an ONNX model" in err
