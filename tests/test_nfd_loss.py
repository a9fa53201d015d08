"""NFD against an independent numpy reference, its invariances, and the teacher staying frozen."""

import numpy as np
import pytest
import torch

from nfdseg.distill.config import DistillConfig
from nfdseg.distill.losses import DEFAULT_WEIGHTS, CWDLoss, KDLoss, NFDLoss, NoDistillLoss, build_loss
from nfdseg.distill.losses.nfd import nfd_distance


def reference_nfd(fs: np.ndarray, ft: np.ndarray, squared=True, eps=1e-5) -> float:
    """Straight from the paper's definition, with explicit loops over samples and channels."""
    n, c, h, w = fs.shape
    total = 0.0
    for i in range(n):
        acc = 0.0
        for j in range(c):
            a, b = ft[i, j].astype(np.float64), fs[i, j].astype(np.float64)
            na = (a - a.mean()) / np.sqrt(a.var() + eps)
            nb = (b - b.mean()) / np.sqrt(b.var() + eps)
            acc += ((na - nb) ** 2).sum()
        total += (acc if squared else np.sqrt(acc)) / (h * w)
    return total / n


@pytest.mark.parametrize("norm", ["squared", "euclidean"])
def test_matches_reference(norm):
    g = torch.Generator().manual_seed(0)
    fs, ft = torch.randn(3, 5, 7, 6, generator=g), torch.randn(3, 5, 7, 6, generator=g) * 4 + 2
    got = nfd_distance(fs, ft, norm).item()
    want = reference_nfd(fs.numpy(), ft.numpy(), squared=norm == "squared")
    assert got == pytest.approx(want, rel=1e-5)


def test_invariant_to_per_channel_scale_and_shift_of_either_side():
    g = torch.Generator().manual_seed(1)
    fs, ft = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    base = nfd_distance(fs, ft).item()
    scale = torch.rand(1, 4, 1, 1, generator=g) * 10 + 0.1
    shift = torch.randn(1, 4, 1, 1, generator=g) * 50
    assert nfd_distance(fs * scale + shift, ft).item() == pytest.approx(base, rel=1e-4)
    assert nfd_distance(fs, ft * scale + shift).item() == pytest.approx(base, rel=1e-4)
    # a negative scale flips the pattern: the loss must change
    assert nfd_distance(-fs, ft).item() != pytest.approx(base, rel=1e-2)


def test_zero_for_identical_features_and_positive_otherwise():
    f = torch.randn(2, 3, 5, 5)
    assert nfd_distance(f, f.clone()).item() == pytest.approx(0.0, abs=1e-8)
    assert nfd_distance(f, torch.randn(2, 3, 5, 5)).item() > 0.1


def test_connector_resize_and_no_gradient_to_teacher():
    loss = NFDLoss(("head",), {"head": 4}, {"head": 6}, weight=1.0)
    assert "head" in loss.connectors and loss.connectors["head"].out_channels == 6
    teacher_w = torch.randn(6, 3, 1, 1, requires_grad=True)
    x = torch.randn(2, 3, 12, 12)
    t_feat = torch.nn.functional.conv2d(x, teacher_w)  # teacher feature 12x12 with a grad path to teacher_w
    s_feat = torch.randn(2, 4, 6, 6, requires_grad=True)  # smaller: must be resized bilinearly to 12x12
    out = loss(torch.zeros(2, 3, 4, 4), {"head": s_feat}, torch.zeros(2, 3, 4, 4), {"head": t_feat})
    out.backward()
    assert teacher_w.grad is None, "gradient reached the teacher"
    assert s_feat.grad is not None and s_feat.grad.abs().sum() > 0
    same = NFDLoss(("head",), {"head": 6}, {"head": 6})
    assert len(same.connectors) == 0


def test_weight_scales_loss_and_unknown_layer_is_a_clear_error():
    from nfdseg.errors import ConfigError

    f_s, f_t = torch.randn(1, 2, 4, 4), torch.randn(1, 2, 4, 4)
    a = NFDLoss(("x",), {"x": 2}, {"x": 2}, weight=1.0)(f_s, {"x": f_s}, f_t, {"x": f_t})
    b = NFDLoss(("x",), {"x": 2}, {"x": 2}, weight=0.25)(f_s, {"x": f_s}, f_t, {"x": f_t})
    assert b.item() == pytest.approx(a.item() * 0.25)
    with pytest.raises(ConfigError, match="not a feature of both models"):
        NFDLoss(("nope",), {"x": 2}, {"x": 2})


def test_kd_cwd_none_reference_values():
    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(2, 4, 5, 5, generator=g), torch.randn(2, 4, 5, 5, generator=g)
    ps = torch.softmax(s / 2, 1).numpy()
    pt = torch.softmax(t / 2, 1).numpy()
    kd_ref = (pt * (np.log(pt) - np.log(ps))).sum(1).mean() * 4
    assert KDLoss(1.0, 2.0)(s, {}, t, {}).item() == pytest.approx(kd_ref, rel=1e-5)
    assert KDLoss(1.0, 2.0)(s, {}, s, {}).item() == pytest.approx(0.0, abs=1e-6)
    qs = torch.softmax(s.flatten(2) / 4, 2).numpy()
    qt = torch.softmax(t.flatten(2) / 4, 2).numpy()
    cwd_ref = (qt * (np.log(qt) - np.log(qs))).sum(2).sum() / 8 * 16
    assert CWDLoss(1.0, 4.0)(s, {}, t, {}).item() == pytest.approx(cwd_ref, rel=1e-5)
    assert NoDistillLoss()(s, {}, t, {}).item() == 0.0


def test_build_loss_uses_documented_default_weights():
    chans = {"layer2": 8, "layer3": 8, "layer4": 8, "head": 8}
    nfd = build_loss(DistillConfig(loss="nfd"), chans, {k: 16 for k in chans})
    assert isinstance(nfd, NFDLoss) and nfd.weight == DEFAULT_WEIGHTS["nfd"] and nfd.norm == "squared"
    assert nfd.layers == ("layer2", "layer3", "layer4", "head") and len(nfd.connectors) == 4
    assert build_loss(DistillConfig(loss="kd", weight=0.5), {}, {}).weight == 0.5
