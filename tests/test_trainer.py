"""Training both stages end to end on tiny models; resume equals an uninterrupted run."""

import json

import pytest
import torch

from nfdseg.models.checkpoint import load_model_from_dir
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
    assert len(s.metrics["per_class_iou"]) == 8
    assert s.config["distill"]["loss"] == "nfd" and s.config["stage"] == "student"
    assert "torch" in s.versions and t.metrics["images_per_s"] > 0
    hist = json.loads((trained_run / "student/history.json").read_text())
    assert hist["train"] and all(r["distill"] > 0 for r in hist["train"]), "NFD term is active"
    # best.pt is the best evaluation, and its mIoU is the mean over the classes that occur
    assert s.metrics["miou"] == max(e["miou"] for e in hist["eval"]) and s.metrics["iter"] in [e["iter"] for e in hist["eval"]]
    present = [v for v in s.metrics["per_class_iou"].values() if v is not None]
    assert s.metrics["miou"] == pytest.approx(sum(present) / len(present), abs=1e-3)
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
    with pytest.raises(ArtifactError, match="student run with other inputs"):
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
    from nfdseg.models.checkpoint import save_torch_atomic

    state = {"w": torch.arange(6.0)}
    save_torch_atomic(state, tmp_path / "a.pt")
    save_torch_atomic(state, tmp_path / "b" / "a.pt")
    assert sha256_file(tmp_path / "a.pt") == sha256_file(tmp_path / "b" / "a.pt")


# ----------------------------------------------------------------------------- training learns
def _small_run(optim=None, size=32, **teacher_train):
    """The teacher stage on 32 px synthetic scenes with no rescaling (so no padded, ignored pixels), on the CPU
    also where a GPU is present, in fp32 whatever bf16 units the CPU has (deterministic kernels, same figures
    everywhere)."""
    train = {"iters": 2, "batch_size": 4, "eval_every": 2, "ckpt_every": 1, "log_every": 1, "device": "cpu",
             "amp": "off", **teacher_train}
    return load_run_config("quick", {
        "data": {"synthetic_train": 64, "synthetic_val": 16, "synthetic_size": [size, size], "crop_size": [size, size],
                 "input_size": [size, size], "scale_range": [1.0, 1.0]},
        "teacher": {"model": {"arch": "deeplabv3_resnet_tiny"}, "train": train,
                    "optim": optim or {"name": "adamw", "lr": 0.01, "weight_decay": 0.0001}},
    })


def test_training_learns_beyond_the_untrained_model_and_the_majority_class(tmp_path):
    """30 iterations of the tiny teacher: val mIoU well above the same-seed untrained network's and above always
    predicting the most frequent class (measured here: about 13 % vs 0.1 % and 5.4 %)."""
    import numpy as np

    from nfdseg.data import build_source, preprocess_spec
    from nfdseg.models import build_model
    from nfdseg.distill.trainer import evaluate
    from nfdseg.manifest import Manifest
    from nfdseg.metrics import ConfusionMatrix

    cfg = _small_run(iters=30, eval_every=30, ckpt_every=30, log_every=10)
    trained = train_stage(cfg, "teacher", tmp_path / "t", progress=False).metrics["miou"]
    val = build_source(cfg.data, "val")
    torch.manual_seed(cfg.teacher.train.seed)  # the trainer seeds like this before it builds the model
    untrained_model = build_model(cfg.teacher.model.arch, val.classes.num_classes)
    manifest = Manifest(kind="checkpoint", artifact="untrained", architecture=cfg.teacher.model.arch,
                        classes=val.classes, preprocess=preprocess_spec(cfg.data))
    untrained = evaluate(untrained_model, val, manifest, torch.device("cpu"))["miou"]
    masks = [val.load(i)[1] for i in range(len(val))]
    counts = np.bincount(np.concatenate([m.ravel() for m in masks]), minlength=256)[:val.classes.num_classes]
    cm = ConfusionMatrix(val.classes.num_classes, val.classes.ignore_index)
    for m in masks:
        cm.update(np.full_like(m, counts.argmax()), m)
    assert trained >= untrained + 8.0, (trained, untrained)
    assert trained >= cm.miou() + 4.0, (trained, cm.miou())


