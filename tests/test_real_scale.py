"""The real architectures end to end on CPU: DeepLabV3-ResNet-50 -> DeepLabV3-ResNet-18 (2048/512-channel features)
with the default NFD settings, at a reduced resolution for a few iterations, exported and checked for fp32 and FP16
parity. The quick models cannot show what width does to the loss; this test can (the squared norm over H*W,
the old default, sent these logits to 1e8 in 4 iterations)."""

import json

import numpy as np
import pytest

REAL = {
    "data": {"synthetic_train": 16, "synthetic_val": 4, "synthetic_size": [64, 128], "crop_size": [64, 128],
             "input_size": [64, 128]},
    "teacher": {"model": {"arch": "deeplabv3_resnet50"}, "optim": {"lr": 0.02},
                "train": {"iters": 2, "batch_size": 2, "eval_every": 2, "ckpt_every": 2, "log_every": 1}},
    "student": {"model": {"arch": "deeplabv3_resnet18"}, "optim": {"lr": 0.02},
                "train": {"iters": 3, "batch_size": 2, "eval_every": 3, "ckpt_every": 3, "log_every": 1}},
    "distill": {"loss": "nfd", "layers": []},  # the defaults: pairs from the model families, norm, reduction, weight
}


@pytest.fixture(scope="module")
def r50_teacher(tmp_path_factory):
    """A DeepLabV3-ResNet-50 teacher, two iterations at 64x128 (the real widths, not a trained teacher)."""
    from nfdseg.distill.config import load_run_config
    from nfdseg.distill.trainer import train_stage

    out = tmp_path_factory.mktemp("r50") / "teacher"
    train_stage(load_run_config("quick", REAL), "teacher", out, progress=False)
    return out


def _distill_export_and_check(teacher_dir, tmp_path, student_arch: str):
    """Train `student_arch` from the R50 teacher with the default NFD settings, export it, check parity."""
    import torch

    from nfdseg.models.checkpoint import load_model_from_dir
    from nfdseg.distill.config import load_run_config
    from nfdseg.distill.losses import DEFAULT_WEIGHTS
    from nfdseg.distill.trainer import train_stage
    from nfdseg.export.parity import ParityBudget
    from nfdseg.export.run import ExportConfig, run_export

    cfg = load_run_config("quick", {**REAL, "student": {**REAL["student"], "model": {"arch": student_arch}}})
    assert (cfg.distill.norm, cfg.distill.reduction, cfg.distill.weight) == ("squared", "element", None)
    s = train_stage(cfg, "student", tmp_path / "student", teacher_dir=teacher_dir, progress=False)
    assert s.architecture == student_arch
    hist = json.loads((tmp_path / "student" / "history.json").read_text())["train"]
    ratios = [h["distill"] / h["ce"] / max(DEFAULT_WEIGHTS["nfd"], 1.0) for h in hist]  # judged as the guard does
    assert all(0 < r < cfg.distill.max_ratio for r in ratios), ratios  # the default stays inside the guard
    model, _ = load_model_from_dir(tmp_path / "student", "cpu")
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 64, 128))
    assert torch.isfinite(logits).all() and logits.abs().max() < 100, float(logits.abs().max())
    summary = run_export(tmp_path / "student", tmp_path / "export", ExportConfig(engine="off",
                                                                                  parity=ParityBudget(max_images=4)))
    report = json.loads((tmp_path / "export" / "parity.json").read_text())
    by_precision = {r["precision"]: r for r in report["results"]}
    assert set(by_precision) == {"fp32", "fp16"} and summary["parity"]["passed"], summary["parity"]["text"]
    assert by_precision["fp16"]["finite"] and np.isfinite(by_precision["fp16"]["delta_miou"])
    return s


@pytest.mark.slow
def test_resnet50_to_resnet18_default_nfd_trains_exports_and_passes_parity(r50_teacher, tmp_path):
    s = _distill_export_and_check(r50_teacher, tmp_path, "deeplabv3_resnet18")
    assert s.metrics["params"] > 15e6


@pytest.mark.slow
def test_resnet50_to_mobilenetv3_default_pairs_train_export_and_pass_parity(r50_teacher, tmp_path):
    """The mobile student from a ResNet teacher with no layer config: the family's default pairs connect them."""
    s = _distill_export_and_check(r50_teacher, tmp_path, "deeplabv3_mobilenetv3_large")
    assert s.config["distill"]["layers"] == []  # nothing written: the default pairs were used


@pytest.mark.parametrize("name,classes,crop,iters", [("cityscapes_r101_r18", 19, (512, 1024), 40000),
                                                     ("voc_r101_r18", 21, (512, 512), 40000),
                                                     ("ade20k_r101_r18", 150, (512, 512), 80000)])
def test_paper_protocol_configs_load_and_build_their_models_and_loss(name, classes, crop, iters):
    """No data needed: the config loads, both real models build, and the default NFD loss connects them with
    the width-independent reading (a 512 -> 2048 layer4 pair starts near weight x 2, as at the quick widths)."""
    import torch

    from nfdseg.distill.config import load_run_config
    from nfdseg.distill.losses import NFDLoss, build_loss
    from nfdseg.models import build_model

    cfg = load_run_config(name)
    assert (cfg.teacher.model.arch, cfg.student.model.arch) == ("deeplabv3_resnet101", "deeplabv3_resnet18")
    assert tuple(cfg.data.crop_size) == crop and cfg.student.train.iters == iters
    assert cfg.student.train.batch_size * 8 == 16  # 8 processes x 2 = the field's batch 16
    assert (cfg.distill.norm, cfg.distill.reduction, cfg.distill.weight) == ("squared", "element", None)
    teacher, student = build_model(cfg.teacher.model.arch, classes), build_model(cfg.student.model.arch, classes)
    loss = build_loss(cfg.distill, student.feature_channels, teacher.feature_channels, student.family, teacher.family)
    assert isinstance(loss, NFDLoss) and loss.connectors["layer4"].out_channels == 2048
    g = torch.Generator().manual_seed(0)
    s = {k: torch.randn(1, c, 8, 8, generator=g) for k, c in student.feature_channels.items()}
    t = {k: torch.randn(1, c, 8, 8, generator=g) for k, c in teacher.feature_channels.items()}
    with torch.no_grad():
        value = loss(torch.zeros(1, classes, 8, 8), s, torch.zeros(1, classes, 8, 8), t).item()
    assert value == pytest.approx(loss.weight * 2.0 * len(loss.pairs), rel=0.1)
