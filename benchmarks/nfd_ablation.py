"""Which NFD settings carry the gain on real photos: student variants from one fixed teacher, scored on the
CamVid `tune` split (carved from train by benchmarks/camvid_tune_split.py; val and test are never read).

Each variant is a set of config overrides on top of the preset (layers, weight, logits KD on top); every run is
one student stage, `--jobs` of them at a time with the CPU's threads divided between them (on 2 cores two
1-thread runs finish ~1.7x sooner than one after the other; mIoU, not time, is what this compares).

    python benchmarks/camvid_tune_split.py $CAMVID
    python benchmarks/nfd_ablation.py --set data.root=$CAMVID --teacher runs/teacher_tune/os8/teacher
Finished runs in --work are reused. Writes benchmarks/results/nfd_ablation_<tag>.json after every run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, git_rev, machine  # noqa: E402

TUNE_SPLIT = {"data": {"train_split": "trainfit", "val_split": "tune"}}

# Every variant is its overrides over this base, so a preset's own distill section (camvid_cpu adds logits KD)
# cannot leak into a variant that does not name it.
BASE = {"layers": ["layer2", "layer3", "layer4", "head"], "weight": None, "logits_kd_weight": 0.0}

# name -> distill overrides over BASE (student.train.seed is added per run)
VARIANTS = {
    "none": {"loss": "none"},
    "kd": {"loss": "kd"},
    "cwd": {"loss": "cwd"},
    "nfd": {"loss": "nfd"},
    "nfd_head": {"loss": "nfd", "layers": ["head"]},
    "nfd_layer4_head": {"loss": "nfd", "layers": ["layer4", "head"]},
    "nfd_backbone": {"loss": "nfd", "layers": ["layer2", "layer3", "layer4"]},
    "nfd_layer2": {"loss": "nfd", "layers": ["layer2"]},
    "nfd_w1": {"loss": "nfd", "weight": 1.0},
    "nfd_head_w1": {"loss": "nfd", "layers": ["head"], "weight": 1.0},
    "nfd_kd": {"loss": "nfd", "logits_kd_weight": 3.0},
    "nfd_head_kd": {"loss": "nfd", "layers": ["head"], "logits_kd_weight": 3.0},
    # with logits KD on top: the head left to the KD term (the head probe lost to none, nfd_features.py), a lighter
    # feature term, a heavier logits term
    "nfd_backbone_kd": {"loss": "nfd", "layers": ["layer2", "layer3", "layer4"], "logits_kd_weight": 3.0},
    "nfd_w3_kd": {"loss": "nfd", "weight": 3.0, "logits_kd_weight": 3.0},
    "nfd_kd6": {"loss": "nfd", "logits_kd_weight": 6.0},
}


def run_one(args, variant: str, seed: int) -> dict:
    """One student stage in its own process (so each run gets its own thread count)."""
    out = Path(args.work) / f"{variant}_seed{seed}"
    if not (out / "checkpoint.json").is_file():
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
        cmd = [sys.executable, __file__, "--one", variant, "--seed", str(seed), "--config", args.config,
               "--teacher", args.teacher, "--work", args.work] + [a for s in args.overrides for a in ("--set", s)]
        log = out.with_suffix(".log")
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as fh:
            rc = subprocess.call(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT)
        if rc != 0:
            return {"variant": variant, "seed": seed, "error": f"exit {rc}, see {log}"}
    m = json.loads((out / "checkpoint.json").read_text())
    from nfdseg.config import from_dict
    from nfdseg.distill.config import DistillConfig
    from nfdseg.distill.runkey import distill_identity

    was = distill_identity(from_dict(DistillConfig, m["config"]["distill"]))
    want = distill_identity(from_dict(DistillConfig, {**m["config"]["distill"], **BASE, **VARIANTS[variant]}))
    if was != want:
        return {"variant": variant, "seed": seed, "error": f"{out} was trained with other settings: {was} != {want}"}
    metrics = m["metrics"]
    return {"variant": variant, "seed": seed, "tune_miou": metrics["miou"], "per_class_iou": metrics["per_class_iou"],
            "train_time_s": metrics["train_time_s"], "distill": m["config"].get("distill"),
            "threads": args.threads}


def train_one(args) -> int:
    from nfdseg.config import deep_update, parse_overrides
    from nfdseg.distill.config import load_run_config
    from nfdseg.distill.trainer import train_stage

    over = deep_update(parse_overrides(args.overrides), TUNE_SPLIT)
    over = deep_update(over, {"distill": {**BASE, **VARIANTS[args.one]},
                              "student": {"train": {"seed": args.seed, "amp": "off"}}})
    cfg = load_run_config(args.config, over)
    train_stage(cfg, "student", Path(args.work) / f"{args.one}_seed{args.seed}", teacher_dir=Path(args.teacher))
    return 0


def summarize(runs: list[dict]) -> dict:
    out = {}
    for v in dict.fromkeys(r["variant"] for r in runs):
        vals = [r["tune_miou"] for r in runs if r["variant"] == v and "tune_miou" in r]
        if vals:
            out[v] = {"tune_miou_mean": round(statistics.mean(vals), 3),
                      "tune_miou_std": round(statistics.stdev(vals), 3) if len(vals) > 1 else None,
                      "seeds": len(vals)}
    if "none" in out:
        for v, s in out.items():
            s["gain_over_none"] = round(s["tune_miou_mean"] - out["none"]["tune_miou_mean"], 3)
    return out


CHOICE_RULE = ("the distilling variant (not none, kd or cwd) with the highest mean tune mIoU over the seeds every "
               "variant finished, except that a variant displaces one listed before it only when its mean is higher "
               "by more than the larger of the two standard deviations over seeds (seed noise: with many variants "
               "the highest mean is biased upward, so a later, exploratory variant must win clearly); the camvid_cpu "
               "preset's distill section is the chosen variant's overrides")


def choose(runs: list[dict], variants: list[str]) -> dict | None:
    """The preset's distillation by CHOICE_RULE, walking the distilling variants in the order given."""
    done = {v: {r["seed"] for r in runs if r["variant"] == v and "tune_miou" in r} for v in variants}
    seeds = set.intersection(*done.values()) if done else set()
    if len(seeds) < 2:
        return None
    vals = {v: [r["tune_miou"] for r in runs if r["variant"] == v and r["seed"] in seeds]
            for v in variants if v not in ("none", "kd", "cwd")}
    if not vals:
        return None
    mean = {v: statistics.mean(x) for v, x in vals.items()}
    std = {v: statistics.stdev(x) for v, x in vals.items()}
    best = None
    for v in vals:
        if best is None or mean[v] > mean[best] + max(std[v], std[best]):
            best = v
    passed_over = [{"variant": v, "tune_miou_mean": round(mean[v], 3), "over_chosen": round(mean[v] - mean[best], 3),
                    "noise": round(max(std[v], std[best]), 3)} for v in vals if mean[v] > mean[best]]
    return {"variant": best, "distill": VARIANTS[best], "distill_with_base": {**BASE, **VARIANTS[best]},
            "seeds": sorted(seeds), "tune_miou_mean": round(mean[best], 3),
            "higher_within_noise": passed_over, "rule": CHOICE_RULE}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="camvid_cpu")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--teacher", required=True, help="a teacher stage trained on the trainfit split")
    ap.add_argument("--variants", default="none,kd,nfd,nfd_head,nfd_layer4_head,nfd_backbone,nfd_w1,nfd_kd,"
                                          "nfd_backbone_kd,nfd_w3_kd,nfd_kd6",
                    help="in order of preference: a later variant must beat an earlier one beyond seed noise")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--work", default="benchmarks/work/nfd_ablation")
    ap.add_argument("--tag", default=None)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        return train_one(args)
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variants {unknown}; known: {sorted(VARIANTS)}")
    args.threads = max(1, (os.cpu_count() or 1) // args.jobs)
    teacher = json.loads((Path(args.teacher) / "checkpoint.json").read_text())
    mach = machine()
    result = {"benchmark": "nfd_ablation", "machine": mach, "git": git_rev(), "config": args.config,
              "overrides": args.overrides, "split": "trainfit -> tune (last 20 % of each CamVid train sequence)",
              "teacher": {"dir": args.teacher, "arch": teacher["architecture"], "tune_miou": teacher["metrics"]["miou"],
                          "per_class_iou": teacher["metrics"]["per_class_iou"],
                          "iters": teacher["config"]["teacher"]["train"]["iters"]},
              "variants": {v: VARIANTS[v] for v in variants}, "jobs": args.jobs, "threads_per_run": args.threads,
              "runs": []}
    path = RESULTS / f"nfd_ablation_{args.tag or mach['tag']}.json"
    t0 = time.perf_counter()
    todo = [(v, int(s)) for s in args.seeds.split(",") for v in variants]  # seeds outer: every variant at seed 0 first
    with ThreadPoolExecutor(args.jobs) as pool:
        for r in pool.map(lambda vs: run_one(args, *vs), todo):
            result["runs"].append(r)
            result["summary"] = summarize(result["runs"])
            result["chosen"] = choose(result["runs"], variants)
            result["wall_time_s"] = round(time.perf_counter() - t0, 1)
            result["load_average"] = list(os.getloadavg())
            path.write_text(json.dumps(result, indent=2) + "\n")
            print(r["variant"], r["seed"], r.get("tune_miou", r.get("error")), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
