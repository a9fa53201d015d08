"""OpenVINO backend: agrees with onnxruntime on the exported student (fp32 and INT8), stays correct under the
MicroBatcher's threads, and its bad inputs (device not there, OpenVINO not installed) say what to do."""

from __future__ import annotations

import builtins
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from conftest import block_openvino
from nfdseg.errors import ConfigError, MissingDependencyError

ov = pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install 'nfdseg[openvino]')")

from nfdseg.serve import MicroBatcher, Segmenter  # noqa: E402
from nfdseg.serve.backends.openvino_backend import shared_core  # noqa: E402


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
    assert d["backend"] == "openvino" and d["device"] == "cpu" and d["execution_devices"] == "CPU"
    assert d["openvino"] == ov.__version__
    assert d["artifact"].endswith("model.onnx")


def test_reshape_cache_is_bounded_and_reused(exported):
    from nfdseg.serve.backends import open_backend

    b = open_backend(exported, backend="openvino", device="cpu", threads=1)
    b.cache_size = 2
    rng = np.random.default_rng(0)
    x = {s: rng.standard_normal((1, 3, *s)).astype(np.float32) for s in [(48, 48), (32, 64), (40, 40)]}
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
    # OpenVINO and onnxruntime round INT8 differently (fused kernels, requantisation points), so their labels
    # differ by ~1-2 % on this barely trained student (its logits are near ties); the bar: OpenVINO's INT8 is as
    # close to the fp32 model as onnxruntime's INT8 is, within 1 point of pixel agreement
    fp32 = Segmenter(out, backend="onnxruntime", device="cpu", precision="fp32")
    images = _val_images(a)
    assert _agreement(a, b, images) >= 0.97
    assert _agreement(fp32, b, images) >= _agreement(fp32, a, images) - 0.01


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
    found = shared_core().available_devices
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
    block_openvino(monkeypatch)
    with pytest.raises(MissingDependencyError) as e:
        Segmenter(exported, backend="openvino")
    assert "pip install 'nfdseg[openvino]'" in e.value.fix


def test_cli_accepts_backend_openvino():
    import argparse

    from nfdseg.serve.cli import _runtime_args

    p = argparse.ArgumentParser()
    _runtime_args(p)
    assert p.parse_args(["x", "--backend", "openvino"]).backend == "openvino"


def _copy_export(exported, tmp_path):
    import shutil

    out = tmp_path / "export"
    shutil.copytree(exported, out, ignore=shutil.ignore_patterns("backend_choice.json"))
    return out


@pytest.mark.parametrize("faster", ["openvino", "onnxruntime"])
def test_auto_on_a_cpu_picks_the_faster_by_probe_and_caches_it(exported, tmp_path, monkeypatch, caplog, faster):
    import json
    import logging

    import nfdseg.serve.backends.cpu_choice as cc
    from nfdseg.serve.backends import open_backend

    out = _copy_export(exported, tmp_path)
    calls = []

    def stand_in(backend, x, runs=cc.PROBE_RUNS, clock=None):
        calls.append(backend.name)
        assert x.shape[0] == 1 and tuple(x.shape) == backend._default_shape() if backend.name == "openvino" else True
        return 1.0 if backend.name == faster else 3.0

    monkeypatch.setattr(cc, "probe_ms", stand_in)
    with caplog.at_level(logging.INFO, logger="nfdseg.serve.backends"):
        b = open_backend(out, backend="auto", device="cpu")
    assert b.name == faster and sorted(set(calls)) == ["onnxruntime", "openvino"]
    assert "onnxruntime 3.00 ms" in caplog.text or "onnxruntime 1.00 ms" in caplog.text
    cache = json.loads((out / cc.CHOICE_FILE).read_text())
    (entry,) = cache.values()
    assert entry["backend"] == faster and "openvino" in next(iter(cache)) and "onnxruntime" in next(iter(cache))
    calls.clear()
    assert open_backend(out, backend="auto", device="cpu").name == faster and calls == [], "the cache was not used"
    # another OpenVINO version is another key: probed again
    monkeypatch.setattr(ov, "__version__", "0.0-other")
    open_backend(out, backend="auto", device="cpu")
    assert calls and len(json.loads((out / cc.CHOICE_FILE).read_text())) == 2


def test_auto_falls_back_to_onnxruntime_when_openvino_cannot_compile(exported, tmp_path, monkeypatch, caplog):
    import logging

    import nfdseg.serve.backends.openvino_backend as ovb
    from nfdseg.errors import ArtifactError
    from nfdseg.serve.backends import open_backend

    def broken(self, *a, **k):
        raise ArtifactError("OpenVINO cannot compile model.onnx for CPU", seen="planted")

    monkeypatch.setattr(ovb.OpenVinoBackend, "__init__", broken)
    out = _copy_export(exported, tmp_path)
    with caplog.at_level(logging.INFO, logger="nfdseg.serve.backends"):
        b = open_backend(out, backend="auto", device="cpu")
    assert b.name == "onnxruntime" and "OpenVINO could not serve model.onnx (OpenVINO cannot compile" in caplog.text


def test_auto_without_openvino_is_onnxruntime_unprobed(exported, tmp_path, monkeypatch):
    import nfdseg.serve.backends.cpu_choice as cc
    from nfdseg.serve.backends import open_backend

    real_import = builtins.__import__
    monkeypatch.setattr(builtins, "__import__", lambda name, *a, **k: (_ for _ in ()).throw(ImportError(name))
                        if name == "openvino" else real_import(name, *a, **k))
    monkeypatch.setattr(cc, "probe_ms", lambda *a, **k: pytest.fail("probed without OpenVINO"))
    out = _copy_export(exported, tmp_path)
    assert open_backend(out, backend="auto", device="cpu").name == "onnxruntime"
    assert not (out / cc.CHOICE_FILE).exists()


def test_every_backend_shares_one_openvino_core(exported, ov_seg):
    """A second openvino.Core in one process can crash it with SIGSEGV (openvinotoolkit/openvino#35338; this suite
    died so in CI): every backend, and the `auto` probe's, uses the process's one Core."""
    from nfdseg.serve.backends import open_backend

    again = open_backend(exported, backend="openvino", device="cpu", threads=1)
    assert again.core is ov_seg.backend.core is shared_core()
