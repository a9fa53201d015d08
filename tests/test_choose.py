"""The better-student rule and its noise estimate (app/choose.py), on confusion matrices built by hand."""

import numpy as np
import pytest

from nfdseg.app.choose import decide, miou_of, paired_bootstrap
from nfdseg.metrics import ConfusionMatrix


def _cms(rng, n, c, acc):
    """n per-image confusion matrices of c classes whose diagonal share is about `acc`."""
    out = np.zeros((n, c, c), np.int64)
    for i in range(n):
        for t in range(c):
            total = int(rng.integers(50, 100))
            right = int(total * acc)
            out[i, t, t] = right
            out[i, t, (t + 1) % c] = total - right
    return out


def test_miou_of_equals_the_confusion_matrix_metric():
    rng = np.random.default_rng(0)
    cm = ConfusionMatrix(4)
    pred, target = rng.integers(0, 4, 500), rng.integers(0, 4, 500)
    target[:40] = 3
    cm.update(pred, target)
    assert float(miou_of(cm.matrix)) == pytest.approx(cm.miou(), abs=1e-9)


def test_bootstrap_interval_is_zero_for_equal_models_and_excludes_zero_for_a_clear_gap():
    rng = np.random.default_rng(1)
    a = _cms(rng, 30, 5, 0.8)
    assert paired_bootstrap(a, a) == (0.0, 0.0)
    worse = _cms(np.random.default_rng(1), 30, 5, 0.6)
    lo, hi = paired_bootstrap(a, worse)
    gap = float(miou_of(a.sum(0)) - miou_of(worse.sum(0)))
    assert 0 < lo <= gap <= hi


def test_decide_ships_the_better_one_unless_pinned():
    worse = decide(35.27, 37.03, (-2.9, -0.6), "better", 101)
    assert worse.deployed == "baseline" and worse.gap == pytest.approx(-1.76)
    assert worse.message.startswith("THE BASELINE BEAT THE DISTILLED STUDENT") and "larger than that noise" in worse.message
    assert "--deploy student" in worse.message
    pinned = decide(35.27, 37.03, (-2.9, 0.4), "student", 101)
    assert pinned.deployed == "student" and "although it is the worse one" in pinned.message
    assert "within that noise" in pinned.message
    better = decide(40.0, 37.0, (1.0, 5.0), "better", 101)
    assert better.deployed == "student" and not better.message.startswith("THE BASELINE")