# ----------------------------------------------------------------------------- AMP dtype
def _stand_in_timer(fp32_s, bf16_s):
    """A clock for the amp probe: each precision takes the given seconds; counts the calls."""
    calls = []

    def timer(model, frozen, x, dtype):
        calls.append((dtype, tuple(x.shape), frozen is not None))
        return fp32_s if dtype is None else bf16_s
    return timer, calls


@pytest.mark.parametrize("units, bf16_speedup, expected_auto", [
    (("amx_bf16", "avx512_bf16"), 3.0, torch.bfloat16),  # AMX: bf16 several times faster
    (("avx512_bf16",), 1.33, torch.bfloat16),  # issue 25's AVX512-BF16 CPU
    (("avx512_bf16",), 0.8, None),  # this project's AVX512-BF16 CPU (benchmarks/results/train_speed_cpu2.json)
    ((), 3.0, None),  # no bf16 units: fp32 without timing anything
])
def test_amp_auto_on_cpu_takes_bf16_only_where_it_has_units_and_is_faster(caplog, units, bf16_speedup, expected_auto):
    """auto on a CPU: bf16 where the probe finds bf16 units AND bf16 times clearly faster on the stage's model;
    fp32 otherwise. bf16 is honoured either way (loudly when emulated); off is fp32; fp16 runs fp32 and says so."""
    from nfdseg.distill import amp
    from nfdseg.models import build_model

    amp._probe_memo.clear()
    cpu, model = torch.device("cpu"), build_model("deeplabv3_resnet_tiny", 5)
    timer, calls = _stand_in_timer(1.0, 1.0 / bf16_speedup)
    before = [p.detach().clone() for p in model.parameters()]
    rng = torch.get_rng_state()
    with caplog.at_level("WARNING", logger="nfdseg.distill.amp"):
        auto, why = amp.amp_choice("auto", cpu, bf16_units=units, model=model, batch_shape=(2, 3, 32, 32),
                                   timer=timer)
        off, _ = amp.amp_choice("off", cpu, bf16_units=units)
        assert not caplog.records, "auto/off on a CPU are documented choices, not fallbacks"
        bf16, _ = amp.amp_choice("bf16", cpu, bf16_units=units)
        fp16, fp16_why = amp.amp_choice("fp16", cpu, bf16_units=units)
    assert (auto, off, bf16, fp16) == (expected_auto, None, torch.bfloat16, None)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters())), "the probe trains a copy"
    assert torch.equal(rng, torch.get_rng_state()), "probing or not leaves the same random stream to training"
    if units:
        assert len(calls) == 2 * (1 + amp.PROBE_STEPS) and calls[0][1] == (2, 3, 32, 32)
        assert f"({bf16_speedup:.2f}x)" in why and all(u in why for u in units)
    else:
        assert not calls and "no bf16 units" in why
    assert amp.amp_label(auto) == ("bf16" if expected_auto else "off") and "fp32" in fp16_why
    messages = [r.getMessage() for r in caplog.records]
    assert any("FALLBACK" in m and "fp16" in m for m in messages)
    assert any("emulated" in m for m in messages) == (not units)
    # the same model and batch get the same answer in this process, without timing again
    again = amp.amp_choice("auto", cpu, bf16_units=units, model=model, batch_shape=(2, 3, 32, 32), timer=timer)
    assert again == (auto, why) and len(calls) == (2 * (1 + amp.PROBE_STEPS) if units else 0)


def test_amp_auto_keeps_its_answer_per_machine_across_processes(tmp_path, monkeypatch):
    """A busier machine must not flip a second run's precision: the first timing's answer is kept in the user's
    cache (keyed by CPU, threads, torch, model, batch) and a new process (memo cleared) reads it instead of timing;
    deleting the file times again."""
    from nfdseg.distill import amp
    from nfdseg.models import build_model

    monkeypatch.setenv("NFDSEG_CACHE_DIR", str(tmp_path / "cache"))
    model, cpu = build_model("deeplabv3_resnet_tiny", 5), torch.device("cpu")
    choose = lambda: amp.amp_choice("auto", cpu, bf16_units=("avx512_bf16",), model=model,  # noqa: E731
                                    batch_shape=(2, 3, 32, 32))
    amp._probe_memo.clear()
    timer, calls = _stand_in_timer(1.0, 0.5)  # bf16 2x faster at the first timing
    monkeypatch.setattr(amp, "_time_step", timer)
    first = choose()
    assert first[0] == torch.bfloat16 and calls
    assert json.loads((tmp_path / "cache" / amp.AMP_CHOICE_FILE).read_text())
    amp._probe_memo.clear()  # a new process, on a machine now so busy that fp32 would time faster
    timer, calls = _stand_in_timer(0.5, 1.0)
    monkeypatch.setattr(amp, "_time_step", timer)
    kept = choose()
    assert kept[0] == torch.bfloat16 and not calls and "kept from" in kept[1]
    (tmp_path / "cache" / amp.AMP_CHOICE_FILE).unlink()
    amp._probe_memo.clear()
    assert choose()[0] is None and calls, "without the file it times again"
    amp._probe_memo.clear()


