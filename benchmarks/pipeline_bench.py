"""Pipeline benchmark: `nfdseg pipeline` from nothing on the quick default, timed, with peak RSS of the whole
process tree. Writes benchmarks/results/pipeline_<machine>.json. Targets (issue 7): <= 10 min, <= 4 GB.

    python benchmarks/pipeline_bench.py --out /tmp/pipeline-bench
    python benchmarks/pipeline_bench.py --config camvid_cpu --set data.root=$CAMVID --tag camvid_cpu2 \
        --target-s 900 --out benchmarks/work/camvid_pipeline
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="benchmarks/work/pipeline")
    ap.add_argument("--config", default="quick")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--tag")
    ap.add_argument("--target-s", type=float, default=600.0, help="wall-time target in seconds (default 600)")
    args = ap.parse_args()
    out = Path(args.out)
    if out.exists():  # from nothing; the finished run stays there (e.g. to reuse its teacher)
        shutil.rmtree(out)
    t0 = time.perf_counter()
    sets = [x for kv in args.overrides for x in ("--set", kv)]
    proc = subprocess.run([sys.executable, "-m", "nfdseg.app.cli", "pipeline", "--config", args.config, "--out", str(out),
                           "--quiet", *sets], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    if proc.returncode != 0:
        print(proc.stdout, proc.stderr)
        return proc.returncode
    report = json.loads((out / "report.json").read_text())
    mach = machine()
    result = {"benchmark": "pipeline", "machine": mach, "git": git_rev(), "config": args.config,
              "overrides": args.overrides, "load_average_at_end": list(os.getloadavg()),
              "wall_time_s": round(wall, 1), "peak_rss_mb": round(peak_mb, 1),
              "targets": {"wall_time_s": args.target_s, "peak_rss_mb": 4096},
              "stages": report["stages"], "miou": report["miou"],
              "nfd_gain_over_baseline": report["nfd_gain_over_baseline"], "cost": report["cost"],
              "per_class_iou": report["per_class_iou"], "zero_iou_classes": report.get("zero_iou_classes"),
              "student_choice": report.get("student_choice"),
              "stdout": proc.stdout.splitlines()}
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"pipeline_{args.tag or mach['tag']}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(proc.stdout)
    print(f"wall {wall:.0f}s, peak RSS {peak_mb:.0f} MB -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
