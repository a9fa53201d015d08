"""The training loop for both stages: the teacher (cross-entropy) and the student (cross-entropy + distillation).

Reads top to bottom: setup, data, models, optimiser, loop (with eval and checkpoints), deliverables.
Batches are a pure function of (seed, iteration), and RNG state is checkpointed, so a killed run
resumed from last.pt ends exactly where an uninterrupted run would (on the same device).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from nfdseg.artifacts import BEST_METRICS, CHECKPOINT, CHECKPOINT_MANIFEST, HISTORY, RESUME_STATE, STAGE_CONFIG
from nfdseg.data import build_source, preprocess_spec, require_clean_data
from nfdseg.data.balance import class_weights
from nfdseg.errors import ArtifactError, ConfigError
from nfdseg.fsutil import write_json_atomic, write_text_atomic
from nfdseg.manifest import Manifest, TensorSpec, runtime_versions, write_manifest
from nfdseg.models import build_model, count_parameters
from nfdseg.models.checkpoint import CHECKPOINT_FORMAT, load_model_from_dir, rng_state, save_torch_atomic, set_rng_state

from .amp import DTYPE_OF_LABEL, amp_choice, amp_label
from .config import RunConfig, StageConfig, adds_logits_kd
from .curves import Curves
from .dataset import SegDataset
from .losses import KDLoss, build_loss
from .losses.ce import SegCrossEntropy
from .losses.guard import RunawayGuard
from .runkey import saved_config_text, stage_run_key, stale_error

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- setup helpers
def _own_gpu(local_rank: int) -> int:
    """This process's GPU index: LOCAL_RANK where it sees the node's GPUs, 0 where it sees exactly one (a
    per-task CUDA_VISIBLE_DEVICES, as SLURM sets it); anything else has no GPU of its own."""
    count = torch.cuda.device_count()
    if count > local_rank:
        return local_rank
    if count == 1:
        return 0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "unset")
    raise ConfigError(f"torchrun process LOCAL_RANK {local_rank} has no GPU of its own",
                      seen=f"{count} GPUs visible to it (CUDA_VISIBLE_DEVICES={visible})",
                      fix="let every process see all the node's GPUs, or exactly one each (CUDA_VISIBLE_DEVICES per "
                          "task), and start at most one process per GPU (--nproc-per-node)")


def pick_device(name: str) -> torch.device:
    """train.device -> a torch device. 'auto' and 'cuda' take this process's own GPU: cuda:LOCAL_RANK (torchrun
    sets it; 0 otherwise), or cuda:0 where each process sees a single GPU, so each process of a multi-GPU run
    drives its own GPU and DDP gets a device index."""
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if name == "auto":
        return torch.device("cuda", _own_gpu(local_rank)) if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device asks for CUDA but no CUDA GPU is visible", seen=name,
                          fix="use train.device=auto or cpu")
    if dev.type == "cuda" and dev.index is None:
        return torch.device("cuda", _own_gpu(local_rank))
    if dev.type == "cuda" and int(os.environ.get("WORLD_SIZE", 1)) > 1 and dev.index != _own_gpu(local_rank):
        raise ConfigError(f"train.device {name} puts every torchrun process on the same GPU",
                          seen=f"LOCAL_RANK {local_rank}, whose GPU is cuda:{_own_gpu(local_rank)}",
                          fix="use train.device=cuda (or auto): each process then takes its own GPU")
    return dev


def poly_lr(base: float, it: int, total: int, power: float, warmup: int) -> float:
    if warmup and it < warmup:
        return base * (it + 1) / warmup
    return base * (1 - min(it, total - 1) / total) ** power


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class BatchPlan:
    """Which samples (and augmentation seeds) make up batch `it`: depends only on seed and it."""

    def __init__(self, n: int, batch: int, seed: int, rank: int = 0, world: int = 1):
        self.n, self.batch, self.seed, self.rank, self.world = n, batch, seed, rank, world

    def indices(self, it: int) -> list[tuple[int, int]]:
        global_batch = self.batch * self.world
        start = it * global_batch
        out = []
        for k in range(start + self.rank * self.batch, start + (self.rank + 1) * self.batch):
            epoch, pos = divmod(k, self.n)
            perm = np.random.default_rng((self.seed, epoch)).permutation(self.n)
            out.append((int(perm[pos]), (self.seed * 1_000_003 + k) & 0x7FFFFFFF))
        return out


class _PlannedSamples(torch.utils.data.Dataset):
    """Items are (sample index, augmentation seed) pairs from BatchPlan: the same seed gives the same crop,
    in the main process or in any DataLoader worker."""

    def __init__(self, ds: SegDataset):
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, item: tuple[int, int]):
        index, aug_seed = item
        torch.manual_seed(aug_seed)  # SegDataset draws its augmentation from torch's RNG
        return self.ds[index]


class _PlanBatches(torch.utils.data.Sampler):
    """Yields the plan's micro-batches from `start` on (so a resumed run continues the same sequence)."""

    def __init__(self, plan: BatchPlan, start: int, stop: int):
        self.plan, self.start, self.stop = plan, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __iter__(self):
        return (self.plan.indices(k) for k in range(self.start, self.stop))


