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

from cpp_probe import make_images, make_pillow_cases, make_probe_export

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


# ---- files stb_image reads otherwise than Pillow (issue 27): read as Pillow reads them -------------------------

@pytest.fixture(scope="module")
def pillow_cases(tmp_path_factory) -> dict[str, list[Path]]:
    return make_pillow_cases(tmp_path_factory.mktemp("pillow_cases"))


def _as_stored(path: Path) -> np.ndarray:
    """The pixels as stored, without the orientation Pillow's metadata asks for."""
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.mark.parametrize("kind", ["xmp_jpeg", "png_metadata", "pnm", "bmp32", "png_no_iend"])
def test_files_read_as_pillow_reads_them(cpp_program, pillow_cases, tmp_path, kind):
    """Orientation from XMP and PNG text, PGM/PPM maxvals, 32-bit BMP padding, PNG without IEND: the C++ labels
    and overlays equal Segmenter.predict's (each file first shown to be a case where the reading matters)."""
    from nfdseg.preprocess import load_image

    files = pillow_cases[kind]
    for path in files:
        got = load_image(path)
        if kind in ("xmp_jpeg", "png_metadata"):
            if got.shape == _as_stored(path).shape and np.array_equal(got, _as_stored(path)):
                pytest.skip(f"this Pillow ({Image.__version__}) does not apply the orientation of {path.name}")
        elif kind == "pnm" and "dark" not in path.name:
            assert got.max() == 255 and got.min() < 255, f"{path.name}: maxval is scaled to white"
        elif kind == "bmp32":
            raw = path.read_bytes()
            assert int.from_bytes(raw[28:30], "little") == 32 and int.from_bytes(raw[30:34], "little") == 0
            assert Image.open(path).mode == "RGB", "Pillow: BGRX, the fourth byte is padding"
        elif kind == "png_no_iend":
            assert b"IEND" not in path.read_bytes()
    assert_same_as_python(cpp_program, make_probe_export(tmp_path / "probe"), files, tmp_path / "out",
                          min_classes=20)


def test_png_cut_short_is_read_or_refused_as_pillow_does(cpp_program, tmp_path):
    """A PNG cut at every point of its last 40 bytes: the C++ program reads exactly the ones Pillow reads
    (IEND, its CRC and the zlib checksum may be missing; the image data may not), with the same labels."""
    import io

    from nfdseg.errors import InputError
    from nfdseg.preprocess import load_image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(5).integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(buf, "PNG")
    readable, refused = [], []
    for cut in range(1, 41):
        path = tmp_path / f"cut{cut:02d}.png"
        path.write_bytes(buf.getvalue()[:-cut])
        try:
            load_image(path)
            readable.append(path)
        except InputError:
            refused.append(path)
    assert len(readable) >= 12 and len(refused) >= 12, (len(readable), len(refused))
    probe = make_probe_export(tmp_path / "probe")
    proc = run_cpp(cpp_program, probe, *readable, *refused, "--out", tmp_path / "out", expect_rc=1)
    skipped = {p.name for p in refused + readable if f"{p}: not a readable image" in proc.stdout + proc.stderr}
    assert skipped == {p.name for p in refused}
    assert_same_as_python(cpp_program, probe, readable, tmp_path / "out2", min_classes=20)


