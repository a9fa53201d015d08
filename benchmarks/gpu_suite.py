"""The GPU half of nfdseg, measured through the product's own API on one CUDA GPU (see docs/deploying.md).

    python benchmarks/gpu_suite.py            # from a plain checkout: torch + numpy/Pillow/PyYAML/tqdm, nothing else
    python benchmarks/gpu_suite.py --dry-run --out /tmp/gpu_dry.json   # the same plumbing, tiny, on the CPU

1. train: the student stage (`train_stage`, NFD from a ResNet-101 teacher to a ResNet-18 student, 512x512
   crops) with AMP bf16 + channels_last against fp32 with TF32 off; images/s as train_stage records it
   (the whole run: data, steps, one evaluation).
2. torch: a trained student served by `Segmenter(backend="torch")` at 1024x2048 in fp32 (TF32 off: the
   reference), fp32 (TF32 on, torch's default for convolutions), fp16, bf16 and fp16 + CUDA graphs: label
   agreement with the reference and mIoU on the validation images, end-to-end `predict` latency p50/p99
   (preprocessing, copies and label map included) at batch 1 and 4.
3. onnxruntime CUDA and TensorRT: exported with `run_export`, served by `Segmenter`, when onnxruntime-gpu /
   TensorRT and the [export] tools are installed; otherwise skipped with the reason.

Writes benchmarks/results/gpu_<gpu>.json (--dry-run writes only --out). Without a GPU it refuses (exit 2).
Sections that would not fit the time budget (--budget-s, default 450) are skipped and say so.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, git_rev, machine  # noqa: E402

log = logging.getLogger("gpu_suite")

GPU = dict(train_n=128, val_n=16, train_hw=(512, 1024), val_hw=(1024, 2048), crop=(512, 512), input=(1024, 2048),
           scale=(1.5, 2.5), teacher="deeplabv3_resnet101", student="deeplabv3_resnet18", batch=8,
           teacher_iters=100, speed_iters=60, warm_iters=3, serve_iters=300, lat_iters=30, warmup=5, max_val=4)
DRY = dict(train_n=8, val_n=4, train_hw=(64, 128), val_hw=(64, 128), crop=(64, 64), input=(64, 128),
           scale=(0.75, 1.25), teacher="deeplabv3_resnet_tiny", student="deeplabv3_resnet10_w8", batch=2,
           teacher_iters=2, speed_iters=2, warm_iters=0, serve_iters=2, lat_iters=2, warmup=1, max_val=2)


def use_checkout() -> None:
    """Import nfdseg from this checkout, installed or not: map the packages as nfdseg/layout.py (the one table of
    folders, which setup.py gives setuptools) says."""
    import importlib.abc
    import importlib.util

    spec = importlib.util.spec_from_file_location("nfdseg_layout", ROOT / "nfdseg" / "layout.py")
    layout = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(layout)
    mapping = layout.PACKAGE_DIRS

    class CheckoutFinder(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name in mapping:
                folder = ROOT / mapping[name]
                return importlib.util.spec_from_file_location(name, folder / "__init__.py",
                                                              submodule_search_locations=[str(folder)])
            return None

    sys.meta_path.insert(0, CheckoutFinder())


def _scene(args):
    i, hw, root, split = args
    from PIL import Image

    from nfdseg.data.synthetic import generate_scene

    img, mask = generate_scene(10_000 * (split == "val") + i, hw)
    Image.fromarray(img).save(root / "images" / split / f"{i:04d}.png", compress_level=1)
    Image.fromarray(mask).save(root / "masks" / split / f"{i:04d}.png", compress_level=1)


def make_dataset(root: Path, p: dict) -> Path:
    """Synthetic scenes written once as a folder dataset, so training reads PNGs instead of drawing scenes."""
    import yaml

    from nfdseg.data.synthetic import SYNTHETIC_CLASSES

    if (root / "done").is_file():
        return root
    for sub in ("images/train", "masks/train", "images/val", "masks/val"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "classes.yaml").write_text(yaml.safe_dump({"classes": list(SYNTHETIC_CLASSES.names),
                                                      "palette": [list(c) for c in SYNTHETIC_CLASSES.palette]}))
    jobs = [(i, p["train_hw"], root, "train") for i in range(p["train_n"])]
    jobs += [(i, p["val_hw"], root, "val") for i in range(p["val_n"])]
    with ProcessPoolExecutor(max(1, min(16, (os.cpu_count() or 2) - 1))) as pool:
        list(pool.map(_scene, jobs))
    (root / "done").write_text("")
    return root


def run_config(p: dict, data: Path, device: str, student: dict, teacher_iters: int | None = None):
    from nfdseg.distill.config import load_run_config

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


def train_section(p: dict, data: Path, work: Path, device: str, out: dict, t_suite: float, budget_s: float) -> Path:
    """Teacher once, then the student stage in fp32 (TF32 off) and AMP bf16 + channels_last, same iterations;
    then a longer bf16 student for the serving section. Returns that student's directory."""
    from nfdseg.distill.trainer import train_stage

    t0 = time.perf_counter()
    cfg = run_config(p, data, device, {"iters": p["speed_iters"]})
    train_stage(cfg, "teacher", work / "teacher", progress=False)
    res: dict = {"teacher_s": round(time.perf_counter() - t0, 1), "crop": list(p["crop"]), "batch": p["batch"],
                 "iters": p["speed_iters"], "teacher": p["teacher"], "student": p["student"],
                 "images_per_s_is": "images / wall time of the whole train_stage loop (data, steps, one evaluation)"}
    modes = {"fp32_tf32_off": {"amp": "off", "channels_last": False},
             "amp_bf16_channels_last": {"amp": "bf16", "channels_last": True}}
    for warm in (True, False):  # a short unmeasured run of each mode first: CUDA/cuDNN start-up is nobody's speed
        for name, train in modes.items():
            if warm and not p["warm_iters"]:
                continue
            set_tf32(name != "fp32_tf32_off")
            iters = p["warm_iters"] if warm else p["speed_iters"]
            cfg = run_config(p, data, device, {"iters": iters, "eval_every": iters, "ckpt_every": iters, **train})
            m = train_stage(cfg, "student", work / name, teacher_dir=work / "teacher", resume=False, progress=False)
            if not warm:
                res[name] = {"images_per_s": m.metrics["images_per_s"], "train_time_s": m.metrics["train_time_s"],
                             "amp_used": m.metrics["amp"], "device": m.metrics["device"], "requested": train}
                log.info("train %s: %.1f images/s", name, m.metrics["images_per_s"])
    set_tf32(True)
    res["speedup"] = round(res["amp_bf16_channels_last"]["images_per_s"] / res["fp32_tf32_off"]["images_per_s"], 3)
    # the served student trains as long as the budget allows (up to serve_iters), keeping ~150 s for serving
    left = budget_s - (time.perf_counter() - t_suite)
    fits = int((left - 150) * res["amp_bf16_channels_last"]["images_per_s"] / p["batch"])
    n = max(min(p["serve_iters"], fits), min(p["serve_iters"], 50))
    cfg = run_config(p, data, device, {"iters": n, "eval_every": n, "ckpt_every": n, "amp": "bf16",
                                       "channels_last": True})
    m = train_stage(cfg, "student", work / "served", teacher_dir=work / "teacher", resume=False, progress=False)
    res["served_student"] = {"iters": n, "val_miou": m.metrics["miou"], "dir": str(work / "served")}
    out["train"] = res
    return work / "served"


