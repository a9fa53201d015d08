"""Issue 10's end-to-end check: `nfdseg pipeline` at the paper's architectures, as a new user runs it.

DeepLabV3-ResNet-50 teacher -> DeepLabV3-ResNet-18 student (the default NFD settings), synthetic scenes at
512x1024, 256x512 crops, batch 2, 4 iterations per stage; the validation split is limited to --val images
(synthetic_val and data.max_val_images) so evaluation and parity fit a CPU. Records per-stage wall time, the
student's logit range on the validation images (finite?), fp32/FP16 parity and what the FP16 export kept in
fp32, the bench stage's time against its budget, and the machine's load before and after (other jobs share it).
Writes benchmarks/results/pipeline_real_scale_<machine>.json.

    nice -n 10 python benchmarks/real_scale_pipeline.py --out /tmp/real-scale-pipeline
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, git_rev, machine  # noqa: E402


def overrides(iters: int, val: int) -> list[str]:
    sets = {"teacher.model.arch": "deeplabv3_resnet50", "student.model.arch": "deeplabv3_resnet18",
            "data.synthetic_size": "[512,1024]", "data.input_size": "[512,1024]", "data.crop_size": "[256,512]",
            "data.synthetic_train": 64, "data.synthetic_val": val, "data.max_val_images": val}
    for stage in ("teacher", "student"):
        sets |= {f"{stage}.train.batch_size": 2, f"{stage}.train.iters": iters, f"{stage}.train.eval_every": iters,
                 f"{stage}.train.ckpt_every": iters, f"{stage}.train.log_every": 1}
    return [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]


def logit_range(export_dir: Path, ckpt_dir: Path, n: int) -> dict:
    """Largest |logit| of the exported fp32 and FP16 students on n validation images, and whether all are finite."""
    import numpy as np
    import onnxruntime as ort

    from nfdseg.export.parity import validation_images
    from nfdseg.manifest import read_manifest
    from nfdseg.preprocess import prepare_batch

    ckpt = read_manifest(ckpt_dir / "checkpoint.json")
    x = prepare_batch(validation_images(ckpt, n)[0], ckpt.preprocess, False)
    out = {}
    for name in ("model.onnx", "model.fp16.onnx"):
        sess = ort.InferenceSession(str(export_dir / name), providers=["CPUExecutionProvider"])
        y = np.concatenate([sess.run(None, {sess.get_inputs()[0].name: x[k:k + 1]})[0] for k in range(len(x))])
        out[name] = {"max_abs_logit": float(np.abs(y[np.isfinite(y)]).max()), "finite": bool(np.isfinite(y).all()),
                     "images": len(x)}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="benchmarks/work/real_scale_pipeline")
    ap.add_argument("--iters", type=int, default=4)
    ap.add_argument("--val", type=int, default=8, help="validation images (synthetic_val = max_val_images)")
    ap.add_argument("--tag")
    args = ap.parse_args()
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    cmd = [sys.executable, "-m", "nfdseg.app.cli", "pipeline", "--out", str(out), "--quiet", *overrides(args.iters, args.val)]
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    load_after = os.getloadavg()
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(proc.stdout)
    mach = machine()
    result = {"benchmark": "pipeline_real_scale", "machine": mach, "git": git_rev(), "command": cmd[1:],
              "returncode": proc.returncode, "wall_time_s": round(wall, 1), "peak_rss_mb": round(peak_mb, 1),
              "contention": {"loadavg_1_5_15_before": load_before, "loadavg_1_5_15_after": load_after,
                             "nice": os.nice(0), "note": "2 cores shared with other jobs; load above 2 means contention"},
              "stdout": proc.stdout.splitlines(), "stderr_tail": proc.stderr.splitlines()[-30:]}
    if (out / "report.json").is_file():
        report = json.loads((out / "report.json").read_text())
        parity = json.loads((out / "export/parity.json").read_text())
        fp16 = json.loads((out / "export/model.fp16.json").read_text())["onnx"]
        bench = json.loads((out / "bench.json").read_text())
        bench_stage = next(s for s in report["stages"] if s["stage"] == "bench")
        result |= {
            "stages": report["stages"], "miou": report["miou"], "architectures": report["architectures"],
            "parity": {r["artifact"]: {k: r.get(k) for k in ("precision", "passed", "pixel_agreement_pct", "delta_miou",
                                                             "max_abs_error", "finite")} for r in parity["results"]}
            | {"passed": parity["passed"], "images": parity["images"]},
            "fp16_kept_fp32_nodes": fp16.get("kept_fp32_nodes", []), "fp16_overflow": fp16.get("fp16_overflow", {}),
            "logits": logit_range(out / "export", out / "student", args.val),
            "bench": {"stage_seconds": bench_stage["seconds"], "bench_seconds": bench["seconds"],
                      "budget": bench["budget"], "rows_timed": sum("infer" in r for r in bench["rows"]),
                      "rows_skipped": bench["rows_skipped"], "rows": bench["rows"]},
            "student_history": json.loads((out / "student/history.json").read_text()),
        }
        result["checks"] = {
            "logits_finite": all(v["finite"] for v in result["logits"].values()),
            "fp32_parity_passed": result["parity"]["model.onnx"]["passed"],
            "fp16_parity_passed": result["parity"]["model.fp16.onnx"]["passed"],
            "bench_stage_under_60_s": bench_stage["seconds"] <= 60,
        }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"pipeline_real_scale_{args.tag or mach['tag']}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result.get("checks", {}), indent=2))
    print(f"wall {wall:.0f}s, peak RSS {peak_mb:.0f} MB -> {path}")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
