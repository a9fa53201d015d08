"""Export benchmark: export time, file sizes (fp32 ONNX, fp16 ONNX, engine where built) and onnxruntime CPU
latency of fp32 vs fp16 on a student checkpoint. Writes benchmarks/results/export_<machine>.json.

    python benchmarks/export_bench.py runs/quick/student
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, git_rev, machine  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--tag")
    args = ap.parse_args()

    from nfdseg.export.run import ExportConfig, run_export
    from nfdseg.serve import Segmenter
    from nfdseg.serve.bench import bench_batches

    out = Path(tempfile.mkdtemp(prefix="nfdseg-export-bench-"))
    t0 = time.perf_counter()
    summary = run_export(args.checkpoint, out, ExportConfig())
    total = time.perf_counter() - t0
    onnx_m = json.loads((out / "model.json").read_text())
    latency = {}
    for name, precision in (("model.onnx", "fp32"), ("model.fp16.onnx", "fp16")):
        seg = Segmenter(out / name, backend="onnxruntime", device="cpu")
        latency[precision] = bench_batches(seg, (1, 8), warmup=5, iters=args.iters)
    mach = machine()
    result = {
        "benchmark": "export", "machine": mach, "git": git_rev(), "checkpoint": str(args.checkpoint),
        "architecture": onnx_m["architecture"], "input_size": onnx_m["preprocess"]["input_size"],
        "export_time_s": {"total_with_parity": round(total, 2), "onnx": onnx_m["metrics"]["export_time_s"]},
        "file_mb": summary["files"], "engine": summary.get("engine"),
        "parity_passed": summary["parity"]["passed"], "parity": json.loads((out / "parity.json").read_text()),
        "onnxruntime_cpu_latency": latency,
        "fp16_over_fp32_latency_batch1": round(latency["fp16"][0]["infer"]["p50_ms"] / latency["fp32"][0]["infer"]["p50_ms"], 3),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"export_{args.tag or mach['tag']}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(summary["parity"]["text"])
    print(json.dumps({k: result[k] for k in ("export_time_s", "file_mb", "fp16_over_fp32_latency_batch1")}, indent=2))
    print(f"wrote {path}")
    shutil.rmtree(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
