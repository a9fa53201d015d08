"""Segmenter and backends: inputs of every kind, sizes, probabilities, refusals, and no torch needed."""

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from nfdseg.errors import ArtifactError, ConfigError, InputError
from nfdseg.serve import Segmenter


@pytest.fixture(scope="module")
def seg(exported):
    return Segmenter(exported, backend="onnxruntime", device="cpu")


def _img(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


def test_predict_any_size_and_kind(seg, tmp_path):
    im = _img(37, 91)
    single = seg.predict(im)
    assert single.labels.shape == (37, 91) and single.labels.dtype == np.uint8 and single.labels.max() < 8
    path = tmp_path / "x.png"
    Image.fromarray(im).save(path)
    from_path = seg.predict(str(path))
    from_pil = seg.predict(Image.fromarray(im))
    from_bytes = seg.predict(path.read_bytes())
    for p in (from_path, from_pil, from_bytes):
        assert np.array_equal(p.labels, single.labels)
    bgr = seg.predict(im[..., ::-1].copy(), bgr=True)
    assert np.array_equal(bgr.labels, single.labels)
    many = seg.predict([im, _img(20, 30, 1), _img(48, 48, 2)])
    assert [p.labels.shape for p in many] == [(37, 91), (20, 30), (48, 48)]


def test_probabilities(seg):
    p = seg.predict(_img(48, 48), with_probs=True)
    assert p.probs.shape == (8, 48, 48)
    np.testing.assert_allclose(p.probs.sum(0), 1.0, atol=1e-4)
    assert np.array_equal(p.probs.argmax(0), p.labels)


def test_probabilities_are_the_softmax_of_the_logits(seg, exported, trained_run, tmp_path):
    """with_probs (the Python API: `nfdseg predict` has no probability output). At the model's input size the
    probabilities equal a softmax of the ONNX logits computed here (own normalisation, no nfdseg code); at
    another size they are resized and still sum to 1; a graph exported with output=probs gives the same."""
    import onnxruntime as ort

    from nfdseg.export.run import ExportConfig, run_export
    from nfdseg.export.torch2onnx import OnnxExportOptions

    im = _img(48, 48, 5)  # the input size: no resize
    pre = seg.manifest.preprocess
    x = ((im / 255.0 - np.array(pre.mean)) / np.array(pre.std)).transpose(2, 0, 1)[None].astype(np.float32)
    logits = ort.InferenceSession(str(exported / "model.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"input": x})[0][0].astype(np.float64)
    e = np.exp(logits - logits.max(0))
    ref = e / e.sum(0)
    p = seg.predict(im, with_probs=True)
    np.testing.assert_allclose(p.probs, ref, atol=1e-5)
    assert np.array_equal(p.labels, ref.argmax(0)) and seg.predict(im).probs is None
    other = seg.predict(_img(30, 70, 6), with_probs=True)
    assert other.probs.shape == (8, 30, 70) and other.labels.shape == (30, 70)
    np.testing.assert_allclose(other.probs.sum(0), 1.0, atol=1e-4)
    assert np.mean(other.probs.argmax(0) == other.labels) >= 0.9  # bilinear probs vs nearest labels: edges differ
    run_export(trained_run / "student", tmp_path, ExportConfig(onnx=OnnxExportOptions(output="probs"), fp16=False,
                                                               engine="off"))
    from_graph = Segmenter(tmp_path / "model.onnx", backend="onnxruntime", device="cpu").predict(im, with_probs=True)
    np.testing.assert_allclose(from_graph.probs, ref, atol=1e-5)
    assert np.array_equal(from_graph.labels, p.labels)


def test_matches_torch_backend(exported, trained_run):
    imgs = [_img(48, 48, i) for i in range(3)]
    a = Segmenter(exported, backend="onnxruntime").predict(imgs)
    b = Segmenter(trained_run / "student", backend="torch").predict(imgs)
    assert np.mean([np.mean(x.labels == y.labels) for x, y in zip(a, b)]) >= 0.999


def test_batch_larger_than_backend_limit_is_split(exported):
    seg = Segmenter(exported, backend="onnxruntime")
    imgs = [_img(48, 48, i) for i in range(5)]
    whole = seg.predict(imgs)
    seg.backend.max_batch = 2  # as an engine profile would
    calls = []
    orig = seg.backend.infer
    seg.backend.infer = lambda x: calls.append(len(x)) or orig(x)
    split = seg.predict(imgs)
    assert calls == [2, 2, 1]
    assert all(np.array_equal(a.labels, b.labels) for a, b in zip(whole, split))


def test_bad_images_are_rejected_clearly(seg):
    for bad, match in [(b"not an image", "not a readable image"), (np.zeros((1, 1, 3), np.uint8), "too small"),
                       (np.zeros((0, 5, 3), np.uint8), "too small"), ([], "no images")]:
        with pytest.raises(InputError, match=match):
            seg.predict(bad)
    big = Segmenter(seg.backend.path.parent, backend="onnxruntime", max_pixels=1000)
    with pytest.raises(InputError, match="too large"):
        big.predict(_img(100, 100))
    # grayscale, RGBA and 16-bit are accepted and segmented at their size
    assert seg.predict(np.zeros((30, 40), np.uint8)).labels.shape == (30, 40)
    assert seg.predict(np.zeros((30, 40, 4), np.uint8)).labels.shape == (30, 40)
    assert seg.predict(Image.fromarray(np.zeros((30, 40), np.uint16))).labels.shape == (30, 40)


def test_artifact_refusals(exported, tmp_path):
    with pytest.raises(ArtifactError, match="expects 19"):
        Segmenter(exported, expect_classes=19)
    with pytest.raises(ArtifactError, match="not found"):
        Segmenter(tmp_path / "nope")
    with pytest.raises(ArtifactError, match="no servable artifact"):
        Segmenter(tmp_path)
    with pytest.raises(ConfigError, match="unknown backend"):
        Segmenter(exported, backend="tflite")
    with pytest.raises(ArtifactError):
        Segmenter(exported, backend="tensorrt")  # no engine in this export


def test_runtime_needs_no_torch(exported):
    """The serve stage must run where torch is not installed: block its import and segment."""
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import numpy as np\n"
        "from nfdseg.serve import Segmenter, MicroBatcher\n"
        f"seg = Segmenter(r'{exported}')\n"
        "p = seg.predict(np.zeros((20, 30, 3), np.uint8))\n"
        "with MicroBatcher(seg) as mb: q = mb.predict(np.zeros((20, 30, 3), np.uint8))\n"
        "assert p.labels.shape == (20, 30) and (p.labels == q.labels).all()\n"
        "from nfdseg.serve.evaluate import evaluate, load_eval_source\n"
        "res = evaluate(seg, load_eval_source(seg, 'default', 'folder', 'val'), limit=4, progress=False)\n"
        "print(seg.describe()['backend'], res['miou'])\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    from nfdseg.serve.evaluate import evaluate, load_eval_source

    # `auto` on a CPU times onnxruntime against OpenVINO (where installed) and may keep either: compare with the
    # runtime it kept, here in a process that has torch
    backend, miou = r.stdout.split()
    assert backend in ("onnxruntime", "openvino"), r.stdout
    seg = Segmenter(exported, backend=backend, device="cpu")
    here = evaluate(seg, load_eval_source(seg, "default", "folder", "val"), limit=4, progress=False)["miou"]
    assert float(miou) == here, f"without torch: the same mIoU as with it ({backend})"


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_predict_from_eight_threads_equals_sequential(exported, trained_run, backend):
    """Segmenter.predict called from 8 threads at once returns exactly what sequential calls return."""
    from concurrent.futures import ThreadPoolExecutor

    art = exported if backend == "onnxruntime" else trained_run / "student"
    s = Segmenter(art, backend=backend, device="cpu")
    imgs = [_img(40 + 3 * i, 56 - 2 * i, i) for i in range(16)]
    want = [s.predict(im, with_probs=i % 2 == 0) for i, im in enumerate(imgs)]
    barrier = __import__("threading").Barrier(8)

    def call(i):
        if i < 8:
            barrier.wait()  # all eight threads enter predict together
        return s.predict(imgs[i], with_probs=i % 2 == 0)

    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(call, range(16)))
    for w, g in zip(want, got):
        assert np.array_equal(w.labels, g.labels)
        if w.probs is not None:
            np.testing.assert_array_equal(w.probs, g.probs)


def test_labels_only_equals_argmax_of_logits(exported, trained_run):
    """predict without probabilities takes the label map from the backend (on the GPU for torch)."""
    for s in (Segmenter(exported, backend="onnxruntime", device="cpu"),
              Segmenter(trained_run / "student", backend="torch", device="cpu")):
        x = np.random.default_rng(0).standard_normal((3, 3, 48, 48)).astype(np.float32)
        labels = s.backend.infer_labels(x)
        assert labels.dtype == np.uint8 and labels.shape == (3, 48, 48)
        assert np.array_equal(labels, s.backend.infer(x).argmax(1))


def test_torch_backend_cpu_fallbacks_are_recorded(trained_run):
    s = Segmenter(trained_run / "student", backend="torch", device="cpu", precision="fp16", cuda_graphs=True)
    d = s.describe()
    assert d["precision"] == "fp32" and d["cuda_graphs"] is False and "on CPU" in d["fallback"]


def test_onnxruntime_device_and_provider_reporting(exported, monkeypatch):
    from nfdseg.serve import backends
    from nfdseg.serve.backends.onnxruntime_backend import _why_no_cuda, parse_device

    assert parse_device("cuda:1") == (True, 1) and parse_device("cpu") == (False, 0) and parse_device("auto") == (True, 0)
    with pytest.raises(ConfigError, match="unknown device"):
        parse_device("gpu0")
    assert "could not create it" in _why_no_cuda(["CUDAExecutionProvider", "CPUExecutionProvider"], "CPUExecutionProvider")
    # CUDA listed but not loaded (as with a CPU-only onnxruntime here): auto must not serve FP16 on the CPU
    monkeypatch.setattr(backends, "_has_gpu", lambda: True)
    b = backends.open_backend(exported, "onnxruntime", device="auto")
    assert b.path.name == "model.onnx" and b.device == "cpu" and "instead of model.fp16.onnx" in b.fallback
    explicit = backends.open_backend(exported, "onnxruntime", device="cpu", precision="fp16")
    assert explicit.path.name == "model.fp16.onnx" and explicit.fallback == ""


@pytest.mark.parametrize("listed", [False, True])
def test_an_fp16_file_given_by_itself_is_served_without_a_bogus_fallback(exported, monkeypatch, caplog, listed):
    """Issue 20.7: `model.fp16.onnx` given as the artifact (the pipeline's bench does) logged 'FALLBACK: ; serving
    model.fp16.onnx on CPU instead of model.fp16.onnx' on every CPU machine: it is served as given, silently."""
    import logging

    from nfdseg.serve import backends

    monkeypatch.setattr(backends, "_has_gpu", lambda: listed)  # also when CUDA is listed but cannot load
    with caplog.at_level(logging.WARNING):
        b = backends.open_backend(exported / "model.fp16.onnx", "onnxruntime", device="auto")
    assert b.path.name == "model.fp16.onnx" and "instead of model.fp16.onnx" not in caplog.text + b.fallback
    if not listed:  # a CPU machine: nothing fell back at all
        assert b.fallback == "" and "FALLBACK" not in caplog.text


def test_cuda_graphs_request_is_never_silently_dropped(exported):
    s = Segmenter(exported, backend="onnxruntime", device="cpu", cuda_graphs=True)
    assert "torch backend only" in s.describe()["fallback"]


def _cuda_reason():
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    return None if torch.cuda.is_available() else "needs a CUDA GPU; torch sees none here"


@pytest.mark.gpu
@pytest.mark.skipif(_cuda_reason() is not None, reason=str(_cuda_reason()))
def test_torch_backend_on_a_gpu(trained_run):
    """fp16/bf16 weights agree with fp32 on labels; CUDA graphs (two shapes, one pool) equal eager fp16 and stay
    right under 8 threads; the label map comes from the GPU."""
    from concurrent.futures import ThreadPoolExecutor

    ckpt = trained_run / "student"
    imgs = [_img(48, 48, i) for i in range(4)]
    ref = Segmenter(ckpt, backend="torch", device="cuda", precision="fp32").predict(imgs)
    for prec, need in (("fp16", 0.99), ("bf16", 0.95)):
        s = Segmenter(ckpt, backend="torch", device="cuda", precision=prec)
        assert s.describe()["precision"] == prec and s.describe()["fallback"] == ""
        got = s.predict(imgs)
        assert np.mean([np.mean(a.labels == b.labels) for a, b in zip(got, ref)]) >= need, prec
    eager = Segmenter(ckpt, backend="torch", device="cuda", precision="fp16").predict(imgs)
    g = Segmenter(ckpt, backend="torch", device="cuda", precision="fp16", cuda_graphs=True)
    batch = g.predict(imgs)
    singles = [g.predict(im) for im in imgs]
    assert len(g.backend._graphs) == 2  # batch 4 and batch 1
    for a, b, c in zip(eager, batch, singles):
        assert np.mean(a.labels == b.labels) >= 0.999 and np.mean(a.labels == c.labels) >= 0.999
    with ThreadPoolExecutor(8) as pool:
        threaded = list(pool.map(g.predict, imgs * 2))
    for a, b in zip(singles * 2, threaded):
        assert np.array_equal(a.labels, b.labels)
    probs = g.predict(imgs[0], with_probs=True)
    assert np.array_equal(probs.probs.argmax(0), probs.labels)


def _ort_cuda_reason():
    try:
        import onnxruntime as ort
    except ImportError:
        return "onnxruntime is not installed"
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return f"onnxruntime {ort.__version__} has no CUDA provider (pip install 'nfdseg[gpu-cu13]' or [gpu-cu12], alone)"
    return None


@pytest.mark.gpu
@pytest.mark.skipif(_ort_cuda_reason() is not None, reason=str(_ort_cuda_reason()))
def test_onnxruntime_cuda_provider(exported):
    s = Segmenter(exported, backend="onnxruntime", device="cuda:0")
    assert s.backend.device == "cuda:0" and s.backend.provider == "CUDAExecutionProvider", s.backend.fallback
    assert s.backend.path.name == "model.fp16.onnx"  # what auto precision serves on a GPU
    imgs = [_img(48, 48, i) for i in range(4)]
    ref = Segmenter(exported, backend="onnxruntime", device="cpu").predict(imgs)
    assert np.mean([np.mean(a.labels == b.labels) for a, b in zip(s.predict(imgs), ref)]) >= 0.99


def test_a_duck_typed_backend_without_infer_labels_still_serves(exported):
    """Segmenter.from_backend accepts any object with the Backend attributes; label-only predict must not need
    the newer infer_labels method."""
    inner = Segmenter(exported, backend="onnxruntime", device="cpu").backend

    class Custom:
        name, device, precision, max_batch, fallback = "custom", "cpu", "fp32", None, ""
        manifest, path = inner.manifest, inner.path

        def infer(self, batch):
            return inner.infer(batch)

        def describe(self):
            return {"backend": self.name}

    seg = Segmenter.from_backend(Custom())
    im = _img(40, 52)
    assert np.array_equal(seg.predict(im).labels, Segmenter(exported, backend="onnxruntime").predict(im).labels)
