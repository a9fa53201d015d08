"""Serve benchmark: onnxruntime CPU (or any backend) on an export: batch latency, the micro-batcher against
one-by-one serving at 8 concurrent callers, and the batcher's own overhead at concurrency 1.
Writes benchmarks/results/serve_<machine>.json. Targets (issue 5): speedup >= 1.3 at 8 callers,
overhead <= 1 ms p50.

    python benchmarks/serve_bench.py runs/quick/export
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, git_rev, machine  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("artifact")
    ap.add_argument("--backend", default="onnxruntime")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--max-wait-ms", type=float, default=5.0)
    ap.add_argument("--tag")
    args = ap.parse_args()

    from nfdseg.serve import Segmenter
    from nfdseg.serve.bench import format_bench, run_bench

    seg = Segmenter(args.artifact, backend=args.backend, device=args.device)
    report = run_bench(seg, (1, 4, 8), (1, 8), iters=50, requests=args.requests, max_batch=args.max_batch,
                       max_wait_ms=args.max_wait_ms)
    c8 = next(r for r in report["concurrency"] if r["concurrency"] == 8)
    mach = machine()
    result = {"benchmark": "serve", "machine": mach, "git": git_rev(), **report,
              "targets": {"speedup_at_8_callers": c8["speedup"], "speedup_target": 1.3,
                          "overhead_p50_ms": report["batcher_overhead"]["overhead_p50_ms"], "overhead_target_ms": 1.0}}
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"serve_{args.tag or mach['tag']}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(format_bench(report))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
