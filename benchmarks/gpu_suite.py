"""The GPU half of nfdseg, measured through the product's own API on one CUDA GPU (see docs/deploying.md).

    python benchmarks/gpu_suite.py            # from a plain checkout: torch + numpy/Pillow/PyYAML/tqdm, nothing else
    python benchmarks/gpu_suite.py --dry-run --out /tmp/gpu_dry.json   # the same plumbing, tiny, on the CPU

1. train: the student stage (`train_stage`, NFD from a ResNet-101 teacher to a ResNet-18 student, 512x512
   crops) in fp32 with TF32 off, AMP bf16, and AMP bf16 + channels_last; images/s as train_stage records it
   (the whole run: data, steps, one evaluation). A row counts only when the trainer's own record (amp in its
   AMP_LABELS spelling, device, channels_last) matches the label.
2. torch: the trained student served by `Segmenter(backend="torch")` at 1024x2048 in fp32 (TF32 off: the
   reference), fp32 (TF32 on, torch's default for convolutions), fp16, bf16 and fp16 + CUDA graphs: label
   agreement with the reference and mIoU on the validation images, end-to-end `predict` latency p50/p99
   (preprocessing, copies and label map included) at batch 1 and 4; then its mIoU on the CPU (fp32) beside them.
3. latency: the torch backend's own latency, CUDA graphs off and on, for the quick student's architecture and
   DeepLabV3-ResNet-18 at 1024x2048, batch 1, fp16 (the graph replay's labels checked against eager).
4. onnxruntime CUDA and TensorRT: exported with `run_export`, served by `Segmenter`, when onnxruntime-gpu /
   TensorRT and the [export] tools are installed; otherwise skipped with the reason.

Writes benchmarks/results/gpu_<gpu>.json (--dry-run writes only --out). Without a GPU it refuses (exit 2).
Every section has its own time budget (SECTION_BUDGETS_S; `--budget SECTION=SECONDS`), all of them capped by
--budget-s (default 460, under the 8 minutes a lent GPU gets); the export (ONNX, FP16 scan, TensorRT build,
parity) runs in a child process with its budget as time-out. The JSON is written atomically after every section
(`sections` says done / skipped / over_budget / failed with the reason), so a kill keeps what finished.
`complete` turns true, and the exit status is 0, only when every section of REQUIRED (the ones that need torch
alone) measured what it is labelled with: a run that measured nothing says why in `incomplete` and exits 1.
Before timing anything a section checks that the Segmenter's own report (`describe()`) shows the backend,
provider, device and precision of its label, and skips with what it saw otherwise; the TensorRT section first
checks TensorRT, cuda-python's bindings and the GPU (suite_sections.py).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, git_rev, machine  # noqa: E402
from suite_sections import (Budget, OverBudget, Recorder, SkipSection, backend_mismatch,  # noqa: E402,F401
                            missing_for_tensorrt, parse_budgets, runtime_plan)
from suite_torch import (TRAIN_MODES, _TF32_DEFAULTS, latency_section, measure, run_config,  # noqa: E402,F401
                         set_tf32, torch_section, train_section)

log = logging.getLogger("gpu_suite")

GPU = dict(train_n=128, val_n=16, train_hw=(512, 1024), val_hw=(1024, 2048), crop=(512, 512), input=(1024, 2048),
           scale=(1.5, 2.5), teacher="deeplabv3_resnet101", student="deeplabv3_resnet18", batch=8,
           teacher_iters=100, speed_iters=60, warm_iters=3, serve_iters=300, lat_iters=30, warmup=5, max_val=4)
DRY = dict(train_n=8, val_n=4, train_hw=(64, 128), val_hw=(64, 128), crop=(64, 64), input=(64, 128),
           scale=(0.75, 1.25), teacher="deeplabv3_resnet_tiny", student="deeplabv3_resnet10_w8", batch=2,
           teacher_iters=2, speed_iters=2, warm_iters=0, serve_iters=2, lat_iters=2, warmup=1, max_val=2)
# Seconds per section (GPU sizes; the dry run's tiny sections take a fraction). Their sum is the default --budget-s.
SECTION_BUDGETS_S = {"data": 30, "train": 170, "torch": 90, "latency": 40, "export": 80, "onnxruntime_cuda": 25,
                     "tensorrt": 25}
# The sections that need only torch: a run where any of them did not measure is not complete (exit 1).
REQUIRED = ("data", "train", "torch", "latency")


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
    # initializer: a spawned or forkserver worker (Python 3.14's default) does not inherit the checkout mapping
    with ProcessPoolExecutor(max(1, min(16, (os.cpu_count() or 2) - 1)), initializer=use_checkout) as pool:
        list(pool.map(_scene, jobs))
    (root / "done").write_text("")
    return root


def export_job(student: str, export: str, engine: str, summary_path: str) -> int:
    """The child process of the export section (`--export-job`): run_export, its summary to `summary_path`."""
    use_checkout()
    from nfdseg.export.onnx2engine import EngineProfile
    from nfdseg.export.parity import ParityBudget
    from nfdseg.export.run import ExportConfig, run_export

    cfg = ExportConfig(engine=engine, profile=EngineProfile(1, 1, 4), parity=ParityBudget(max_images=2))
    summary = run_export(Path(student), Path(export), cfg)
    Path(summary_path).write_text(json.dumps(summary, default=str))
    return 0


def export_section(student: Path, work: Path, out: dict, budget: Budget, plan: dict) -> dict:
    """run_export in a child process whose time-out is this section's budget (trace, onnxslim, FP16 scan,
    TensorRT build, parity cannot be interrupted from inside)."""
    if plan["skip_export"]:
        raise SkipSection(plan["skip_export"])
    export, summary_path = work / "export", work / "export_summary.json"
    summary_path.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--export-job", str(student), str(export),
           "on" if plan["tensorrt_ok"] else "off", str(summary_path)]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=max(1.0, budget.left()))
    except subprocess.TimeoutExpired:
        raise OverBudget(f"export spent its {budget.seconds:.0f} s budget (child process stopped)") from None
    if r.returncode != 0 or not summary_path.is_file():
        raise RuntimeError(f"the export failed (exit {r.returncode}): {r.stderr.strip()[-1500:]}")
    summary = json.loads(summary_path.read_text())
    out["export"] = {"parity_passed": summary["parity"]["passed"], "engine": summary.get("engine"),
                     "engine_requested": plan["tensorrt_ok"]}
    return summary


def served_section(name: str, backend: str, expect: dict, why_not: str, work: Path, p: dict, out: dict,
                   budget: Budget, state: dict) -> None:
    """onnxruntime CUDA or TensorRT on the export, measured only when the Segmenter reports `expect`."""
    from nfdseg.serve import Segmenter
    from nfdseg.serve.evaluate import load_eval_source

    if why_not:
        raise SkipSection(why_not)
    if state.get("images") is None:
        raise SkipSection("no validation images: the torch section did not load them")
    seg = Segmenter(work / "export", backend=backend, device="cuda")
    try:
        out[name], _ = measure(seg, state["images"], load_eval_source(seg, "default", "folder", "val"), p,
                               state.get("ref"), budget, expect)
    finally:
        seg.close()


def _importable(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a dotted name whose parent package is absent
        return False


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU: checks the plumbing, no figures")
    ap.add_argument("--out", help="JSON path (default benchmarks/results/gpu_<gpu>.json; required with --dry-run)")
    ap.add_argument("--work", help="scratch directory (default benchmarks/work/gpu_suite[_dry])")
    ap.add_argument("--budget-s", type=float, default=float(sum(SECTION_BUDGETS_S.values())),
                    help="wall-clock budget of the whole suite in seconds (default: the sections' sum, 460)")
    ap.add_argument("--budget", action="append", default=[], metavar="SECTION=SECONDS",
                    help=f"one section's budget (defaults: {', '.join(f'{k}={v:g}' for k, v in SECTION_BUDGETS_S.items())})")
    ap.add_argument("--export-job", nargs=4, help=argparse.SUPPRESS)  # the export section's child process
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.export_job:
        return export_job(*args.export_job)
    budgets = parse_budgets(args.budget, SECTION_BUDGETS_S)
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
    from nfdseg.data.synthetic import SYNTHETIC_CLASSES

    p, device = (DRY, "cpu") if args.dry_run else (GPU, "cuda")
    work = Path(args.work or ROOT / "benchmarks" / "work" / ("gpu_suite_dry" if args.dry_run else "gpu_suite"))
    work.mkdir(parents=True, exist_ok=True)
    mach = machine()
    out: dict = {"benchmark": "gpu_suite", "dry_run": args.dry_run, "machine": mach, "git": git_rev(),
                 "load_avg_1m": round(os.getloadavg()[0], 2),
                 "versions": {"torch": torch.__version__, "cuda": torch.version.cuda,
                              "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None},
                 "params": {k: list(v) if isinstance(v, tuple) else v for k, v in p.items()},
                 "budgets_s": {**budgets, "total": args.budget_s}}
    path = Path(args.out) if args.out else RESULTS / f"gpu_{mach['tag']}.json"
    rec = Recorder(path, out, args.budget_s)
    state: dict = {}
    plan = runtime_plan(args.dry_run, _importable)  # decided up front, so a section that cannot run never starts
    data = rec.run("data", budgets["data"], lambda b: make_dataset(work / "data", p))

    def need(what, value, section):
        if value is None:
            raise SkipSection(f"{section} needs {what}, and the section that makes it did not finish")
        return value

    student = rec.run("train", budgets["train"],
                      lambda b: train_section(p, need("the dataset", data, "train"), work, device, out, b))
    rec.run("torch", budgets["torch"], lambda b: torch_section(need("the trained student", student, "torch"), p,
                                                              device, out, b, args.dry_run, state))
    rec.run("latency", budgets["latency"], lambda b: latency_section(p, SYNTHETIC_CLASSES.num_classes, device, out, b,
                                                                    args.dry_run))
    summary = rec.run("export", budgets["export"],
                      lambda b: export_section(need("the trained student", student, "export"), work, out, b, plan))
    done = summary is not None
    ort_why = plan["ort_why_not"] or ("" if done else "the export section did not finish")
    rec.run("onnxruntime_cuda", budgets["onnxruntime_cuda"], lambda b: served_section(
        "onnxruntime_cuda", "onnxruntime", {"backend": "onnxruntime", "provider": "CUDAExecutionProvider",
                                            "device": "cuda", "precision": "fp16", "fallback": ""},
        ort_why, work, p, out, b, state))
    engine_built = done and bool((summary.get("engine") or {}).get("path"))
    trt_why = plan["trt_why_not"] or ("" if engine_built else "the export built no engine" if done
                                      else "the export section did not finish")
    rec.run("tensorrt", budgets["tensorrt"], lambda b: served_section(
        "tensorrt", "tensorrt", {"backend": "tensorrt", "device": "cuda", "precision": "fp16", "fallback": ""},
        trt_why, work, p, out, b, state))
    complete = rec.finish(REQUIRED)
    log.info("wrote %s in %.0f s%s", path, out["wall_s"], "" if complete else f": INCOMPLETE, {out['incomplete']}")
    return 0 if complete and not rec.failed else 1


if __name__ == "__main__":
    sys.exit(main())
