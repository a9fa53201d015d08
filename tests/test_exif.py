"""EXIF orientation wherever files or bytes are decoded: the runtime (Segmenter) and `nfdseg predict`.
(Datasets: tests/test_data_check.py; the demo: tests/test_demo.py; load_image itself: tests/test_preprocess.py.)"""

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from imagefiles import quadrants, rotated_jpeg


@pytest.mark.parametrize("orientation", [6, 8])
def test_segmenter_sees_the_photo_upright(exported, tmp_path, orientation):
    from nfdseg.serve import Segmenter

    up = quadrants(64, 32)
    data = rotated_jpeg(up, orientation, tmp_path / "phone.jpg")
    seg = Segmenter(exported, backend="onnxruntime")
    ref = seg.predict(np.asarray(Image.open(tmp_path / "phone.jpg").transpose(
        Image.Transpose.ROTATE_270 if orientation == 6 else Image.Transpose.ROTATE_90)))
    for src in (tmp_path / "phone.jpg", str(tmp_path / "phone.jpg"), data):
        pred = seg.predict(src)
        assert pred.labels.shape == (64, 32), type(src)
        np.testing.assert_array_equal(pred.labels, ref.labels)  # the same as turning the pixels by hand


def test_cli_predict_writes_upright_label_maps(exported, tmp_path):
    rotated_jpeg(quadrants(64, 32), 6, tmp_path / "phone.jpg")
    r = subprocess.run([sys.executable, "-m", "nfdseg.app.cli", "predict", str(exported), str(tmp_path / "phone.jpg"),
                        "--out", str(tmp_path / "pred")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert np.asarray(Image.open(tmp_path / "pred/phone_labels.png")).shape == (64, 32)
    overlay = np.asarray(Image.open(tmp_path / "pred/phone_overlay.png"))
    assert overlay.shape == (64, 32, 3)
