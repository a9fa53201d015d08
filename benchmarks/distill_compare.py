"""Distillation benchmark: one teacher, then the same student trained with none / kd / cwd / nfd at an
equal budget over several seeds. Writes benchmarks/results/distill_compare_<machine>.json and .md.

Nothing here is tuned on the reported validation split: the loss weights are the documented
defaults (see distill/losses/__init__.py), fixed before this benchmark was first run.

    python benchmarks/distill_compare.py                       # quick default, 3 seeds
    python benchmarks/distill_compare.py --config cityscapes_r101_r18 --set data.root=/data/cs
Rerunning resumes: finished runs in --work are reused.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, git_rev, machine  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="quick")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--methods", default="none,kd,cwd,nfd")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--work", default="benchmarks/work/distill_compare")
    ap.add_argument("--tag", help="results file suffix (default: the machine)")
    args = ap.parse_args()

    import torch

    from nfdseg.config import deep_update, parse_overrides
    from nfdseg.distill.config import load_run_config
    from nfdseg.distill.trainer import train_stage
    from nfdseg.manifest import read_manifest

    base_over = parse_overrides(args.overrides)
    work = Path(args.work)
    cfg = load_run_config(args.config, base_over)
    t0 = time.perf_counter()
    teacher_dir = work / "teacher"
    if (teacher_dir / "checkpoint.json").is_file():
        teacher = read_manifest(teacher_dir / "checkpoint.json")
    else:
        teacher = train_stage(cfg, "teacher", teacher_dir)
    runs = []
    for method in args.methods.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            over = deep_update(base_over, {"distill": {"loss": method}, "student": {"train": {"seed": seed}}})
            run_cfg = load_run_config(args.config, over)
            out = work / f"{method}_seed{seed}"
            if (out / "checkpoint.json").is_file():
                m = read_manifest(out / "checkpoint.json")
            else:
                m = train_stage(run_cfg, "student", out, teacher_dir=teacher_dir)
            runs.append({"method": method, "seed": seed, "miou": m.metrics["miou"],
                         "per_class_iou": m.metrics["per_class_iou"], "train_time_s": m.metrics["train_time_s"],
                         "images_per_s": m.metrics["images_per_s"], "peak_rss_mb": m.metrics["peak_rss_mb"]})
            print(f"{method:5s} seed {seed}: mIoU {m.metrics['miou']:.2f}%  ({m.metrics['train_time_s']:.0f}s)", flush=True)
    summary = {}
    for method in args.methods.split(","):
        vals = [r["miou"] for r in runs if r["method"] == method]
        times = [r["train_time_s"] for r in runs if r["method"] == method]
        ips = [r["images_per_s"] for r in runs if r["method"] == method]
        summary[method] = {"miou_mean": round(statistics.mean(vals), 3),
                           "miou_std": round(statistics.stdev(vals), 3) if len(vals) > 1 else 0.0,
                           "train_time_s_mean": round(statistics.mean(times), 1),
                           "images_per_s_mean": round(statistics.mean(ips), 2), "runs": len(vals)}
    mach = machine()
    result = {
        "benchmark": "distill_compare", "machine": mach, "git": git_rev(), "torch": torch.__version__,
        "config": args.config, "overrides": base_over, "student_arch": cfg.student.model.arch,
        "teacher": {"arch": teacher.architecture, "miou": teacher.metrics["miou"],
                    "train_time_s": teacher.metrics["train_time_s"], "params": teacher.metrics["params"]},
        "student_iters": cfg.student.train.iters, "teacher_iters": cfg.teacher.train.iters,
        "summary": summary, "runs": runs, "wall_time_s": round(time.perf_counter() - t0, 1),
    }
    if "none" in summary and "nfd" in summary:
        result["nfd_gain_over_none"] = round(summary["nfd"]["miou_mean"] - summary["none"]["miou_mean"], 3)
    tag = args.tag or mach["tag"]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"distill_compare_{tag}.json").write_text(json.dumps(result, indent=2) + "\n")
    md = [f"# distill_compare on {mach['cpu']} ({mach['cores']} cores{', ' + mach['gpu'] if mach['gpu'] else ''})", "",
          f"Teacher {teacher.architecture}: mIoU {teacher.metrics['miou']:.2f}% "
          f"({cfg.teacher.train.iters} iters, {teacher.metrics['train_time_s']:.0f}s). "
          f"Student {cfg.student.model.arch}, {cfg.student.train.iters} iters each, seeds {args.seeds}.", "",
          "| method | mIoU mean ± std (%) | train time (s) | images/s |", "|---|---|---|---|"]
    for method, s in summary.items():
        md.append(f"| {method} | {s['miou_mean']:.2f} ± {s['miou_std']:.2f} | {s['train_time_s_mean']:.0f} | "
                  f"{s['images_per_s_mean']:.1f} |")
    (RESULTS / f"distill_compare_{tag}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
