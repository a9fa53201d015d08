"""Image decoding and validation, normalisation, label resizing, metrics."""

import io

import numpy as np
import pytest
from PIL import Image

from nfdseg.errors import InputError
from nfdseg.manifest import PreprocessSpec
from nfdseg.metrics import ConfusionMatrix
from nfdseg.preprocess import ImageLimits, load_image, normalize, oriented_size, prepare_batch, resize_labels

from imagefiles import quadrant_colours, quadrants, rotated_jpeg


def _png(arr, mode=None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def test_formats_become_rgb_uint8():
    gray = np.full((5, 6), 100, np.uint8)
    assert load_image(_png(gray)).shape == (5, 6, 3)
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 128  # half transparent red over black -> ~100
    out = load_image(_png(rgba))
    assert out.shape == (4, 4, 3) and 95 <= out[0, 0, 0] <= 105
    sixteen = np.full((4, 4), 65535, np.uint16)
    assert load_image(Image.fromarray(sixteen)).max() == 255
    assert load_image(np.full((3, 3), 1.0, np.float32)).max() == 255
    bgr = np.zeros((3, 3, 3), np.uint8)
    bgr[..., 0] = 255  # blue in BGR
    assert load_image(bgr, bgr=True)[0, 0].tolist() == [0, 0, 255]


def test_bad_inputs_are_clear():
    with pytest.raises(InputError, match="not a readable image"):
        load_image(b"this is not an image")
    with pytest.raises(InputError, match="not a readable image"):
        load_image(_png(np.zeros((8, 8, 3), np.uint8))[:40])  # truncated
    with pytest.raises(InputError, match="too small"):
        load_image(np.zeros((1, 1, 3), np.uint8))
    with pytest.raises(InputError, match="too large"):
        load_image(np.zeros((20, 20, 3), np.uint8), limits=ImageLimits(max_pixels=100))
    with pytest.raises(InputError, match="too large"):
        load_image(_png(np.zeros((20, 20, 3), np.uint8)), limits=ImageLimits(max_pixels=100))
    with pytest.raises(InputError, match="not found"):
        load_image("/no/such/file.png")
    with pytest.raises(InputError, match="dtype"):
        load_image(np.zeros((4, 4, 3), np.int32))
    with pytest.raises(InputError, match="shape"):
        load_image(np.zeros((4, 4, 2), np.uint8))


UPRIGHT = [[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]]


def _close(got, want, tol=12):
    return all(abs(a - b) <= tol for g, w in zip(got, want) for a, b in zip(g, w))


@pytest.mark.parametrize("orientation", [6, 8])
def test_exif_orientation_applied_to_files_bytes_and_pil(tmp_path, orientation):
    up = quadrants(32, 16)  # portrait: 32 high, 16 wide
    data = rotated_jpeg(up, orientation, tmp_path / "phone.jpg")
    raw = np.asarray(Image.open(io.BytesIO(data)))
    assert raw.shape[:2] == (16, 32), "the stored pixels are landscape, as a phone writes them"
    assert not _close(quadrant_colours(np.ascontiguousarray(raw)), UPRIGHT), "the test picture must need turning"
    for src in (data, tmp_path / "phone.jpg", str(tmp_path / "phone.jpg"), Image.open(io.BytesIO(data))):
        out = load_image(src)
        assert out.shape == (32, 16, 3), type(src)
        assert _close(quadrant_colours(out), UPRIGHT), (type(src), quadrant_colours(out))
    assert oriented_size(Image.open(io.BytesIO(data))) == (16, 32)  # (width, height) from the header alone


def test_error_names_the_given_name_not_the_path(tmp_path):
    bad = tmp_path / "deep" / "server-temp-dir" / "holiday.png"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(InputError) as e:
        load_image(bad, name="holiday.png")
    assert e.value.what.startswith("holiday.png:") and "server-temp-dir" not in str(e.value)
    with pytest.raises(InputError) as e:
        load_image(tmp_path / "gone.png", name="gone.png")
    assert "gone.png" in e.value.what and str(tmp_path) not in str(e.value)


def test_normalize_matches_definition():
    spec = PreprocessSpec(mean=(0.1, 0.2, 0.3), std=(0.5, 0.25, 2.0), input_size=(2, 2))
    img = np.array([[[255, 0, 51]]], np.uint8)
    x = normalize(img, spec)
    assert x.shape == (3, 1, 1)
    np.testing.assert_allclose(x[:, 0, 0], [(1 - 0.1) / 0.5, (0 - 0.2) / 0.25, (0.2 - 0.3) / 2.0], rtol=1e-6)
    batch = prepare_batch([np.zeros((5, 7, 3), np.uint8)], spec)
    assert batch.shape == (1, 3, 2, 2) and batch.dtype == np.float32


def test_resize_labels_nearest():
    lab = np.array([[0, 1], [2, 3]], np.uint8)
    big = resize_labels(lab, (4, 4))
    assert big.tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]


def test_confusion_matrix_miou_by_hand():
    cm = ConfusionMatrix(3, ignore_index=255)
    target = np.array([0, 0, 1, 1, 2, 255])
    pred = np.array([0, 1, 1, 1, 0, 2])
    cm.update(pred, target)
    # class 0: tp1 fp1 fn1 -> 1/3; class 1: tp2 fp1 fn0 -> 2/3; class 2: tp0 fn1 -> 0
    assert cm.miou() == pytest.approx((1 / 3 + 2 / 3 + 0) / 3 * 100)
    assert cm.pixel_accuracy() == pytest.approx(3 / 5 * 100)
