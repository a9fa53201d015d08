"""onnxruntime vs OpenVINO (CPU plugin) fp32, batch-1 infer latency on the same ONNX files, calls interleaved.

Models (weights barely trained: 1 iteration, latency does not depend on them): the quick student
(deeplabv3_resnet10_w8, 96x96) and DeepLabV3-ResNet-18 at 360x480, each trained one step and exported through
`run_export` (torch2onnx, fp32 only). OpenVINO runs twice: with the backend's default f32 inference precision and
with the device's default (bf16 on CPUs with AVX512_BF16/AMX). Also records the label agreement with onnxruntime
and the load average (the box is shared with other engineers' jobs). Writes benchmarks/results/openvino_<tag>.json.
Usage: python benchmarks/openvino_bench.py [--iters 20]
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

MODELS = {"quick_student": ("deeplabv3_resnet10_w8", (96, 96)), "deeplabv3_resnet18": ("deeplabv3_resnet18", (360, 480))}


def export(name: str, work: Path) -> Path:
    from nfdseg.distill.config import load_run_config
    from nfdseg.distill.trainer import train_stage
    from nfdseg.export.parity import ParityBudget
    from nfdseg.export.run import ExportConfig, run_export

    arch, size = MODELS[name]
    cfg = load_run_config("quick", {
        "data": {"synthetic_train": 4, "synthetic_val": 2, "synthetic_size": list(size), "crop_size": [64, 64],
                 "input_size": list(size)},
        "teacher": {"model": {"arch": arch, "pretrained": ""},
                    "train": {"iters": 1, "batch_size": 2, "eval_every": 1, "ckpt_every": 1, "log_every": 1}}})
    train_stage(cfg, "teacher", work / name / "model", progress=False)
    run_export(work / name / "model", work / name / "export",
               ExportConfig(engine="off", fp16=False, parity=ParityBudget(max_images=0)))
    return work / name / "export" / "model.onnx"


def bench(onnx: Path, size, iters: int) -> dict:
    from nfdseg.manifest import read_manifest
    from nfdseg.serve.backends.onnxruntime_backend import OnnxRuntimeBackend
    from nfdseg.serve.backends.openvino_backend import OpenVinoBackend

    m = read_manifest(onnx.with_suffix(".json"))
    bs = {"onnxruntime": OnnxRuntimeBackend(onnx, m, device="cpu"),
          "openvino_f32": OpenVinoBackend(onnx, m, device="cpu"),
          "openvino_device_default": OpenVinoBackend(onnx, m, device="cpu", inference_precision="")}
    x = ((np.random.default_rng(0).random((1, 3, *size), dtype=np.float32) - 0.45) / 0.225).astype(np.float32)
    outs = {k: b.infer(x) for k, b in bs.items()}
    for b in bs.values():
        for _ in range(2):
            b.infer(x)
    times = {k: [] for k in bs}
    load_before = os.getloadavg()
    for _ in range(iters):
        for k, b in bs.items():
            t = time.perf_counter()
            b.infer(x)
            times[k].append((time.perf_counter() - t) * 1e3)
    load_after = os.getloadavg()
    ref = outs["onnxruntime"].argmax(1)
    res = {k: {"p50_ms": round(float(np.percentile(v, 50)), 2), "mean_ms": round(float(np.mean(v)), 2),
               "iters": len(v), "argmax_agreement_pct": round(float((outs[k].argmax(1) == ref).mean() * 100), 3)}
           for k, v in times.items()}
    for k in ("openvino_f32", "openvino_device_default"):
        res[k]["speedup_vs_onnxruntime_p50"] = round(res["onnxruntime"]["p50_ms"] / res[k]["p50_ms"], 3)
    res["loadavg_before"], res["loadavg_after"] = [round(v, 2) for v in load_before], [round(v, 2) for v in load_after]
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=20)
    args = ap.parse_args()
    import onnxruntime
    import openvino

    mach = machine()
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (arch, size) in MODELS.items():
            rows[name] = {"architecture": arch, "input_size": list(size), **bench(export(name, Path(tmp)), size,
                                                                                   args.iters)}
            print(name, json.dumps(rows[name]), flush=True)
    out = {"what": "batch-1 fp32 infer latency, onnxruntime CPU provider vs OpenVINO CPU plugin (LATENCY hint), the "
                   "same ONNX file, calls interleaved; weights untrained (1 step)",
           "machine": mach, "git": git_rev(), "onnxruntime": onnxruntime.__version__, "openvino": openvino.__version__,
           "note": "shared 2-core machine: other engineers' jobs ran at the same time (see loadavg)", "models": rows}
    path = RESULTS / f"openvino_{mach['tag']}.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print("wrote", path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
