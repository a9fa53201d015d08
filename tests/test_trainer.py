"""Training both stages end to end on tiny models; resume equals an uninterrupted run."""

import json

import pytest
import torch

from nfdseg.distill.checkpoint import load_model_from_dir
from nfdseg.distill.config import load_run_config
from nfdseg.distill.trainer import BatchPlan, poly_lr, train_stage
from nfdseg.errors import ArtifactError, ConfigError
from nfdseg.fsutil import sha256_file
from nfdseg.manifest import read_manifest

from conftest import TINY_OVERRIDES


def test_stages_write_manifests(trained_run):
    t = read_manifest(trained_run / "teacher/checkpoint.json", expect_kind="checkpoint")
    s = read_manifest(trained_run / "student/checkpoint.json", expect_kind="checkpoint")
    assert s.parent_sha256 == sha256_file(trained_run / "teacher/best.pt")
    assert s.classes.num_classes == 8 and s.preprocess.input_size == (48, 48)
    assert 0.0 <= s.metrics["miou"] <= 100.0 and len(s.metrics["per_class_iou"]) == 8
    assert s.config["distill"]["loss"] == "nfd" and s.config["stage"] == "student"
    assert "torch" in s.versions and t.metrics["images_per_s"] > 0
    hist = json.loads((trained_run / "student/history.json").read_text())
    assert hist["train"] and all(r["distill"] > 0 for r in hist["train"]), "NFD term is active"
    model, m = load_model_from_dir(trained_run / "student")
    assert m == s and not model.training
    assert (trained_run / "student/config.yaml").is_file()


def test_resume_ends_where_an_uninterrupted_run_ends(tmp_path, tiny_cfg, trained_run):
    teacher = trained_run / "teacher"
    train_stage(tiny_cfg, "student", tmp_path / "full", teacher_dir=teacher, progress=False)
    assert train_stage(tiny_cfg, "student", tmp_path / "cut", teacher_dir=teacher, progress=False, stop_after=4) is None
    assert not (tmp_path / "cut/checkpoint.json").exists()
    train_stage(tiny_cfg, "student", tmp_path / "cut", teacher_dir=teacher, progress=False)
    a = torch.load(tmp_path / "full/best.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "cut/best.pt", weights_only=False)["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resume_refuses_another_config(tmp_path, tiny_cfg, trained_run):
    train_stage(tiny_cfg, "student", tmp_path / "s", teacher_dir=trained_run / "teacher", progress=False, stop_after=2)
    other = load_run_config("quick", {**TINY_OVERRIDES, "distill": {"loss": "kd"}})
    with pytest.raises(ArtifactError, match="another config"):
        train_stage(other, "student", tmp_path / "s", teacher_dir=trained_run / "teacher", progress=False)


def test_student_needs_a_teacher(tmp_path, tiny_cfg):
    with pytest.raises(ConfigError, match="needs a trained teacher"):
        train_stage(tiny_cfg, "student", tmp_path / "s", progress=False)
    with pytest.raises(ArtifactError, match="manifest not found"):
        train_stage(tiny_cfg, "student", tmp_path / "s", teacher_dir=tmp_path / "nothing", progress=False)


def test_batch_plan_and_schedule():
    plan = BatchPlan(10, 4, seed=1)
    first_epoch = [i for it in range(2) for i, _ in plan.indices(it)] + [i for i, _ in plan.indices(2)][:2]
    assert sorted(first_epoch) == list(range(10)), "each epoch visits every sample once"
    assert plan.indices(5) == BatchPlan(10, 4, seed=1).indices(5)
    r0, r1 = BatchPlan(10, 2, 1, rank=0, world=2).indices(0), BatchPlan(10, 2, 1, rank=1, world=2).indices(0)
    assert r0 + r1 == plan.indices(0), "ranks split the global batch"
    assert poly_lr(0.1, 0, 100, 0.9, 0) == pytest.approx(0.1)
    assert poly_lr(0.1, 50, 100, 0.9, 0) == pytest.approx(0.1 * 0.5**0.9)
    assert poly_lr(0.1, 0, 100, 0.9, 10) == pytest.approx(0.01)


def test_torchrun_two_processes_on_cpu(tmp_path):
    """DistributedDataParallel through torchrun (gloo on CPU): both stages finish and record world_size 2."""
    import subprocess
    import sys

    sets = ["teacher.model.arch=deeplabv3_resnet_tiny", "student.model.arch=deeplabv3_resnet_tiny",
            "teacher.train.iters=4", "student.train.iters=4", "teacher.train.eval_every=2", "student.train.eval_every=2",
            "teacher.train.batch_size=2", "student.train.batch_size=2", "data.synthetic_val=6",
            "data.synthetic_train=16", "data.synthetic_size=[48,48]", "data.input_size=[48,48]", "data.crop_size=[48,48]"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           "-m", "nfdseg.app.cli", "distill", "--out", str(tmp_path), "--quiet"]
    for s in sets:
        cmd += ["--set", s]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    for stage in ("teacher", "student"):
        m = read_manifest(tmp_path / stage / "checkpoint.json")
        assert m.metrics["world_size"] == 2


def test_loader_workers_are_reproducible(tmp_path, trained_run):
    """train.workers prepares batches in other processes; two runs with workers give identical weights."""
    from nfdseg.distill.config import load_run_config

    over = {**TINY_OVERRIDES, "student": {**TINY_OVERRIDES["student"],
                                          "train": {**TINY_OVERRIDES["student"]["train"], "workers": 2}}}
    cfg = load_run_config("quick", over)
    results = []
    for run in ("a", "b"):
        train_stage(cfg, "student", tmp_path / run, teacher_dir=trained_run / "teacher", progress=False)
        results.append(torch.load(tmp_path / run / "best.pt", weights_only=False)["model"])
    for k in results[0]:
        assert torch.equal(results[0][k], results[1][k]), k


def test_identical_weights_give_identical_checkpoint_files(tmp_path):
    """The pipeline keys stages by sha256 of best.pt: equal weights must mean equal bytes."""
    from nfdseg.distill.checkpoint import save_torch_atomic

    state = {"w": torch.arange(6.0)}
    save_torch_atomic(state, tmp_path / "a.pt")
    save_torch_atomic(state, tmp_path / "b" / "a.pt")
    assert sha256_file(tmp_path / "a.pt") == sha256_file(tmp_path / "b" / "a.pt")
