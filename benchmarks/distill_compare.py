"""Distillation benchmark: one teacher, then the same student trained with none / kd / cwd / nfd at an
equal budget over several seeds. Writes benchmarks/results/distill_compare_<machine>.json and .md.

Nothing here is tuned on the reported validation split: the loss weights are the documented
defaults (see distill/losses/__init__.py), fixed before this benchmark was first run.

    python benchmarks/distill_compare.py                       # quick default, 3 seeds, data.seed 0 and 1
    python benchmarks/distill_compare.py --config camvid_cpu --set data.root=$CAMVID --tag camvid_cpu2
    python benchmarks/distill_compare.py --config cityscapes_r101_r18 --set data.root=/data/cs
On-disk data (CamVid, Cityscapes, ...) is one draw: data.seed only draws the synthetic scenes.
Rerunning resumes: finished runs in --work are reused. Seeds are the outer loop, so a run stopped early still
has every method at the first seeds.
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


def method_overrides(method: str, kd_weight: float) -> dict:
    """distill overrides of a method: a loss name, or `nfd+kd` / `cwd+kd` (that loss with logits KD on top, at kd's
    default weight)."""
    loss, plus, extra = method.partition("+")
    if plus and extra != "kd":
        raise SystemExit(f"unknown method {method!r}: a loss name (none, kd, cwd, nfd) or LOSS+kd")
    # set either way: a preset may add logits KD (camvid_cpu does), and a plain `nfd` must stay plain NFD
    return {"loss": loss, "logits_kd_weight": kd_weight if plus else 0.0}


def stale_run(recorded: dict, cfg) -> str:
    """What differs between a finished run's recorded config and this run's: the student's schedule and what the
    run key says shapes a student (distill_identity), or '' when it can be reused."""
    from nfdseg.config import from_dict
    from nfdseg.distill.config import DistillConfig
    from nfdseg.distill.runkey import distill_identity

    want = cfg.to_dict()
    diffs = [f"student.train.{k} {recorded['student']['train'][k]} != {want['student']['train'][k]}"
             for k in ("iters", "batch_size", "seed") if recorded["student"]["train"][k] != want["student"]["train"][k]]
    was = distill_identity(from_dict(DistillConfig, recorded["distill"]))
    now = distill_identity(cfg.distill)
    if was != now:
        diffs.append(f"distill {was} != {now}")
    return "; ".join(diffs)


def summarize(runs: list[dict], methods: list[str]) -> dict:
    summary = {}
    for method in methods:
        rs = [r for r in runs if r["method"] == method]
        if not rs:
            continue
        vals = [r["miou"] for r in rs]
        per_class = {name: [r["per_class_iou"][name] for r in rs if r["per_class_iou"].get(name) is not None]
                     for name in rs[0]["per_class_iou"]}
        summary[method] = {"miou_mean": round(statistics.mean(vals), 3),
                           "per_class_iou_mean": {n: round(statistics.mean(v), 2) if v else None
                                                  for n, v in per_class.items()},
                           "miou_std": round(statistics.stdev(vals), 3) if len(vals) > 1 else 0.0,
                           "train_time_s_mean": round(statistics.mean(r["train_time_s"] for r in rs), 1),
                           "images_per_s_mean": round(statistics.mean(r["images_per_s"] for r in rs), 2),
                           "runs": len(vals)}
    return summary


def gains(summary: dict, teacher_miou: float) -> dict:
    """nfd's gain over none (mIoU points), its margin over kd and cwd, and the share of the teacher-student gap
    it closes, (nfd - none) / (teacher - none)."""
    if "none" not in summary or "nfd" not in summary:
        return {}
    none, nfd = summary["none"]["miou_mean"], summary["nfd"]["miou_mean"]
    out = {"nfd_gain_over_none": round(nfd - none, 3),
           "gap_share_closed_by_nfd": round((nfd - none) / (teacher_miou - none), 4) if teacher_miou > none else None}
    for other in [m for m in summary if m not in ("none", "nfd")]:
        if other in summary:
            out[f"nfd_minus_{other}"] = round(nfd - summary[other]["miou_mean"], 3)
            out[f"{other}_gain_over_none"] = round(summary[other]["miou_mean"] - none, 3)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="quick")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--methods", default="none,kd,cwd,nfd", help="losses, and LOSS+kd for logits KD on top")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--data-seeds", default="0,1",
                    help="draws of the built-in synthetic data (data.seed); each gets its own teacher")
    ap.add_argument("--work", default="benchmarks/work/dc", help="per draw: WORK_d<seed>/teacher, WORK_d<seed>/<run>")
    ap.add_argument("--tag", help="results file suffix (default: the machine)")
    args = ap.parse_args()

    import torch

    from nfdseg.config import deep_update, parse_overrides
    from nfdseg.distill.config import load_run_config
    from nfdseg.distill.losses import DEFAULT_WEIGHTS
    from nfdseg.distill.trainer import train_stage
    from nfdseg.manifest import read_manifest

    methods = args.methods.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    mach = machine()
    tag = args.tag or mach["tag"]
    t0 = time.perf_counter()
    user_over = parse_overrides(args.overrides)
    cfg = load_run_config(args.config, user_over)
    result = {
        "benchmark": "distill_compare", "machine": mach, "git": git_rev(), "torch": torch.__version__,
        "config": args.config, "overrides": user_over, "student_arch": cfg.student.model.arch,
        "student_iters": cfg.student.train.iters, "teacher_iters": cfg.teacher.train.iters,
        "distill_defaults": {**cfg.to_dict()["distill"], "default_weights": DEFAULT_WEIGHTS},
        "seeds": seeds, "draws": [],
        "note": "mIoU on each draw's val split; train times and images/s were measured while other jobs shared the "
                "machine (they vary with its load, not only with the method), so compare mIoU, not time",
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    data_seeds = [int(s) for s in args.data_seeds.split(",")] if cfg.data.format == "synthetic" else [0]
    for dseed in data_seeds:
        base_over = deep_update(user_over, {"data": {"seed": dseed}})
        cfg = load_run_config(args.config, base_over)
        work = Path(f"{args.work}_d{dseed}")
        teacher_dir = work / "teacher"
        if (teacher_dir / "checkpoint.json").is_file():
            teacher = read_manifest(teacher_dir / "checkpoint.json")
        else:
            teacher = train_stage(cfg, "teacher", teacher_dir)
        draw = {"data_seed": dseed if cfg.data.format == "synthetic" else None, "data": cfg.data.format,
                "teacher": {"arch": teacher.architecture, "miou": teacher.metrics["miou"],
                            "per_class_iou": teacher.metrics["per_class_iou"],
                                                 "train_time_s": teacher.metrics["train_time_s"],
                                                 "params": teacher.metrics["params"]}, "runs": []}
        result["draws"].append(draw)
        for seed in seeds:
            for method in methods:
                over = deep_update(base_over, {"distill": method_overrides(method, DEFAULT_WEIGHTS["kd"]),
                                                "student": {"train": {"seed": seed}}})
                run_cfg = load_run_config(args.config, over)
                out = work / f"{method}_seed{seed}"
                if (out / "checkpoint.json").is_file():
                    m = read_manifest(out / "checkpoint.json")
                    stale = stale_run(m.config, run_cfg)
                    if stale:
                        raise SystemExit(f"{out} was trained with other settings ({stale}): move it away or use "
                                         "another --work")
                else:
                    m = train_stage(run_cfg, "student", out, teacher_dir=teacher_dir)
                draw["runs"].append({"method": method, "seed": seed, "miou": m.metrics["miou"],
                                     "per_class_iou": m.metrics["per_class_iou"],
                                     "train_time_s": m.metrics["train_time_s"],
                                     "images_per_s": m.metrics["images_per_s"], "peak_rss_mb": m.metrics["peak_rss_mb"],
                                     "distill": m.config.get("distill")})
                print(f"data {dseed} {method:5s} seed {seed}: mIoU {m.metrics['miou']:.2f}%  "
                      f"({m.metrics['train_time_s']:.0f}s)", flush=True)
                draw["summary"] = summarize(draw["runs"], methods)
                draw.update(gains(draw["summary"], teacher.metrics["miou"]))
                result["wall_time_s"] = round(time.perf_counter() - t0, 1)
                (RESULTS / f"distill_compare_{tag}.json").write_text(json.dumps(result, indent=2) + "\n")
    write_md(result, tag, args.seeds)
    return 0


def write_md(result: dict, tag: str, seeds: str) -> None:
    mach = result["machine"]
    md = [f"# distill_compare on {mach['cpu']} ({mach['cores']} cores{', ' + mach['gpu'] if mach['gpu'] else ''})", "",
          f"Student {result['student_arch']}, {result['student_iters']} iterations each, seeds {seeds}; "
          f"NFD default: norm {result['distill_defaults']['norm']}, reduction {result['distill_defaults']['reduction']}, "
          f"weight {result['distill_defaults']['default_weights']['nfd']}. {result['note']}.", ""]
    for draw in result["draws"]:
        t = draw["teacher"]
        title = f"data.seed={draw['data_seed']}" if draw.get("data_seed") is not None else draw.get("data", "")
        md += [f"## {title}", "",
               f"Teacher {t['arch']}: mIoU {t['miou']:.2f}% ({result['teacher_iters']} iters, {t['train_time_s']:.0f}s).", "",
               "| method | mIoU mean ± std (%) | train time (s) | images/s |", "|---|---|---|---|"]
        for method, s in draw.get("summary", {}).items():
            md.append(f"| {method} | {s['miou_mean']:.2f} ± {s['miou_std']:.2f} | {s['train_time_s_mean']:.0f} | "
                      f"{s['images_per_s_mean']:.1f} |")
        if "nfd_gain_over_none" in draw:
            share = draw["gap_share_closed_by_nfd"]
            md += ["", f"NFD gain over none: {draw['nfd_gain_over_none']:+.2f} points; share of the teacher-student gap "
                       f"closed: {share * 100:.0f}%." if share is not None else ""]
        summary = draw.get("summary", {})
        if summary:
            names = list(t.get("per_class_iou") or next(iter(summary.values()))["per_class_iou_mean"])
            md += ["", "Per-class IoU (%, mean over seeds):", "",
                   "| class | teacher | " + " | ".join(summary) + " |", "|---|---|" + "---|" * len(summary)]
            for n in names:
                tv = (t.get("per_class_iou") or {}).get(n)
                md.append(f"| {n} | {'—' if tv is None else f'{tv:.1f}'} | " + " | ".join(
                    "—" if s["per_class_iou_mean"].get(n) is None else f"{s['per_class_iou_mean'][n]:.1f}"
                    for s in summary.values()) + " |")
        md.append("")
    (RESULTS / f"distill_compare_{tag}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    sys.exit(main())