def measure(seg, images: list, source, p: dict, ref_labels: list | None) -> tuple[dict, list]:
    """Label maps + mIoU on the validation images (nfdseg.serve.evaluate), agreement with `ref_labels`, and
    end-to-end predict latency at batch 1 and 4."""
    import numpy as np

    from nfdseg.serve.bench import percentiles
    from nfdseg.serve.evaluate import evaluate

    labels: list = []
    ev = evaluate(seg, source, batch=1, limit=len(images), progress=False,
                  on_batch=lambda start, out, preds: labels.extend(pr.labels for pr in preds))
    res = {"miou": ev["miou"], "backend": seg.describe()}
    if ref_labels is not None:
        agree = [float((a == b).mean() * 100) for a, b in zip(labels, ref_labels)]
        res["label_agreement_pct"] = round(float(np.mean(agree)), 4)
        res["label_agreement_min_image_pct"] = round(min(agree), 4)
    for batch in (1, 4):
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


def torch_section(student: Path, p: dict, device: str, out: dict) -> tuple[list, list]:
    from nfdseg.serve import Segmenter
    from nfdseg.serve.evaluate import load_eval_source

    variants = [("fp32_tf32_off", "fp32", False, False), ("fp32", "fp32", True, False), ("fp16", "fp16", True, False),
                ("bf16", "bf16", True, False), ("fp16_cuda_graphs", "fp16", True, True)]
    rows, ref, images = {}, None, None
    for name, precision, tf32, graphs in variants:
        set_tf32(tf32)
        seg = Segmenter(student, backend="torch", device=device, precision=precision, cuda_graphs=graphs)
        source = load_eval_source(seg, "default", "folder", "val")
        images = images or [source.load(i)[0] for i in range(len(source))]
        rows[name], labels = measure(seg, images, source, p, ref)
        ref = ref or labels
        seg.close()
        log.info("torch %s: p50 %.2f ms (batch 1)", name, rows[name]["batch1"]["p50_ms"])
    set_tf32(True)
    out["torch"] = {"input_hw": list(p["input"]), "reference": "fp32_tf32_off", "tf32_defaults": dict(_TF32_DEFAULTS),
                    "variants": rows}
    return ref, images