def test_corrupt_headers_and_short_bmps_are_refused_as_pillow_refuses_them(cpp_program, tmp_path):
    """Pillow checks the CRC and type of every PNG chunk before the image data, and that a BMP holds all its
    rows (stb_image does neither: it decoded them); after the image data it stops at a chunk it cannot parse."""
    import io

    from PIL import PngImagePlugin

    from nfdseg.errors import InputError
    from nfdseg.preprocess import load_image

    rng = np.random.default_rng(3)
    buf = io.BytesIO()
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "a text chunk before the image data")
    Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(buf, "PNG", pnginfo=info)
    png = buf.getvalue()
    at = png.index(b"tEXt")
    refused = {"bad_crc.png": png[:at + 6] + bytes([png[at + 6] ^ 1]) + png[at + 7:],
               "bad_type.png": png[:at] + b"t$Xt" + png[at + 4:]}
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (21, 31, 3), dtype=np.uint8)).save(buf, "BMP")
    refused["short.bmp"] = buf.getvalue()[:-10]
    readable = {"garbage_after_idat.png": png[:-12] + b"\x00\x00\x00\x05@@@@ trailing"}
    for name, data in {**refused, **readable}.items():
        (tmp_path / name).write_bytes(data)
    for name in refused:
        with pytest.raises(InputError):
            load_image(tmp_path / name)
    probe = make_probe_export(tmp_path / "probe")
    proc = run_cpp(cpp_program, probe, *(tmp_path / n for n in refused), "--out", tmp_path / "out", expect_rc=1)
    assert "bad header checksum in tEXt" in proc.stderr and "broken PNG file (chunk t$Xt)" in proc.stderr
    assert "short.bmp: not a readable image" in proc.stderr and "image file is truncated" in proc.stderr
    assert proc.stderr.count("error: ") == 3, proc.stderr
    assert_same_as_python(cpp_program, probe, [tmp_path / n for n in readable], tmp_path / "out2", min_classes=20)


def test_huge_png_is_too_large_not_unknown(cpp_program, probe_copy, tmp_path):
    """A 20000x20000 PNG header (a decompression bomb): "too large", naming the limit, in C++ and Python."""
    import struct
    import zlib

    from nfdseg.errors import InputError
    from nfdseg.preprocess import load_image

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    huge = tmp_path / "huge.png"
    huge.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b""))
    with pytest.raises(InputError, match="image is too large") as e:
        load_image(huge)
    assert "400000000 pixels, limit 64000000" in e.value.seen
    proc = run_cpp(cpp_program, probe_copy, huge, "--out", tmp_path / "out", expect_rc=1)
    out = proc.stdout + proc.stderr
    assert "huge.png: image is too large" in out and "20000x20000 = 400000000 pixels, limit 64000000" in out, out
    assert "unknown image type" not in out


def test_images_with_the_same_stem_get_nfdseg_predicts_unique_names(cpp_program, images, tmp_path):
    """frame.png in two folders, and a right_frame.png: every output kept, named as `nfdseg predict` names it."""
    from nfdseg.serve import Segmenter
    from nfdseg.serve.predict_video import output_stems

    srcs = [tmp_path / "left" / "frame.png", tmp_path / "right" / "frame.png", tmp_path / "other" / "right_frame.png"]
    for src, img in zip(srcs, images):
        src.parent.mkdir()
        shutil.copy(img, src)
    probe = make_probe_export(tmp_path / "probe")
    proc = run_cpp(cpp_program, probe, *srcs, "--out", tmp_path / "out")
    stems = output_stems(srcs)
    assert list(stems.values()) == ["left_frame", "right_frame", "right_frame_2"]
    seg = Segmenter(probe, backend="onnxruntime", device="cpu")
    for src in srcs:
        if stems[str(src)] != src.stem:
            assert f"output name: {src} -> {stems[str(src)]}_*" in proc.stdout, proc.stdout
        got = np.asarray(Image.open(tmp_path / "out" / f"{stems[str(src)]}_labels.png"))
        np.testing.assert_array_equal(got, seg.predict(src).labels)
    assert len(list((tmp_path / "out").glob("*_labels.png"))) == 3


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
    # stderr, as manifest errors: one `error:` line per image, each followed by its fix; stdout: results only
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 6 and proc.stderr.count("\n  fix: ") == 6, proc.stderr
    assert "error" not in proc.stdout and proc.stdout.count(" ms (decode ") == 1, proc.stdout
    assert "not a readable image" in proc.stderr and "image file not found" in proc.stderr
    assert "too small to segment" in proc.stderr and "6 of 7 images skipped" in proc.stderr
    assert (tmp_path / "out" / f"{images[0].stem}_labels.png").is_file()  # the good image is still done
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"{images[0].stem}_labels.png",
                                                                   f"{images[0].stem}_overlay.png"]


def test_unwritable_output_is_one_error(cpp_program, probe_copy, images, tmp_path):
    (tmp_path / "file").write_text("")
    err = _error(run_cpp(cpp_program, probe_copy, images[0], "--out", tmp_path / "file" / "out", expect_rc=2))
    assert "cannot write the output under" in err and "fix: pass another --out" in err


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
