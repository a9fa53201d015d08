"""OpenVINO backend: agrees with onnxruntime on the exported student (fp32 and INT8), stays correct under the
MicroBatcher's threads, and its bad inputs (device not there, OpenVINO not installed) say what to do."""

from __future__ import annotations

import builtins
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from nfdseg.errors import ConfigError, MissingDependencyError

ov = pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install 'nfdseg[openvino]')")

from nfdseg.serve import MicroBatcher, Segmenter  # noqa: E402


def _val_images(seg, n=12):
    from nfdseg.serve.evaluate import load_eval_source

    src = load_eval_source(seg, "default", "folder", "val")
    return [src.load(i)[0] for i in range(min(n, len(src)))]


def _agreement(a: Segmenter, b: Segmenter, images) -> float:
    same = total = 0
    for pa, pb in zip(a.predict(images), b.predict(images)):
        same += int((pa.labels == pb.labels).sum())
        total += pa.labels.size
    return same / total


@pytest.fixture(scope="module")
def ort_seg(exported):
    return Segmenter(exported, backend="onnxruntime", device="cpu")


@pytest.fixture(scope="module")
def ov_seg(exported):
    return Segmenter(exported, backend="openvino", device="cpu")


def test_labels_agree_with_onnxruntime_on_the_validation_images(ort_seg, ov_seg):
    images = _val_images(ort_seg)
    assert len(images) >= 4
    assert _agreement(ort_seg, ov_seg, images) >= 0.999
    d = ov_seg.backend.describe()
    assert d["backend"] == "openvino" and d["device"] == "CPU" and d["openvino"] == ov.__version__
    assert d["artifact"].endswith("model.onnx")


def test_reshape_cache_is_bounded_and_reused(exported):
    from nfdseg.serve.backends import open_backend

    b = open_backend(exported, backend="openvino", device="cpu", threads=1)
    b.cache_size = 2
    x = {s: np.random.default_rng(0).standard_normal((1, 3, *s)).astype(np.float32) for s in [(48, 48), (32, 64), (40, 40)]}
    if b.manifest.inputs and b.manifest.inputs[0].dtype == "uint8":
        pytest.skip("this export takes uint8 NHWC input")
    first = b.infer(x[(48, 48)])
    compiles = b.compiles
    assert np.array_equal(b.infer(x[(48, 48)]), first) and b.compiles == compiles, "a cached shape recompiled"
    b.infer(x[(32, 64)]), b.infer(x[(40, 40)])
    assert len(b._cache) == 2 and (1, 3, 48, 48) not in b._cache


def test_int8_agrees_with_onnxruntime_int8(trained_run, tmp_path_factory):
    from nfdseg.export.run import ExportConfig, run_export

    out = tmp_path_factory.mktemp("ov_int8") / "export"
    summary = run_export(trained_run / "student", out, ExportConfig(engine="off", fp16=False, int8=True,
                                                                    int8_calib_images=8))
    if not (out / "model.int8.onnx").is_file():
        pytest.skip(f"the export's INT8 gate refused the tiny student: {summary['parity']['text'][:200]}")
    a = Segmenter(out, backend="onnxruntime", device="cpu", precision="int8")
    b = Segmenter(out, backend="openvino", device="cpu", precision="int8")
    assert b.backend.path.name == "model.int8.onnx" and b.backend.precision == "int8"
    # OpenVINO and onnxruntime round INT8 differently (fused vs reference kernels): a looser bar than fp32's
    assert _agreement(a, b, _val_images(a)) >= 0.99


def test_microbatcher_threads_get_the_sequential_results(ov_seg):
    rng = np.random.default_rng(7)
    sizes = [(48, 48), (30, 70), (64, 40)]
    imgs = [rng.integers(0, 255, (*sizes[i % 3], 3), dtype=np.uint8) for i in range(48)]
    expected = [ov_seg.predict(im).labels for im in imgs]
    with MicroBatcher(ov_seg, max_batch=4, max_wait_ms=2) as mb:
        with ThreadPoolExecutor(6) as pool:
            got = list(pool.map(lambda im: mb.predict(im).labels, imgs))
    for i, (a, b) in enumerate(zip(expected, got)):
        assert np.array_equal(a, b), f"request {i} got another result"
    # and the backend itself from several threads at once (each call takes its own infer request)
    with ThreadPoolExecutor(4) as pool:
        direct = list(pool.map(lambda im: ov_seg.predict(im).labels, imgs))
    assert all(np.array_equal(a, b) for a, b in zip(expected, direct))


def test_a_device_that_is_not_there_lists_the_devices_found(exported):
    found = ov.Core().available_devices
    missing = next(d for d in ("NPU", "GPU", "FPGA_NOT_A_DEVICE") if d not in found)
    with pytest.raises(ConfigError) as e:
        Segmenter(exported, backend="openvino", device=missing)
    assert missing in e.value.what and all(d in e.value.seen for d in found)
    with pytest.raises(ConfigError) as e:
        Segmenter(exported, backend="openvino", device=f"AUTO:{missing},CPU")
    assert missing in e.value.what
    with pytest.raises(ConfigError):
        Segmenter(exported, backend="openvino", device="cuda")


def test_missing_openvino_names_the_extra(exported, monkeypatch):
    real_import = builtins.__import__

    def no_openvino(name, *args, **kwargs):
        if name == "openvino" or name.startswith("openvino."):
            raise ImportError("No module named 'openvino'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_openvino)
    with pytest.raises(MissingDependencyError) as e:
        Segmenter(exported, backend="openvino")
    assert "pip install 'nfdseg[openvino]'" in e.value.fix


def test_cli_accepts_backend_openvino():
    import argparse

    from nfdseg.serve.cli import _runtime_args

    p = argparse.ArgumentParser()
    _runtime_args(p)
    assert p.parse_args(["x", "--backend", "openvino"]).backend == "openvino"
