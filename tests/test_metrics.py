"""Segmentation metrics when classes are missing: absent from both maps -> NaN and left out of mIoU;
predicted but never in the ground truth -> IoU 0 (counted). Reference values are worked out by hand
or counted pixel by pixel here, not with ConfusionMatrix."""

import math

import numpy as np
import pytest

from nfdseg.metrics import ConfusionMatrix


def test_absent_class_is_nan_and_excluded_and_predicted_only_class_is_zero():
    cm = ConfusionMatrix(4, ignore_index=255)
    target = np.array([0, 0, 0, 1, 1, 255])
    pred = np.array([0, 0, 3, 0, 3, 2])  # the 2 sits on an ignored pixel: class 2 stays absent
    cm.update(pred, target)
    # class 0: tp 2, fp 1 (pixel 3), fn 1 (pixel 2) -> 2/4; class 1: in the truth only -> 0/2;
    # class 2: in neither (ignored pixel only) -> NaN; class 3: predicted only -> 0/2
    iou = cm.iou()
    assert iou[0] == pytest.approx(0.5) and iou[1] == 0.0 and math.isnan(iou[2]) and iou[3] == 0.0
    assert cm.miou() == pytest.approx((0.5 + 0.0 + 0.0) / 3 * 100)  # 16.67 %, not 12.5 % (NaN as 0) or NaN
    assert cm.pixel_accuracy() == pytest.approx(2 / 5 * 100)
    s = cm.summary(["road", "car", "sky", "tree"])
    assert s["per_class_iou"] == {"road": 50.0, "car": 0.0, "sky": None, "tree": 0.0}
    assert s["miou"] == pytest.approx(16.6667, abs=1e-4)


def test_a_class_seen_in_a_later_image_stops_being_absent():
    cm = ConfusionMatrix(3, ignore_index=255)
    cm.update(np.array([[0, 0], [1, 1]]), np.array([[0, 0], [1, 1]]))
    assert math.isnan(cm.iou()[2]) and cm.miou() == pytest.approx(100.0)
    cm.update(np.array([[0, 2]]), np.array([[0, 0]]))  # class 2 now predicted (wrongly) once
    # class 0: tp 3, fn 1 -> 3/4; class 1: 2/2; class 2: predicted only -> 0
    assert cm.iou().tolist() == pytest.approx([0.75, 1.0, 0.0])
    assert cm.miou() == pytest.approx((0.75 + 1.0 + 0.0) / 3 * 100)


def test_random_maps_with_missing_classes_match_pixel_counting():
    rng = np.random.default_rng(3)
    n, cm = 7, ConfusionMatrix(7, ignore_index=255)
    inter, union = np.zeros(n), np.zeros(n)
    for i in range(4):
        target = rng.choice([0, 1, 2, 4, 255], size=(16, 24))  # 3, 5, 6 never in the truth
        pred = rng.choice([0, 1, 2, 3, 4], size=(16, 24))       # 3 predicted only; 5, 6 nowhere
        cm.update(pred, target)
        valid = target != 255
        for c in range(n):
            inter[c] += np.sum((pred == c) & (target == c) & valid)
            union[c] += np.sum(((pred == c) | (target == c)) & valid)
    iou = cm.iou()
    present = union > 0
    assert present.tolist() == [True, True, True, True, True, False, False]
    assert np.isnan(iou[~present]).all() and iou[3] == 0.0
    np.testing.assert_allclose(iou[present], inter[present] / union[present], rtol=1e-12)
    assert cm.miou() == pytest.approx(np.mean(inter[present] / union[present]) * 100, rel=1e-12)
