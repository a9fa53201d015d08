"""Does bf16 training cost accuracy? fp32 vs bf16 autocast, same seeds, val mIoU, mean ± std.

On the quick preset both stages are trained per seed and precision (teacher, then the NFD student from that
teacher). On CamVid the NFD student stage is trained per seed and precision from one fixed fp32 teacher (the
pipeline's own teacher folder, --teacher): that is where bf16 meets the NFD normalisation, and it fits the 2 cores.
The check: |mean(bf16) - mean(fp32)| <= the larger of the two standard deviations, for every model compared.

    python benchmarks/amp_accuracy.py --config quick
    python benchmarks/amp_accuracy.py --config camvid_cpu --set data.root=$CAMVID --teacher runs/camvid/teacher
Writes benchmarks/results/amp_accuracy_<machine>_<config>.json. Finished runs in --work are reused.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, git_rev, machine  # noqa: E402

PRECISIONS = {"fp32": "off", "bf16": "bf16"}


def summary(values: list[float]) -> dict:
    return {"mean": round(statistics.mean(values), 3),
            "std": round(statistics.stdev(values), 3) if len(values) > 1 else 0.0, "runs": values}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="quick")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--teacher", help="a fixed fp32 teacher run: only the student stage is compared")
    ap.add_argument("--work", default="benchmarks/work/amp_accuracy")
    args = ap.parse_args()

    from nfdseg.config import deep_update, parse_overrides
    from nfdseg.distill.config import load_run_config
    from nfdseg.distill.stage import run_stage

    base = parse_overrides(args.overrides)
    seeds = [int(s) for s in args.seeds.split(",")]
    work = Path(args.work) / args.config
    rows: list[dict] = []
    for seed in seeds:
        for name, amp in PRECISIONS.items():
            train = {"train": {"amp": amp, "seed": seed}}
            cfg = load_run_config(args.config, deep_update(base, {"teacher": train, "student": train}))
            run = work / f"{name}_s{seed}"
            teacher_dir = Path(args.teacher) if args.teacher else run / "teacher"
            row = {"seed": seed, "precision": name}
            if not args.teacher:
                t = run_stage(cfg, "teacher", teacher_dir, None, on_stale="restart", progress=False).manifest
                row["teacher_miou"], row["teacher_amp"] = t.metrics["miou"], t.metrics["amp"]
            s = run_stage(cfg, "student", run / "student", teacher_dir, on_stale="restart", progress=False).manifest
            row.update(student_miou=s.metrics["miou"], student_amp=s.metrics["amp"],
                       student_train_time_s=s.metrics["train_time_s"])
            if row["student_amp"] != amp:
                raise SystemExit(f"the student trained {row['student_amp']}, not {amp}: nothing to compare")
            rows.append(row)
            print(json.dumps(row), flush=True)
            result = write_result(args, seeds, rows)  # after every run: a stopped benchmark keeps what it measured
    print(json.dumps(result["check"], indent=1))
    return 0


def write_result(args, seeds: list[int], rows: list[dict]) -> dict:
    """The JSON so far; the check covers the seeds both precisions have finished."""
    models = ["student"] + ([] if args.teacher else ["teacher"])
    done = [s for s in seeds if {r["precision"] for r in rows if r["seed"] == s} == set(PRECISIONS)]
    result = {"benchmark": "amp_accuracy", "config": args.config, "overrides": args.overrides, "seeds": seeds,
              "seeds_complete": done, "complete": done == seeds,
              "teacher": str(args.teacher) if args.teacher else "trained per seed and precision",
              "machine": machine(), "git": git_rev(), "load_after": os.getloadavg(), "rows": rows, "check": {}}
    for model in models:
        per = {name: summary([r[f"{model}_miou"] for r in rows if r["precision"] == name and r["seed"] in done])
               for name in PRECISIONS} if done else {}
        if per:
            diff = per["bf16"]["mean"] - per["fp32"]["mean"]
            tol = max(per["fp32"]["std"], per["bf16"]["std"])
            result["check"][model] = {**per, "bf16_minus_fp32": round(diff, 3), "tolerance_one_std": tol,
                                      "within_one_std": abs(diff) <= tol if len(done) > 1 else None}
    out = RESULTS / f"amp_accuracy_{result['machine']['tag']}_{args.config}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print("wrote", out, flush=True)
    return result


if __name__ == "__main__":
    sys.exit(main())
