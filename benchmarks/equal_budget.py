"""Does the quick teacher clearly beat the quick student at equal training? The undistilled student trained
for the teacher's iterations, against that teacher. Writes benchmarks/results/distill_equal_budget_<machine>.json.

    python benchmarks/equal_budget.py --teacher runs/quick/teacher     # a finished quick teacher
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
    ap.add_argument("--teacher", required=True, help="a finished teacher run directory (checkpoint.json)")
    ap.add_argument("--config", default="quick")
    ap.add_argument("--work", default="benchmarks/work/equal_budget")
    args = ap.parse_args()

    from nfdseg.distill.config import load_run_config
    from nfdseg.distill.trainer import train_stage
    from nfdseg.manifest import read_manifest

    teacher = read_manifest(Path(args.teacher) / "checkpoint.json", expect_kind="checkpoint")
    iters = teacher.config["teacher"]["train"]["iters"]
    cfg = load_run_config(args.config, {"distill": {"loss": "none"}, "student": {"train": {"iters": iters}}})
    student = train_stage(cfg, "student", Path(args.work) / "student_none", teacher_dir=args.teacher, resume=False)
    result = {
        "benchmark": "distill_equal_budget", "machine": machine(), "git": git_rev(),
        "question": "does the large teacher clearly beat the small student at equal training?", "split": "val",
        "iters": iters, "batch_size": cfg.student.train.batch_size,
        "teacher": {"arch": teacher.architecture, "params": teacher.metrics.get("params"),
                    "miou": teacher.metrics["miou"]},
        "student_no_distillation": {"arch": student.architecture, "params": student.metrics.get("params"),
                                    "miou": student.metrics["miou"], "train_time_s": student.metrics["train_time_s"]},
        "gap_points": round(teacher.metrics["miou"] - student.metrics["miou"], 3),
    }
    out = RESULTS / f"distill_equal_budget_{result['machine']['tag']}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"teacher {result['teacher']['miou']:.2f}% vs student {result['student_no_distillation']['miou']:.2f}% "
          f"at {iters} iterations -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
