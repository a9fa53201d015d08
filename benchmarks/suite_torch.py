"""The GPU suite's torch sections (benchmarks/gpu_suite.py): training, the served student, backend latency.

Everything here imports nfdseg lazily: the suite maps the checkout first (gpu_suite.use_checkout).

- `train_section`: the student stage in fp32 (TF32 off), AMP bf16 and AMP bf16 + channels_last; a row counts
  only when the trainer's own record (checkpoint.json `metrics`: amp in the trainer's spelling, device,
  channels_last) matches its label.
- `torch_section`: the trained student through `Segmenter(backend="torch")` in several precisions, against
  the fp32 reference, and its mIoU on the CPU (fp32) beside the GPU's.
- `latency_section`: the torch backend's own latency, CUDA graphs on and off, for the quick student's and
  DeepLabV3-ResNet-18's architectures at the suite's input size, batch 1.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from pathlib import Path

from suite_sections import Budget, SkipSection, backend_mismatch, torch_expectation

log = logging.getLogger("gpu_suite")

# label -> train.* overrides; the trainer must record what each label says
TRAIN_MODES = {"fp32_tf32_off": {"amp": "off", "channels_last": False},
               "bf16": {"amp": "bf16", "channels_last": False},
               "bf16_channels_last": {"amp": "bf16", "channels_last": True}}
QUICK_STUDENT = "deeplabv3_resnet10_w8"  # nfdseg/configs/quick.yaml's student
LATENCY_ARCHS = (QUICK_STUDENT, "deeplabv3_resnet18")


def run_config(p: dict, data: Path, device: str, student: dict, teacher_iters: int | None = None):
    from nfdseg.distill.config import load_run_config

    # DataLoader workers re-import nfdseg; only forked ones inherit the checkout mapping (use_checkout)
    workers = min(12, max(0, (os.cpu_count() or 2) - 2)) if multiprocessing.get_start_method() == "fork" else 0
    train = {"batch_size": p["batch"], "device": device, "workers": workers, "log_every": 10}
    optim = {"name": "sgd", "lr": 0.01}  # from scratch at these widths: the quick preset's 0.05 is for tiny models
    over = {"data": {"format": "folder", "root": str(data), "crop_size": list(p["crop"]),
                     "input_size": list(p["input"]), "scale_range": list(p["scale"]), "max_val_images": p["max_val"]},
            "teacher": {"model": {"arch": p["teacher"]}, "optim": optim,
                        "train": {**train, "iters": teacher_iters or p["teacher_iters"], "amp": "bf16",
                                  "channels_last": True, "eval_every": 10**6, "ckpt_every": 10**6}},
            "student": {"model": {"arch": p["student"]}, "optim": optim, "train": {**train, **student}}}
    return load_run_config("quick", over)


_TF32_DEFAULTS: dict = {}


def set_tf32(on: bool) -> None:
    """on: torch's defaults (TF32 for convolutions); off: IEEE fp32 for convolutions and matmuls. torch >= 2.9
    has per-backend `fp32_precision` and refuses a mix with the legacy allow_tf32 flags: only one API is used."""
    import torch

    conv, mm = getattr(torch.backends.cudnn, "conv", None), torch.backends.cuda.matmul
    if conv is not None and hasattr(conv, "fp32_precision") and hasattr(mm, "fp32_precision"):
        if not _TF32_DEFAULTS:
            _TF32_DEFAULTS.update(api="fp32_precision", conv=conv.fp32_precision, matmul=mm.fp32_precision)
        conv.fp32_precision = _TF32_DEFAULTS["conv"] if on else "ieee"
        mm.fp32_precision = _TF32_DEFAULTS["matmul"] if on else "ieee"
        return
    if not _TF32_DEFAULTS:
        _TF32_DEFAULTS.update(api="allow_tf32", conv=torch.backends.cudnn.allow_tf32, matmul=mm.allow_tf32)
    torch.backends.cudnn.allow_tf32 = _TF32_DEFAULTS["conv"] if on else False
    mm.allow_tf32 = _TF32_DEFAULTS["matmul"] if on else False


def trainer_expectation(requested: dict, device: str) -> dict:
    """What the trainer must record for a mode: amp in the trainer's own spelling (AMP_LABELS, through
    amp_choice: on a GPU bf16 is bf16; on a CPU the record says what that CPU ran), the device, channels_last."""
    import torch

    from nfdseg.distill.amp import amp_choice, amp_label

    dtype, _ = amp_choice(requested["amp"], torch.device(device))
    return {"amp": amp_label(dtype), "device": device, "channels_last": requested["channels_last"]}


def train_section(p: dict, data: Path, work: Path, device: str, out: dict, budget: Budget) -> Path:
    """Teacher once, then the student stage in each TRAIN_MODES mode, same iterations; then a longer bf16 +
    channels_last student for the serving sections, as long as the section's budget allows. Returns that
    student's directory. Raises SkipSection when a mode's record contradicts its label (the rows stay)."""
    from nfdseg.distill import trainer

    t0 = time.perf_counter()
    cfg = run_config(p, data, device, {"iters": p["speed_iters"]})
    trainer.train_stage(cfg, "teacher", work / "teacher", progress=False)
    res = out["train"] = {"teacher_s": round(time.perf_counter() - t0, 1), "crop": list(p["crop"]),
                          "batch": p["batch"], "iters": p["speed_iters"], "teacher": p["teacher"],
                          "student": p["student"],
                          "images_per_s_is": "images / wall time of the whole train_stage loop (data, steps, one "
                                             "evaluation)"}
    for warm in (True, False):  # a short unmeasured run of each mode first: CUDA/cuDNN start-up is nobody's speed
        for name, train in TRAIN_MODES.items():
            if warm and not p["warm_iters"]:
                continue
            budget.check(f"the {'warm-up' if warm else 'timed'} {name} student")
            set_tf32(name != "fp32_tf32_off")
            iters = p["warm_iters"] if warm else p["speed_iters"]
            cfg = run_config(p, data, device, {"iters": iters, "eval_every": iters, "ckpt_every": iters, **train})
            m = trainer.train_stage(cfg, "student", work / name, teacher_dir=work / "teacher", resume=False,
                                    progress=False).metrics
            if warm:
                continue
            record = {k: m.get(k) for k in ("amp", "device", "channels_last")}
            res[name] = {"images_per_s": m["images_per_s"], "train_time_s": m["train_time_s"],
                         "amp_used": m["amp"], "amp_reason": m.get("amp_reason"), "device": m["device"],
                         "channels_last": m.get("channels_last"), "requested": train}
            wrong = backend_mismatch(record, trainer_expectation(train, device))
            if wrong:
                res[name] = {"skipped": wrong.replace("the Segmenter reports", "the trainer recorded"),
                             "record": res.pop(name)}
                continue
            log.info("train %s: %.1f images/s", name, m["images_per_s"])
    set_tf32(True)
    if not all("images_per_s" in res[name] for name in TRAIN_MODES):
        raise SkipSection("a training mode did not run as labelled: " + "; ".join(
            f"{n}: {res[n]['skipped']}" for n in TRAIN_MODES if "skipped" in res[n]))
    ref = res["fp32_tf32_off"]["images_per_s"]
    res["speedup_vs_fp32"] = {n: round(res[n]["images_per_s"] / ref, 3) for n in TRAIN_MODES if n != "fp32_tf32_off"}
    # the served student trains as long as this section's budget allows (up to serve_iters; 10 s for its evaluation)
    budget.check("the served student")
    fits = int((budget.left() - 10) * res["bf16_channels_last"]["images_per_s"] / p["batch"])
    n = max(min(p["serve_iters"], fits), min(p["serve_iters"], 20))
    served = {"iters": n, "eval_every": n, "ckpt_every": n, **TRAIN_MODES["bf16_channels_last"]}
    cfg = run_config(p, data, device, served)
    m = trainer.train_stage(cfg, "student", work / "served", teacher_dir=work / "teacher", resume=False,
                            progress=False)
    res["served_student"] = {"iters": n, "val_miou": m.metrics["miou"], "dir": str(work / "served")}
    return work / "served"


def measure(seg, images: list, source, p: dict, ref_labels: list | None, budget: Budget | None = None,
            expect: dict | None = None, batches: tuple[int, ...] = (1, 4)) -> tuple[dict, list | None]:
    """Label maps + mIoU on the validation images (nfdseg.serve.evaluate), agreement with `ref_labels`, and
    end-to-end predict latency at each batch size. First, when `expect` is given, the Segmenter's own report must
    agree with it (backend_mismatch): otherwise nothing is run and the row says what was seen."""
    import numpy as np

    from nfdseg.serve.bench import percentiles
    from nfdseg.serve.evaluate import evaluate

    report = seg.describe()
    wrong = backend_mismatch(report, expect or {})
    if wrong:
        log.warning("not timed: %s", wrong)
        return {"skipped": wrong, "expected": expect, "backend": report}, None
    labels: list = []
    ev = evaluate(seg, source, batch=1, limit=len(images), progress=False,
                  on_batch=lambda start, out, preds: labels.extend(pr.labels for pr in preds))
    res = {"miou": ev["miou"], "backend": report, "expected": expect}
    if ref_labels is not None:
        agree = [float((a == b).mean() * 100) for a, b in zip(labels, ref_labels)]
        res["label_agreement_pct"] = round(float(np.mean(agree)), 4)
        res["label_agreement_min_image_pct"] = round(min(agree), 4)
    for batch in batches:
        if budget:
            budget.check(f"latency at batch {batch}")
        xs = [images[i % len(images)] for i in range(batch)]
        for _ in range(p["warmup"]):
            seg.predict(xs)
        ms = []
        for _ in range(p["lat_iters"]):
            t = time.perf_counter()
            seg.predict(xs)
            ms.append((time.perf_counter() - t) * 1e3)
        res[f"batch{batch}"] = {**percentiles(ms), "images_per_s": round(batch * 1e3 / float(np.median(ms)), 2)}
    return res, labels


# name, precision, TF32, CUDA graphs
TORCH_VARIANTS = [("fp32_tf32_off", "fp32", False, False), ("fp32", "fp32", True, False),
                  ("fp16", "fp16", True, False), ("bf16", "bf16", True, False),
                  ("fp16_cuda_graphs", "fp16", True, True)]


def torch_section(student: Path, p: dict, device: str, out: dict, budget: Budget, dry_run: bool,
                  state: dict) -> None:
    """The trained student through Segmenter on `device` in each TORCH_VARIANTS row, then on the CPU in fp32:
    `miou_vs_cpu` is each GPU row's mIoU minus the CPU's (percentage points) on the same validation images."""
    from nfdseg.serve import Segmenter
    from nfdseg.serve.evaluate import load_eval_source

    rows: dict = {}
    res = out["torch"] = {"input_hw": list(p["input"]), "reference": "fp32_tf32_off",
                          "tf32_defaults": _TF32_DEFAULTS, "variants": rows}
    ref, images = None, None
    try:
        for name, precision, tf32, graphs in TORCH_VARIANTS:
            budget.check(f"variant {name}")
            set_tf32(tf32)
            seg = Segmenter(student, backend="torch", device=device, precision=precision, cuda_graphs=graphs)
            try:
                source = load_eval_source(seg, "default", "folder", "val")
                images = images or [source.load(i)[0] for i in range(len(source))]
                rows[name], labels = measure(seg, images, source, p, ref, budget,
                                             torch_expectation(precision, graphs, dry_run))
            finally:
                seg.close()
            if name == "fp32_tf32_off" and labels is not None:
                ref = labels
            if "batch1" in rows[name]:
                log.info("torch %s: p50 %.2f ms (batch 1)", name, rows[name]["batch1"]["p50_ms"])
        budget.check("the CPU's mIoU")
        seg = Segmenter(student, backend="torch", device="cpu", precision="fp32")
        try:
            cpu, _ = measure(seg, images, load_eval_source(seg, "default", "folder", "val"), p, ref, budget,
                             {"backend": "torch", "device": "cpu", "precision": "fp32"}, batches=())
        finally:
            seg.close()
        res["cpu_fp32"] = cpu
        res["miou_vs_cpu"] = {n: round(r["miou"] - cpu["miou"], 4) for n, r in rows.items() if "miou" in r}
    finally:
        set_tf32(True)
        state.update(ref=ref, images=images)
    untimed = [f"{n}: {r['skipped']}" for n, r in rows.items() if "skipped" in r]
    if untimed:
        raise SkipSection("not every variant ran as labelled: " + "; ".join(untimed))


def latency_section(p: dict, num_classes: int, device: str, out: dict, budget: Budget, dry_run: bool) -> None:
    """TorchBackend.infer_labels latency at batch 1, fp16 (fp32 on the CPU), CUDA graphs off and on, for each
    LATENCY_ARCHS architecture with random weights (latency does not depend on them) at p["input"]. The graphs
    row must return the eager row's labels (the replay is checked, not only timed)."""
    import numpy as np
    import torch

    from nfdseg.models import build_model
    from nfdseg.serve.backends.torch_backend import TorchBackend
    from nfdseg.serve.bench import percentiles

    h, w = p["input"]
    rows: dict = {}
    out["latency"] = {"input_hw": [h, w], "batch": 1, "weights": "random (latency only)", "archs": rows}
    x = np.random.default_rng(0).standard_normal((1, 3, h, w)).astype(np.float32)
    untimed = []
    for arch in LATENCY_ARCHS:
        torch.manual_seed(0)
        model = build_model(arch, num_classes).to(device)  # TorchBackend serves an in-memory model where it is
        rows[arch] = {"params": sum(t.numel() for t in model.parameters())}
        eager_labels = None
        for graphs in (False, True):
            name = "cuda_graphs" if graphs else "eager"
            budget.check(f"{arch} {name}")
            manifest = _StandInManifest("fp16")
            b = TorchBackend(Path(f"random:{arch}"), manifest, device=device, precision="fp16", cuda_graphs=graphs,
                             model=model)
            try:
                wrong = backend_mismatch(b.describe(), torch_expectation("fp16", graphs, dry_run))
                if wrong:
                    rows[arch][name] = {"skipped": wrong.replace("the Segmenter", "the torch backend"),
                                        "backend": b.describe()}
                    untimed.append(f"{arch} {name}")
                    continue
                for _ in range(p["warmup"]):
                    labels = b.infer_labels(x)
                ms = []
                for _ in range(p["lat_iters"]):
                    t = time.perf_counter()
                    b.infer_labels(x)  # returns host memory: the device work is finished when it returns
                    ms.append((time.perf_counter() - t) * 1e3)
                row = rows[arch][name] = {**percentiles(ms), "backend": b.describe()}
                if eager_labels is None:
                    eager_labels = labels
                else:
                    row["label_agreement_with_eager_pct"] = round(float((labels == eager_labels).mean() * 100), 4)
                log.info("latency %s %s: p50 %.2f ms", arch, name, row["p50_ms"])
            finally:
                b.close()
        if "p50_ms" in rows[arch].get("eager", {}) and "p50_ms" in rows[arch].get("cuda_graphs", {}):
            rows[arch]["graphs_speedup"] = round(rows[arch]["eager"]["p50_ms"] / rows[arch]["cuda_graphs"]["p50_ms"], 3)
    if untimed:
        raise SkipSection("not run as labelled: " + ", ".join(untimed))


class _StandInManifest:
    """The one manifest field TorchBackend reads for an in-memory model."""

    def __init__(self, precision: str):
        self.precision = precision
