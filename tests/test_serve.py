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
        "assert 0 <= res['miou'] <= 100\n"
        "print(seg.describe()['backend'])\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "onnxruntime"