def plan_loader(ds: SegDataset, plan: BatchPlan, start: int, stop: int, workers: int) -> torch.utils.data.DataLoader:
    """Micro-batches start..stop of the plan; `workers` > 0 prepares them in background processes."""
    return torch.utils.data.DataLoader(_PlannedSamples(ds), batch_sampler=_PlanBatches(plan, start, stop),
                                       num_workers=workers, persistent_workers=False,
                                       pin_memory=torch.cuda.is_available())


def evaluate(model: torch.nn.Module, source, manifest: Manifest, device: torch.device, limit: int = 0,
             progress: bool = False) -> dict[str, Any]:
    """mIoU (%), pixel accuracy (%) and per-class IoU (%) of the in-memory `model` on `source`.

    Measured by the project's one evaluation (nfdseg.serve.evaluate): the same preprocessing, the label map
    scored at each mask's own resolution, so the checkpoint's figure is what `nfdseg eval` reports for its
    exports. `manifest` gives the classes and preprocessing.
    """
    from nfdseg.serve.backends.torch_backend import TorchBackend
    from nfdseg.serve.evaluate import evaluate as evaluate_segmenter
    from nfdseg.serve.segmenter import Segmenter

    was_training = model.training
    model.eval()
    try:
        # fp32 always: the backend converts a module's weights in place for fp16/bf16, and these are the
        # weights being trained. (AMP training still evaluates the fp32 master weights, as deployed.)
        backend = TorchBackend(Path("in-memory"), manifest, device=str(device), precision="fp32",
                               channels_last=False, model=model)
        m = evaluate_segmenter(Segmenter.from_backend(backend), source, batch=16, limit=limit, progress=progress)
    finally:
        model.train(was_training)
    return {k: m[k] for k in ("miou", "pixel_accuracy", "per_class_iou", "gt_pixels", "images")}


def build_ce(sc: StageConfig, train_ds: SegDataset, classes) -> SegCrossEntropy:
    """The stage's cross-entropy: class weights from the training masks (train.class_weights) and OHEM."""
    weights = None
    if sc.train.class_weights != "none":
        masks = (train_ds.mask(i) for i in range(len(train_ds)))
        weights = class_weights(sc.train.class_weights, masks, classes.num_classes, classes.ignore_index)
        log.info("class weights (%s): %s", sc.train.class_weights,
                 ", ".join(f"{n} {w:.2f}" for n, w in zip(classes.names, weights)))
    return SegCrossEntropy(classes.ignore_index, None if weights is None else torch.from_numpy(weights),
                           sc.train.ohem_thresh, sc.train.ohem_min_kept)


# ----------------------------------------------------------------------------- the stage, in named pieces
@dataclass
class _Process:
    """Where this process trains: its device, and its place in a torchrun job (world 1 without one)."""

    device: torch.device
    world: int
    rank: int

    @property
    def main(self) -> bool:
        return self.rank == 0


@dataclass
class _Data:
    train_src: Any
    val_src: Any
    classes: Any
    spec: Any
    train_ds: SegDataset
    plan: "BatchPlan"
    eval_manifest: Manifest


@dataclass
class _Nets:
    """Everything the step touches: the student (and its DDP wrapper), the teacher, the losses, the optimiser."""

    model: torch.nn.Module
    net: torch.nn.Module
    ce_loss: SegCrossEntropy
    teacher: torch.nn.Module | None
    teacher_manifest: Manifest | None
    distill: torch.nn.Module | None
    distill_fn: torch.nn.Module | None
    extra_kd: torch.nn.Module | None
    guard: RunawayGuard | None
    teacher_forward: bool
    ddp_modules: list
    opt: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    amp: torch.dtype | None
    amp_reason: str


