"""Every place a backend is chosen takes `openvino` (issue 28, item 4): predict on images, videos and cameras, eval
and bench from the command line, the demo's handlers, the MicroBatcher's varying batch sizes, and the pipeline's
bench stage and report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ov = pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install 'nfdseg[openvino]')")

from nfdseg.app.cli import main  # noqa: E402
from nfdseg.serve import MicroBatcher, Segmenter  # noqa: E402


@pytest.fixture(scope="module")
def ov_seg(exported):
    return Segmenter(exported, backend="openvino", device="cpu")


def _scene(path: Path, seed=5, size=(40, 56)) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)
    return path


def test_cli_predict_eval_bench_with_backend_openvino(exported, ov_seg, tmp_path, capsys):
    img = _scene(tmp_path / "frame.png")
    assert main(["predict", str(exported), str(img), "--backend", "openvino", "--out", str(tmp_path / "p")]) == 0
    labels = np.asarray(Image.open(tmp_path / "p/frame_labels.png"))
    np.testing.assert_array_equal(labels, ov_seg.predict(np.asarray(Image.open(img).convert("RGB"))).labels)
    assert main(["eval", str(exported), "--backend", "openvino", "--limit", "4", "--quiet"]) == 0
    assert "openvino on cpu (fp32): mIoU" in capsys.readouterr().out
    report = tmp_path / "bench.json"
    assert main(["bench", str(exported), "--backend", "openvino", "--batch", "1,2", "--concurrency", "2",
                 "--duration", "0", "--min-iters", "2", "--requests", "4", "--warmup", "1", "--quiet",
                 "--json", str(report)]) == 0
    r = json.loads(report.read_text())
    assert r["segmenter"]["backend"] == "openvino" and [row["batch"] for row in r["batches"]] == [1, 2]
    assert r["versions"]["openvino"] == ov.__version__, "the bench report names the OpenVINO that ran"


def test_video_and_camera_streams_with_openvino(exported, ov_seg, tmp_path):
    pytest.importorskip("av", reason="PyAV is not installed (pip install 'nfdseg[video]')")
    from videofiles import decoded, scene_frames, write_clip

    from nfdseg.serve.video import IterableSource

    clip = write_clip(tmp_path / "drive.mp4", scene_frames(6))
    assert main(["predict", str(exported), str(clip), "--backend", "openvino", "--out", str(tmp_path / "o"),
                 "--labels-every", "5"]) == 0
    first = np.asarray(Image.open(tmp_path / "o/drive_labels/frame000000.png"))
    np.testing.assert_array_equal(first, ov_seg.predict(decoded(clip)[0]).labels)
    frames = scene_frames(8, seed=11)
    with MicroBatcher(ov_seg, max_batch=4, max_wait_ms=20) as batcher:  # a camera through the shared batcher
        got = [(r.frame.index, r.prediction.labels)
               for r in ov_seg.stream(IterableSource(iter(frames), live=False, label="camera 0"), batcher=batcher)]
    assert [i for i, _ in got] == list(range(8))
    for (_, labels), f in zip(got, frames):
        np.testing.assert_array_equal(labels, ov_seg.predict(f).labels)


def test_batches_of_every_size_compile_once_per_input_size(exported):
    """A MicroBatcher hands the backend batches of 1..max_batch images: on the CPU that is two compiles per input
    size (batch 1 static, any other batch dynamic), not one per batch size evicting each other from the cache."""
    from nfdseg.serve.backends import open_backend

    b = open_backend(exported, backend="openvino", device="cpu")
    if b.manifest.inputs and b.manifest.inputs[0].dtype == "uint8":
        pytest.skip("this export takes uint8 NHWC input")
    x = np.random.default_rng(3).standard_normal((8, 3, 48, 48)).astype(np.float32)
    single = np.concatenate([b.infer(x[i:i + 1]) for i in range(8)])
    for n in [*range(1, 9), *range(8, 0, -1)]:
        out = b.infer(x[:n])
        np.testing.assert_allclose(out, single[:n], atol=1e-4)
        assert np.array_equal(out.argmax(1), single[:n].argmax(1))
    assert b.compiles == 2 and len(b._cache) == 2, f"{b.compiles} compiles for one input size"


def test_demo_handlers_serve_openvino(ov_seg, tmp_path):
    pytest.importorskip("gradio", reason="gradio is not installed (pip install 'nfdseg[demo]')")
    from nfdseg.demo import build_demo
    from nfdseg.demo.handlers import ImageHandlers, StreamHandlers

    demo = build_demo(ov_seg, examples=[])
    try:
        img = _scene(tmp_path / "upload.png", seed=9, size=(48, 64))
        gallery, _, status, files, state = ImageHandlers(demo.nfdseg).segment(str(img), None, 0.5, None)
        assert len(gallery) == 1 and "`openvino` on `cpu`" in status
        rgb = np.asarray(Image.open(img).convert("RGB"))
        np.testing.assert_array_equal(state[0][2], ov_seg.predict(rgb).labels)
        shown, line = StreamHandlers(demo.nfdseg).webcam_frame(rgb, 0.5)
        assert shown is not None and "ms per frame" in line
    finally:
        demo.nfdseg_close()


def test_demo_command_takes_openvino_and_its_devices():
    import argparse

    from nfdseg.demo.cli import register

    sub = argparse.ArgumentParser().add_subparsers()
    register(sub)
    args = sub.choices["demo"].parse_args(["x", "--backend", "openvino", "--device", "GPU"])
    assert (args.backend, args.device) == ("openvino", "GPU")
    assert "OpenVINO device" in " ".join(sub.choices["demo"].format_help().split()), "help wraps with the terminal"


def test_pipeline_bench_stage_times_openvino(tmp_path):
    from nfdseg.app.pipeline import bench_target_list

    export = tmp_path / "export"
    export.mkdir()
    for name in ("model.onnx", "model.fp16.onnx"):
        (export / name).write_bytes(b"")
    got = [(b, p.name, pr) for b, p, pr in bench_target_list(export, tmp_path / "student")]
    assert ("openvino", "model.onnx", "fp32") in got and not any(p == "model.int8.onnx" for _, p, _ in got)
    (export / "model.int8.onnx").write_bytes(b"")
    (export / "s_fp16.engine").write_bytes(b"")
    got = [(b, p.name, pr) for b, p, pr in bench_target_list(export, tmp_path / "student")]
    assert got[0] == ("tensorrt", "s_fp16.engine", "auto") and got[-1] == ("torch", "student", "auto")
    assert ("openvino", "model.int8.onnx", "int8") in got and ("onnxruntime", "model.int8.onnx", "int8") in got