def runtime_sections(student: Path, work: Path, p: dict, ref: list, images: list, out: dict, left_s: float) -> None:
    """onnxruntime CUDA and TensorRT through run_export + Segmenter, each skipped with its reason."""
    missing = [m for m in ("onnx", "onnxslim", "onnxconverter_common", "onnxruntime") if not _importable(m)]
    if missing:
        reason = f"not installed here: {', '.join(missing)} (pip install 'nfdseg[export]' onnxruntime-gpu)"
        out["onnxruntime_cuda"] = out["tensorrt"] = {"skipped": reason}
        return
    import onnxruntime as ort

    has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    has_trt = _importable("tensorrt")
    if not has_cuda and not has_trt:
        out["onnxruntime_cuda"] = {"skipped": f"onnxruntime {ort.__version__} has no CUDA provider (CPU build; "
                                              "pip install onnxruntime-gpu, not both)"}
        out["tensorrt"] = {"skipped": "TensorRT is not installed (NVIDIA's container, JetPack or pip install tensorrt)"}
        return
    if left_s < 150:
        out["onnxruntime_cuda"] = out["tensorrt"] = {"skipped": f"time budget: {left_s:.0f} s left, export needs ~150"}
        return
    from nfdseg.export.onnx2engine import EngineProfile
    from nfdseg.export.parity import ParityBudget
    from nfdseg.export.run import ExportConfig, run_export
    from nfdseg.serve import Segmenter
    from nfdseg.serve.evaluate import load_eval_source

    export = work / "export"
    cfg = ExportConfig(engine="auto" if has_trt else "off", profile=EngineProfile(1, 1, 4),
                       parity=ParityBudget(max_images=2))
    summary = run_export(student, export, cfg)
    out["export"] = {"parity_passed": summary["parity"]["passed"], "engine": summary.get("engine")}
    for name, backend, ok, why in (("onnxruntime_cuda", "onnxruntime", has_cuda, "onnxruntime has no CUDA provider"),
                                   ("tensorrt", "tensorrt", has_trt and bool((summary.get("engine") or {}).get("path")),
                                    "TensorRT is not installed or built no engine")):
        if not ok:
            out[name] = {"skipped": why}
            continue
        seg = Segmenter(export, backend=backend, device="cuda")
        out[name], _ = measure(seg, images, load_eval_source(seg, "default", "folder", "val"), p, ref)
        seg.close()


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU: checks the plumbing, no figures")
    ap.add_argument("--out", help="JSON path (default benchmarks/results/gpu_<gpu>.json; required with --dry-run)")
    ap.add_argument("--work", help="scratch directory (default benchmarks/work/gpu_suite[_dry])")
    ap.add_argument("--budget-s", type=float, default=450.0, help="wall-clock budget in seconds (default 450)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    t_start = time.perf_counter()
    missing = [m for m in ("torch", "numpy", "PIL", "yaml", "tqdm") if not _importable(m)]
    if missing:
        print(f"gpu_suite needs {', '.join(missing)}; install them (pip install torch numpy pillow pyyaml tqdm)",
              file=sys.stderr)
        return 2
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print(f"gpu_suite needs a CUDA GPU and torch {torch.__version__} sees none (torch.cuda.is_available() is "
              "False). Run it on the GPU machine; --dry-run checks the plumbing on the CPU.", file=sys.stderr)
        return 2
    if args.dry_run and not args.out:
        print("--dry-run needs --out: its figures are not measurements and never go to benchmarks/results",
              file=sys.stderr)
        return 2
    use_checkout()
    p, device = (DRY, "cpu") if args.dry_run else (GPU, "cuda")
    work = Path(args.work or ROOT / "benchmarks" / "work" / ("gpu_suite_dry" if args.dry_run else "gpu_suite"))
    work.mkdir(parents=True, exist_ok=True)
    mach = machine()
    out: dict = {"benchmark": "gpu_suite", "dry_run": args.dry_run, "machine": mach, "git": git_rev(),
                 "versions": {"torch": torch.__version__, "cuda": torch.version.cuda,
                              "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None},
                 "params": {k: list(v) if isinstance(v, tuple) else v for k, v in p.items()}}
    failed = False
    try:  # a section that fails is recorded with its error; the ones that do not depend on it still run
        data = make_dataset(work / "data", p)
        student = train_section(p, data, work, device, out, t_start, args.budget_s)
        ref, images = torch_section(student, p, device, out)
        runtime_sections(student, work, p, ref, images, out, args.budget_s - (time.perf_counter() - t_start))
    except Exception as e:  # noqa: BLE001 - the JSON says what failed and where
        import traceback

        failed = True
        out["error"] = {"type": type(e).__name__, "message": str(e)[:2000],
                        "traceback": traceback.format_exc()[-4000:]}
        log.error("gpu_suite failed: %s: %s", type(e).__name__, e)
    out["wall_s"] = round(time.perf_counter() - t_start, 1)
    path = Path(args.out) if args.out else RESULTS / f"gpu_{mach['tag']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    log.info("wrote %s in %.0f s", path, out["wall_s"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