@dataclass
class _Progress:
    """What a resumed run continues from: the iteration done, the best val mIoU, the history, seconds trained."""

    it: int = 0
    best: float = -1.0
    history: dict = field(default_factory=lambda: {"train": [], "eval": []})
    elapsed: float = 0.0


def _setup_process(sc: StageConfig) -> _Process:
    """The device, the distributed group under torchrun, and the seeds."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    rank = int(os.environ.get("RANK", 0))
    device = pick_device(sc.train.device)
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            torch.cuda.set_device(device)
    random.seed(sc.train.seed)
    np.random.seed(sc.train.seed)
    torch.manual_seed(sc.train.seed)
    return _Process(device, world, rank)


def _setup_data(cfg: RunConfig, sc: StageConfig, proc: _Process, progress: bool) -> _Data:
    """The checked dataset, the training view with its batch plan, the validation source."""
    require_clean_data(cfg.data, progress=progress and proc.main)  # every bad file in one error, before training
    train_src, val_src = build_source(cfg.data, "train"), build_source(cfg.data, "val")
    if train_src.classes != val_src.classes:
        raise ConfigError("train and val splits declare different classes")
    classes = train_src.classes
    spec = preprocess_spec(cfg.data)
    train_ds = SegDataset(train_src, spec, cfg.data.crop_size, cfg.data.scale_range, cfg.data.hflip, cfg.data.cache_mb)
    train_ds.fill_cache(progress=progress and proc.main)
    plan = BatchPlan(len(train_ds), sc.train.batch_size, sc.train.seed, proc.rank, proc.world)
    eval_manifest = Manifest(kind="checkpoint", artifact="in-memory", architecture=sc.model.arch, classes=classes,
                             preprocess=spec)
    return _Data(train_src, val_src, classes, spec, train_ds, plan, eval_manifest)


def _setup_nets(cfg: RunConfig, sc: StageConfig, stage: str, data: _Data, proc: _Process,
                teacher_dir: str | Path | None) -> _Nets:
    """The student, for a student stage the frozen teacher and the distillation loss, DDP, the optimiser."""
    device, classes = proc.device, data.classes
    ce_loss = build_ce(sc, data.train_ds, classes).to(device)
    model = build_model(sc.model.arch, classes.num_classes, sc.model.pretrained).to(device)
    teacher, teacher_manifest, distill, extra_kd, guard = None, None, None, None, None
    if stage == "student":
        if teacher_dir is None:
            raise ConfigError("the student stage needs a trained teacher", fix="pass --teacher DIR (a teacher run's output)")
        teacher, teacher_manifest = load_model_from_dir(teacher_dir, device)
        if teacher_manifest.num_classes != classes.num_classes:
            raise ArtifactError("the teacher was trained for a different class count than this dataset",
                                seen=f"teacher {teacher_manifest.num_classes}, dataset {classes.num_classes}",
                                fix="train a teacher on this dataset first")
        for p in teacher.parameters():
            p.requires_grad_(False)
        distill = build_loss(cfg.distill, model.feature_channels, teacher.feature_channels,
                             student_family=model.family, teacher_family=teacher.family).to(device)
        guard = RunawayGuard(cfg.distill, distill)
        extra_kd = (KDLoss(cfg.distill.logits_kd_weight, cfg.distill.temperature)
                    if adds_logits_kd(cfg.distill) else None)
    # the baseline ('none') keeps the teacher only as its recorded parent: no forward pass is spent on it
    teacher_forward = teacher is not None and (cfg.distill.loss != "none" or extra_kd is not None)
    if sc.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
        if teacher is not None:
            teacher = teacher.to(memory_format=torch.channels_last)
    net, distill_fn, ddp_modules = model, distill, []
    if proc.world > 1:
        ids = [device.index] if device.type == "cuda" else None
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
        ddp_modules.append(net)
        if distill is not None and any(p.requires_grad for p in distill.parameters()):
            # the NFD connectors are trained with the student: without DDP their gradients stay per rank, the
            # copies drift apart, and only rank 0's would be saved
            distill_fn = torch.nn.parallel.DistributedDataParallel(distill, device_ids=ids)
            ddp_modules.append(distill_fn)
    params = list(model.parameters()) + (list(distill.parameters()) if distill is not None else [])
    if sc.optim.name == "sgd":
        opt = torch.optim.SGD(params, lr=sc.optim.lr, momentum=sc.optim.momentum, weight_decay=sc.optim.weight_decay)
    else:
        opt = torch.optim.AdamW(params, lr=sc.optim.lr, weight_decay=sc.optim.weight_decay)
    h, w = cfg.data.crop_size
    amp, amp_reason = amp_choice(sc.train.amp, device, model=model, batch_shape=(sc.train.batch_size, 3, h, w),
                                 channels_last=sc.train.channels_last, frozen=teacher if teacher_forward else None)
    if proc.world > 1:  # a timed choice can differ between processes: every rank trains in rank 0's precision
        choice = [amp_label(amp), amp_reason]
        torch.distributed.broadcast_object_list(choice, src=0)
        amp, amp_reason = DTYPE_OF_LABEL[choice[0]], choice[1]
    if proc.main:
        log.info("%s: training %s (%s)", stage, "fp32" if amp is None else f"{amp_label(amp)} autocast", amp_reason)
    scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)
    return _Nets(model, net, ce_loss, teacher, teacher_manifest, distill, distill_fn, extra_kd, guard,
                 teacher_forward, ddp_modules, opt, scaler, amp, amp_reason)


def _resume(nets: _Nets, last: Path, run_key: str, stage: str, resume: bool, proc: _Process,
            iters: int) -> _Progress:
    """Load last.pt (weights, optimiser, scaler, RNG) when it holds this run; a run of other inputs is refused."""
    if not (resume and last.is_file()):
        return _Progress()
    state = torch.load(last, map_location="cpu", weights_only=False)
    if state.get("run_key") != run_key:
        raise stale_error(last.parent, stage)
    nets.model.load_state_dict(state["model"])
    if nets.distill is not None:
        nets.distill.load_state_dict(state["distill"])
    nets.opt.load_state_dict(state["optimizer"])
    nets.scaler.load_state_dict(state["scaler"])
    if "amp" in state and DTYPE_OF_LABEL[state["amp"]] != nets.amp:  # the precision the run started with
        nets.amp, nets.amp_reason = DTYPE_OF_LABEL[state["amp"]], state["amp_reason"] + " (kept on resume)"
    set_rng_state(state["rng"])
    if proc.main:
        log.info("resuming %s from iteration %d of %d", stage, state["iter"], iters)
    return _Progress(state["iter"], state["best"], state["history"], state["elapsed"])


def _train_step(nets: _Nets, sc: StageConfig, batches, it: int, proc: _Process) -> tuple[float, float]:
    """One optimiser step over grad_accum micro-batches (DDP syncs once, on the last); returns (ce, distill)."""
    accum, device, seed = sc.train.grad_accum, proc.device, sc.train.seed
    ce_sum = kd_sum = 0.0
    for micro in range(accum):
        no_sync = contextlib.ExitStack()  # all-reduce once per optimiser step, on the last micro-batch
        if micro < accum - 1:
            for m in nets.ddp_modules:
                no_sync.enter_context(m.no_sync())
        x, y = next(batches)
        if sc.train.workers:
            # With workers, augmentation seeding happens in other processes, so dropout's RNG here is seeded
            # from the plan instead: reproducible, and resumable, for a given worker setting. (With workers=0
            # the per-sample seeding already fixes it, exactly as the published benchmarks ran.)
            torch.manual_seed((seed * 7_919 + (it * accum + micro) * 104_729) & 0x7FFFFFFF)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if sc.train.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=nets.amp, enabled=nets.amp is not None):
            logits, feats = nets.net(x, return_features=True)
            ce = nets.ce_loss(logits, y)
            loss_d = torch.zeros((), device=device)
            if nets.teacher_forward:
                with torch.no_grad():
                    t_logits, t_feats = nets.teacher(x, return_features=True)
                loss_d = nets.distill_fn(logits, feats, t_logits, t_feats)
                if nets.extra_kd is not None:
                    loss_d = loss_d + nets.extra_kd(logits, feats, t_logits, t_feats)
        if nets.guard is not None:  # a runaway distillation stops here, before any checkpoint is written
            nets.guard.check(it, ce, loss_d, logits)
        loss = (ce + loss_d) / accum
        if not torch.isfinite(loss):
            raise ArtifactError(f"training diverged at iteration {it}: loss is {loss.item()}",
                                fix="lower optim.lr or the distillation weight, or use amp=off")
        nets.scaler.scale(loss).backward()
        no_sync.close()
        ce_sum += ce.item() / accum
        kd_sum += float(loss_d.detach()) / accum
    nets.scaler.step(nets.opt)
    nets.scaler.update()
    nets.opt.zero_grad(set_to_none=True)
    return ce_sum, kd_sum


def _save_state(nets: _Nets, prog: _Progress, run_key: str, last: Path) -> None:
    save_torch_atomic({"run_key": run_key, "iter": prog.it, "model": nets.model.state_dict(),
                       "distill": nets.distill.state_dict() if nets.distill is not None else None,
                       "optimizer": nets.opt.state_dict(), "scaler": nets.scaler.state_dict(), "best": prog.best,
                       "amp": amp_label(nets.amp), "amp_reason": nets.amp_reason,
                       "history": prog.history, "elapsed": prog.elapsed, "rng": rng_state()}, last)


def _evaluate_and_checkpoint(nets: _Nets, sc: StageConfig, cfg: RunConfig, data: _Data, prog: _Progress,
                             proc: _Process, out: Path, run_key: str, stage: str, t0: float) -> float:
    """Evaluate every eval_every (best.pt + best_metrics.json on a new best), save last.pt every ckpt_every;
    returns the clock the next stretch of training time counts from."""
    it = prog.it
    if proc.main and (it % sc.train.eval_every == 0 or it == sc.train.iters):
        m = evaluate(nets.model, data.val_src, data.eval_manifest, proc.device, limit=cfg.data.max_val_images)
        prog.history["eval"].append({"iter": it, "miou": m["miou"]})
        log.info("%s iter %d: val mIoU %.2f%%", stage, it, m["miou"])
        if m["miou"] > prog.best:
            prog.best = m["miou"]
            if nets.guard is not None:
                nets.guard.check_weights(nets.model, it)
            save_torch_atomic({"format": CHECKPOINT_FORMAT, "arch": sc.model.arch,
                               "num_classes": data.classes.num_classes, "model": nets.model.state_dict()},
                              out / CHECKPOINT)
            write_json_atomic(out / BEST_METRICS, {"iter": it, **m})
    if proc.main and (it % sc.train.ckpt_every == 0 or it == sc.train.iters):
        prog.elapsed += time.perf_counter() - t0
        t0 = time.perf_counter()
        if nets.guard is not None:
            nets.guard.check_weights(nets.model, it)
        _save_state(nets, prog, run_key, out / RESUME_STATE)
    return t0


def train_stage(cfg: RunConfig, stage: str, out_dir: str | Path, teacher_dir: str | Path | None = None,
                resume: bool = True, stop_after: int | None = None, progress: bool = True) -> Manifest | None:
    """Train the teacher (stage='teacher') or the student (stage='student', distilled from teacher_dir).

    Writes into out_dir: config.yaml, last.pt (resumable state), best.pt + checkpoint.json, history.json.
    `stop_after` ends the run after that many iterations without writing deliverables (to test resume).
    Returns the manifest of best.pt, or None when stopped early (and on the non-main ranks of torchrun).
    """
    sc: StageConfig = getattr(cfg, stage)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    # --- setup: process, data, networks and optimiser
    proc = _setup_process(sc)
    data = _setup_data(cfg, sc, proc, progress)
    nets = _setup_nets(cfg, sc, stage, data, proc, teacher_dir)

    # --- resume
    run_key = stage_run_key(cfg, stage, nets.teacher_manifest.sha256 if nets.teacher_manifest else "")
    prog = _resume(nets, out / RESUME_STATE, run_key, stage, resume, proc, sc.train.iters)
    if proc.main:
        write_text_atomic(out / STAGE_CONFIG, saved_config_text(cfg, stage))

    # --- loop: step, log, evaluate and checkpoint
    nets.net.train()
    start_it, t0 = prog.it, time.perf_counter()
    bar = tqdm(total=sc.train.iters, initial=start_it, desc=f"{stage} ({sc.model.arch})",
               disable=not (progress and proc.main), mininterval=1.0, dynamic_ncols=True)
    batches = iter(plan_loader(data.train_ds, data.plan, start_it * sc.train.grad_accum,
                               sc.train.iters * sc.train.grad_accum, sc.train.workers))
    curves = Curves(out, enabled=proc.main)
    images_per_step = sc.train.batch_size * sc.train.grad_accum * proc.world
    log_clock, log_it = time.perf_counter(), start_it
    while prog.it < sc.train.iters:
        lr = poly_lr(sc.optim.lr, prog.it, sc.train.iters, sc.optim.poly_power, sc.optim.warmup_iters)
        for g in nets.opt.param_groups:
            g["lr"] = lr
        ce, kd = _train_step(nets, sc, batches, prog.it, proc)
        prog.it += 1
        bar.update(1)
        if prog.it % sc.train.log_every == 0 or prog.it == sc.train.iters:
            prog.history["train"].append({"iter": prog.it, "lr": round(lr, 6), "ce": round(ce, 5),
                                          "distill": round(kd, 5)})
            bar.set_postfix(ce=f"{ce:.3f}", distill=f"{kd:.3f}", best=f"{max(prog.best, 0):.1f}")
            now = time.perf_counter()
            curves.add(prog.it, train={"ce": ce, "distill": kd, "lr": lr,
                                       "images_per_s": (prog.it - log_it) * images_per_step / max(now - log_clock, 1e-9)})
            log_clock, log_it = now, prog.it
        evals = len(prog.history["eval"])
        t0 = _evaluate_and_checkpoint(nets, sc, cfg, data, prog, proc, out, run_key, stage, t0)
        if len(prog.history["eval"]) > evals:
            curves.add(prog.it, val={"miou": prog.history["eval"][-1]["miou"]})
            log_clock = time.perf_counter()  # evaluation time is not training speed
        if stop_after is not None and prog.it - start_it >= stop_after:
            bar.close()
            curves.close()
            return None
    bar.close()
    curves.close()
    prog.elapsed += time.perf_counter() - t0

    # --- deliverables: history.json, then checkpoint.json beside best.pt (main process only)
    if proc.main:
        write_json_atomic(out / HISTORY, prog.history)
    if proc.world > 1:
        torch.distributed.barrier()
    ce_record = {"class_weights": sc.train.class_weights,
                 "weights": None if nets.ce_loss.weight is None else [round(float(w), 4) for w in nets.ce_loss.weight],
                 "ohem_thresh": sc.train.ohem_thresh, "ohem_min_kept": sc.train.ohem_min_kept,
                 "train_images_cached": data.train_ds.cache_decision}
    manifest = _write_deliverables(out, cfg, sc, stage, data.classes, data.spec, nets.model, nets.teacher_manifest,
                                   teacher_dir, prog.elapsed, proc.device, nets.amp, nets.amp_reason,
                                   proc.world, run_key, ce_record) if proc.main else None
    if proc.world > 1:
        torch.distributed.barrier()  # other ranks may read checkpoint.json next (the student stage)
    return manifest


def _write_deliverables(out, cfg, sc, stage, classes, spec, model, teacher_manifest, teacher_dir, elapsed, device,
                        amp, amp_reason, world, run_key, ce_record) -> Manifest:
    """best.pt was saved at the best evaluation; now its manifest, checkpoint.json, and history.json."""
    best_metrics = json.loads((out / BEST_METRICS).read_text())
    images = sc.train.iters * sc.train.batch_size * sc.train.grad_accum * world
    h, w = spec.input_size
    manifest = Manifest(
        kind="checkpoint", artifact=CHECKPOINT, architecture=sc.model.arch, classes=classes, preprocess=spec,
        precision="fp32", output_kind="logits",
        inputs=(TensorSpec("input", "float32", ("N", 3, h, w), "NCHW"),),
        outputs=(TensorSpec("logits", "float32", ("N", classes.num_classes, h, w), "NCHW"),),
        parent_sha256=teacher_manifest.sha256 if teacher_manifest else "",
        parent=str(Path(teacher_dir).resolve()) if teacher_dir else "",
        metrics={**best_metrics, "params": count_parameters(model), "train_time_s": round(elapsed, 2),
                 "images_per_s": round(images / max(elapsed, 1e-9), 2), "peak_rss_mb": round(peak_rss_mb(), 1),
                 "device": str(device), "amp": amp_label(amp), "amp_reason": amp_reason,
                 "channels_last": sc.train.channels_last, "world_size": world,
                 "ce": ce_record, "init": getattr(model, "init", "random")},
        config={"stage": stage, **cfg.to_dict(), "run_key": run_key},
        versions=runtime_versions("torch", "torchvision", "numpy"),
    )
    return write_manifest(manifest, out / CHECKPOINT_MANIFEST)
