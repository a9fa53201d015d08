"""INT8 benchmark: fp32 vs INT8 (Q/DQ, `nfdseg export --int8`) on onnxruntime CPU, per model: latency p50/p99 at
batch 1 (fp32 and int8 calls interleaved in one loop, so load from other processes hits both alike), ΔmIoU from the
export's parity gate, calibration time, the remedies the gate needed, and the load average around the timing.
Writes benchmarks/results/int8_<machine>.json.

Each model is trained here first, briefly, on the built-in synthetic scenes with plain supervised training (the
`teacher` stage: no distillation, random init, no downloaded weights), so the ΔmIoU is that of a weakly trained
model of the named architecture; the latency does not depend on the weights' quality.

    python benchmarks/int8_bench.py                 # quick student, DeepLabV3-ResNet-18 and MobileNetV3 at 256x512
    python benchmarks/int8_bench.py --models quick --iters 20
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, git_rev, machine  # noqa: E402

# name -> (architecture, input/scene size, training iterations, batch, calibration images, train scenes, val scenes)
MODELS = {
    "quick": ("deeplabv3_resnet10_w8", (96, 96), 300, 8, 64, 400, 48),
    "resnet18": ("deeplabv3_resnet18", (256, 512), 60, 4, 32, 96, 16),
    "mobilenetv3": ("deeplabv3_mobilenetv3_large", (256, 512), 60, 4, 32, 96, 16),
}


def cpu_flags() -> dict:
    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    return {k: k in flags for k in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")}


def train(name: str, out: Path) -> Path:
    from nfdseg.distill.config import load_run_config
    from nfdseg.distill.trainer import train_stage

    arch, size, iters, batch, _, n_train, n_val = MODELS[name]
    crop = [min(size[0], 128), min(size[1], 256)]
    cfg = load_run_config("quick", {
        "data": {"synthetic_train": n_train, "synthetic_val": n_val, "synthetic_size": list(size),
                 "crop_size": crop, "input_size": list(size)},
        "teacher": {"model": {"arch": arch, "pretrained": ""},
                    "train": {"iters": iters, "batch_size": batch, "eval_every": iters, "ckpt_every": iters,
                              "log_every": max(1, iters // 4)}}})
    train_stage(cfg, "teacher", out, progress=False)
    return out


def interleaved_latency(paths: dict[str, Path], x: np.ndarray, iters: int, warmup: int = 3) -> dict:
    """Batch-1 infer latency (ms) per model, the models called in turn within each iteration."""
    from nfdseg.manifest import read_manifest
    from nfdseg.serve.backends.onnxruntime_backend import OnnxRuntimeBackend

    backends = {k: OnnxRuntimeBackend(p, read_manifest(p.with_suffix(".json")), device="cpu") for k, p in paths.items()}
    for b in backends.values():
        for _ in range(warmup):
            b.infer(x)
    times: dict[str, list[float]] = {k: [] for k in backends}
    load_before = os.getloadavg()
    for _ in range(iters):
        for k, b in backends.items():
            t = time.perf_counter()
            b.infer(x)
            times[k].append((time.perf_counter() - t) * 1e3)
    load_after = os.getloadavg()
    res = {k: {"p50_ms": round(float(np.percentile(v, 50)), 2), "p99_ms": round(float(np.percentile(v, 99)), 2),
               "mean_ms": round(float(np.mean(v)), 2), "iters": len(v)} for k, v in times.items()}
    res["loadavg_before"], res["loadavg_after"] = [round(v, 2) for v in load_before], [round(v, 2) for v in load_after]
    return res


def bench_model(name: str, work: Path, iters: int) -> dict:
    from nfdseg.export.parity import ParityBudget
    from nfdseg.export.run import ExportConfig, run_export

    arch, size, train_iters, batch, calib_images, n_train, n_val = MODELS[name]
    t0 = time.perf_counter()
    ckpt = train(name, work / name / "model")
    train_s = time.perf_counter() - t0
    export = work / name / "export"
    summary = run_export(ckpt, export, ExportConfig(engine="off", fp16=False, int8=True, int8_calib_images=calib_images,
                                                    parity=ParityBudget(max_images=0)))
    parity = json.loads((export / "parity.json").read_text())
    row = {"model": name, "architecture": arch, "input_size": list(size),
           "training": {"stage": "teacher (supervised, no distillation)", "iters": train_iters, "batch": batch,
                        "pretrained": "none (random init)", "train_scenes": n_train, "seconds": round(train_s, 1)},
           "validation_images": parity["images"], "parity_passed": parity["passed"], "int8": summary.get("int8"),
           "parity_text": summary["parity"]["text"].splitlines()}
    by_prec = {r["precision"]: r for r in parity["results"]}
    row["miou"] = {p: by_prec[p]["miou"] for p in by_prec}
    if "int8" in by_prec:
        row["delta_miou_int8"] = by_prec["int8"]["delta_miou"]
        row["pixel_agreement_int8_pct"] = by_prec["int8"]["pixel_agreement_pct"]
    if not (export / "model.int8.onnx").is_file():
        row["latency"] = None
        row["note"] = "INT8 refused by its parity budget: no latency to compare"
        return row
    rng = np.random.default_rng(0)
    x = ((rng.random((1, 3, *size), dtype=np.float32) - 0.45) / 0.225).astype(np.float32)
    lat = interleaved_latency({"fp32": export / "model.onnx", "int8": export / "model.int8.onnx"}, x, iters)
    row["latency"] = lat
    row["speedup_p50"] = round(lat["fp32"]["p50_ms"] / lat["int8"]["p50_ms"], 3)
    row["file_mb"] = summary["files"]
    row["meets_target"] = bool(row["speedup_p50"] >= 1.3 and abs(row.get("delta_miou_int8", 99)) <= 1.0)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="quick,resnet18,mobilenetv3", help=f"comma list of {', '.join(MODELS)}")
    ap.add_argument("--iters", type=int, default=30, help="timed interleaved iterations per model (default 30)")
    ap.add_argument("--tag")
    args = ap.parse_args()
    import onnxruntime

    mach = machine()
    rows = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="nfdseg-int8-bench-") as tmp:
        for name in args.models.split(","):
            print(f"== {name}", flush=True)
            rows.append(bench_model(name.strip(), Path(tmp), args.iters))
            r = rows[-1]
            print(json.dumps({k: r.get(k) for k in ("architecture", "miou", "delta_miou_int8", "speedup_p50")}), flush=True)
    result = {"benchmark": "int8", "machine": mach | {"note": f"{mach['cores']}-core {mach['cpu']}, no GPU, shared "
                                                              "with other agents"},
              "cpu_flags": cpu_flags(), "onnxruntime": onnxruntime.__version__, "git": git_rev(),
              "method": "onnxruntime CPU, batch 1, fp32 and int8 called in turn in one loop; uint8 activations "
                        "(asymmetric), int8 per-channel weights, minmax calibration on the training split",
              "total_s": round(time.perf_counter() - t0, 1), "models": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"int8_{args.tag or mach['tag']}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
