"""Which CamVid teacher buys the most accuracy for the CPU preset's time: candidates at about equal training
time, scored on the `tune` split carved from CamVid *train* (benchmarks/camvid_tune_split.py), never on val.

Candidates (iterations set from the measured per-step time on this machine, benchmarks/train_speed.py):
  os8:  deeplabv3_resnet18_w32 (the preset's teacher, output stride 8), 1600 iterations
  os16: deeplabv3_resnet18_w32_os16 (a third of the FLOPs, 2.2x faster per step), 3500 iterations

    python benchmarks/camvid_tune_split.py $CAMVID
    python benchmarks/camvid_teacher_tune.py --set data.root=$CAMVID --work runs/teacher_tune
Finished runs in --work are kept (nothing is retrained). Writes benchmarks/results/camvid_teacher_tune_<machine>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, git_rev, machine  # noqa: E402

CANDIDATES = {
    "os8": {"model": {"arch": "deeplabv3_resnet18_w32"}, "train": {"iters": 1600, "eval_every": 400}},
    "os16": {"model": {"arch": "deeplabv3_resnet18_w32_os16"}, "train": {"iters": 3500, "eval_every": 500}},
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--work", default="benchmarks/work/teacher_tune", help="WORK/<candidate>/teacher")
    args = ap.parse_args()

    from nfdseg.config import deep_update, parse_overrides
    from nfdseg.distill.config import load_run_config
    from nfdseg.distill.stage import run_stage

    split = {"data": {"train_split": "trainfit", "val_split": "tune"},
             "teacher": {"train": {"channels_last": True}}, "student": {"train": {"channels_last": True}}}
    rows = {}
    for name, teacher in CANDIDATES.items():
        over = deep_update(deep_update(parse_overrides(args.overrides), split), {"teacher": teacher})
        cfg = load_run_config("camvid_cpu", over)
        out = Path(args.work) / name / "teacher"
        m = run_stage(cfg, "teacher", out, None, on_stale="refuse", progress=True).manifest
        history = json.loads((out / "history.json").read_text())
        rows[name] = {"arch": m.architecture, "iters": cfg.teacher.train.iters, "tune_miou": m.metrics["miou"],
                      "tune_miou_by_iter": {e["iter"]: e["miou"] for e in history["eval"]},
                      "train_time_s": m.metrics["train_time_s"], "amp": m.metrics["amp"],
                      "per_class_iou": m.metrics["per_class_iou"]}
        print(name, rows[name]["tune_miou"], flush=True)
    result = {"benchmark": "camvid_teacher_tune", "split": "trainfit -> tune (last 20 % of each train sequence)",
              "machine": machine(), "git": git_rev(), "load_after": os.getloadavg(),
              "note": "train times were taken with other jobs on the 2 cores (each run used 1 thread): compare "
                      "mIoU; the iteration counts were set from benchmarks/train_speed.py's per-step times",
              "candidates": rows, "best": max(rows, key=lambda k: rows[k]["tune_miou"])}
    out = RESULTS / f"camvid_teacher_tune_{result['machine']['tag']}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print("wrote", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