def test_a_resumed_run_keeps_the_precision_it_started_with(tmp_path, monkeypatch):
    """last.pt records the precision; a resume whose probe would now answer otherwise keeps the recorded one."""
    import nfdseg.distill.trainer as trainer

    cfg = _small_run(iters=4, ckpt_every=2, amp="auto")
    monkeypatch.setattr(trainer, "amp_choice", lambda *a, **k: (torch.bfloat16, "stand-in: bf16 was faster"))
    trainer.train_stage(cfg, "teacher", tmp_path / "t", progress=False, stop_after=2)
    assert torch.load(tmp_path / "t/last.pt", weights_only=False)["amp"] == "bf16"
    monkeypatch.setattr(trainer, "amp_choice", lambda *a, **k: (None, "stand-in: fp32 now"))
    m = trainer.train_stage(cfg, "teacher", tmp_path / "t", progress=False)
    assert m.metrics["amp"] == "bf16" and m.metrics["amp_reason"] == "stand-in: bf16 was faster (kept on resume)"


def test_the_cpu_probe_reads_flags_and_the_onednn_cap():
    """The probe behind amp=auto, on stand-in /proc/cpuinfo text: AMX needs amx_bf16 and amx_tile; a oneDNN ISA
    cap below AVX512_CORE_AMX hides AMX, below AVX512_CORE_BF16 hides both; peaks follow the flags and clock."""
    from nfdseg.cpu import cpu_peak_gflops, read_cpu_info

    spr = "model name\t: Intel(R) Xeon(R) Platinum 8480+ @ 2.00GHz\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
    assert read_cpu_info(spr, env={}, cores=2).bf16_units == ("amx_bf16", "avx512_bf16")
    capped = read_cpu_info(spr, env={"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}, cores=2)
    assert capped.bf16_units == ("avx512_bf16",)
    assert read_cpu_info(spr, env={"ONEDNN_MAX_CPU_ISA": "avx2"}, cores=2).bf16_units == ()
    zen2 = "model name\t: AMD EPYC 7B12\ncpu MHz\t\t: 2250.000\nflags\t\t: fpu avx2 fma\n"
    assert read_cpu_info(zen2, env={}, cores=2).bf16_units == ()
    assert read_cpu_info("", env={}, cores=2).bf16_units == (), "no /proc/cpuinfo: claim nothing"
    peak = cpu_peak_gflops(read_cpu_info(spr, env={}, cores=2))
    assert (peak["fp32_peak_gflops"], peak["bf16_peak_gflops"]) == (2 * 2.0 * 64, 2 * 2.0 * 1024)
    assert cpu_peak_gflops(capped)["bf16_peak_gflops"] == 2 * 2.0 * 128
    amd = cpu_peak_gflops(read_cpu_info(zen2, env={}, cores=2))
    assert amd["fp32_peak_gflops"] == amd["bf16_peak_gflops"] == 2 * 2.25 * 32


@pytest.mark.parametrize("gpu, native_bf16, expected", [
    ("H100/A100 (bf16 in hardware)", True, {"auto": torch.bfloat16, "bf16": torch.bfloat16, "fp16": torch.float16,
                                            "off": None}),
    ("V100/T4 (bf16 only emulated)", False, {"auto": torch.float16, "fp16": torch.float16, "off": None}),
])
def test_amp_dtype_on_a_mocked_gpu(monkeypatch, gpu, native_bf16, expected):
    """No GPU needed: a cuda device object and torch's bf16 query are mocked. On a GPU without bf16 units torch
    still reports bf16 'supported' (emulated, slower than fp16): auto must pick fp16 there."""
    from nfdseg.distill.amp import amp_choice

    monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                        lambda including_emulation=True: True if including_emulation else native_bf16)
    cuda = torch.device("cuda", 0)
    assert {mode: amp_choice(mode, cuda)[0] for mode in expected} == expected, gpu


# ----------------------------------------------------------------------------- gradient accumulation
class _PlainNet(torch.nn.Module):
    """No BatchNorm, no dropout: a batch's gradient is then exactly the mean of its halves' gradients."""

    family = "plain"

    def __init__(self, num_classes):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(6, num_classes, 1)
        self.feature_channels = {"f": 6}

    def forward(self, x, return_features=False):
        f = torch.relu(self.conv1(x))
        logits = self.conv2(f)
        return (logits, {"f": f}) if return_features else logits


def test_grad_accum_2x2_gives_the_update_of_one_batch_of_4(tmp_path, monkeypatch):
    """SGD with momentum, 2 iterations: accumulating 2 micro-batches of 2 equals 1 batch of 4 (same samples and
    crops: the batch plan numbers samples globally), to float32 rounding; 1 batch of 2 is clearly different."""
    import nfdseg.distill.trainer as trainer

    monkeypatch.setattr(trainer, "build_model", lambda arch, num_classes, pretrained="": _PlainNet(num_classes))

    def weights(batch, accum):
        cfg = _small_run({"name": "sgd", "lr": 0.5, "momentum": 0.9, "weight_decay": 0.0}, batch_size=batch,
                         grad_accum=accum)
        trainer.train_stage(cfg, "teacher", tmp_path / f"b{batch}x{accum}", progress=False)
        return torch.load(tmp_path / f"b{batch}x{accum}/last.pt", weights_only=False)["model"]

    torch.manual_seed(0)
    w0 = _PlainNet(8).state_dict()
    full, accum, half = weights(4, 1), weights(2, 2), weights(2, 1)
    for k in w0:
        step = (full[k] - w0[k]).abs().max().item()
        assert step > 1e-3, f"{k} did not move"
        torch.testing.assert_close(accum[k], full[k], rtol=0, atol=1e-5 * max(step, 1.0))
    far = max((half[k] - full[k]).abs().max().item() for k in w0)
    assert far > 100 * max((accum[k] - full[k]).abs().max().item() for k in w0), "the test tells the cases apart"


# ----------------------------------------------------------------------------- training curves
def test_tensorboard_curves_hold_the_loss_terms_lr_miou_and_speed(tmp_path):
    """Every stage writes TensorBoard event files when tensorboard is installed; their scalars are history.json's."""
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    import json

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from nfdseg.distill.trainer import train_stage

    train_stage(_small_run(iters=4, eval_every=2, log_every=2), "teacher", tmp_path / "t", progress=False)
    acc = EventAccumulator(str(tmp_path / "t" / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/ce", "train/distill", "train/lr", "train/images_per_s", "val/miou"} <= tags
    history = json.loads((tmp_path / "t" / "history.json").read_text())
    assert [e.step for e in acc.Scalars("val/miou")] == [h["iter"] for h in history["eval"]] == [2, 4]
    # event files hold float32; history.json rounds to 5 decimals
    assert [e.value for e in acc.Scalars("val/miou")] == pytest.approx([h["miou"] for h in history["eval"]], abs=1e-3)
    assert [e.value for e in acc.Scalars("train/ce")] == pytest.approx([h["ce"] for h in history["train"]], abs=1e-4)
    assert all(e.value > 0 for e in acc.Scalars("train/images_per_s"))


def test_without_tensorboard_training_says_where_curves_would_go(tmp_path, monkeypatch, caplog):
    import importlib.util

    from nfdseg.distill import curves

    real = importlib.util.find_spec
    monkeypatch.setattr(curves.importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    with caplog.at_level("INFO", logger="nfdseg.distill.curves"):
        c = curves.Curves(tmp_path)
        c.add(1, train={"ce": 1.0})
        c.close()
    assert not (tmp_path / "tensorboard").exists()
    assert any("nfdseg[tensorboard]" in r.getMessage() for r in caplog.records)
