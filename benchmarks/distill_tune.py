"""Choose NFD's default weight on the synthetic "tune" split (never on the reported "val" split) at two widths:
the quick pair (ResNet-18/2 -> ResNet-10/8, 64-256 channels) and the real pair (ResNet-50 -> ResNet-18,
256-2048 channels) at a reduced resolution. Each run trains one student from a fixed teacher and scores it
on "tune". The runaway guard is turned off here (distill.max_ratio=0) so the sweep sees every weight; the
first-iteration distillation/CE ratio is recorded instead. Results are written after every run to
benchmarks/results/distill_tune_<machine>.json (kd/cwd rows of the earlier sweep are kept).

    python benchmarks/distill_tune.py --pair quick --teacher benchmarks/work/dc_d0/teacher
    python benchmarks/distill_tune.py --pair real --teacher benchmarks/work/real_scale/teacher
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, git_rev, machine  # noqa: E402


def pair_overrides(pair: str, iters: int) -> tuple[str | None, dict]:
    """(config, overrides) of one pair; the student evaluates on the 'tune' split."""
    if pair == "quick":
        return "quick", {"data": {"val_split": "tune"},
                         "student": {"train": {"iters": iters, "eval_every": iters, "log_every": 1}}}
    # the real pair: the teacher of benchmarks/real_scale.py (its data), students on smaller crops
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from real_scale import base_overrides

    ns = argparse.Namespace(crop=[128, 256], batch=2, lr=0.02, teacher="deeplabv3_resnet50", teacher_iters=150,
                            student_iters=iters, val_images=40)
    over = base_overrides(ns)
    over["data"].update(val_split="tune", crop_size=[64, 128])
    over["student"]["train"].update(eval_every=iters, log_every=1)
    return None, over


# The distillation term the default may start at, in multiples of the cross-entropy: issue 10's "sane range".
# (The runaway guard judges more loosely, dividing by a weight above 1; this limit keeps the default itself sane.)
SANE_FIRST_RATIO = 50.0


def choose(doc: dict) -> dict:
    """The NFD default: among the (norm, reduction, weight) settings run at every recorded pair, those whose
    first-iteration distillation/CE ratio is at most SANE_FIRST_RATIO (50) at every pair, the one with the
    largest mean tune-mIoU gain over `none`. kd and cwd keep the earlier sweep's choice."""
    max_ratio = SANE_FIRST_RATIO
    pairs = doc["pairs"]
    cands: dict[tuple, dict] = {}
    for pname, entry in pairs.items():
        none = [r["tune_miou"] for r in entry["runs"] if r["loss"] == "none"]
        if not none:
            continue
        for r in entry["runs"]:
            if r["loss"] != "nfd":
                continue
            key = (r["norm"], r["reduction"], r["weight"])
            c = cands.setdefault(key, {"gains": {}, "ratios": {}})
            c["gains"][pname] = round(r["tune_miou"] - none[0], 3)
            c["ratios"][pname] = r["first_logged"]["ratio"]
    named = [p for p in pairs if any(r["loss"] == "none" for r in pairs[p]["runs"])]
    ok = {k: v for k, v in cands.items() if set(v["gains"]) == set(named)
          and all(x <= max_ratio for x in v["ratios"].values())}
    best = max(ok, key=lambda k: sum(ok[k]["gains"].values()) / len(ok[k]["gains"]))
    earlier = (doc.get("earlier_sweep") or {}).get("chosen") or {}
    return {"nfd": {"norm": best[0], "reduction": best[1], "weight": best[2], "pairs_used": named,
                    "gain_over_none_by_pair": ok[best]["gains"], "first_ratio_by_pair": ok[best]["ratios"],
                    "rule": choose.__doc__.split("\n")[0].strip() + " " + " ".join(
                        line.strip() for line in choose.__doc__.split("\n")[1:3]),
                    "candidates": {f"{k[0]}/{k[1]}/{k[2]:g}": v for k, v in cands.items()}},
            "sane_first_ratio": max_ratio, "kd": earlier.get("kd"), "cwd": earlier.get("cwd")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pair", choices=["quick", "real"])
    ap.add_argument("--teacher", help="a finished teacher run directory")
    ap.add_argument("--choose", action="store_true", help="only (re)write 'chosen' from the runs recorded so far")
    ap.add_argument("--runs", default="none:0,nfd:squared:element:3,nfd:squared:element:10,nfd:squared:element:30",
                    help="comma-separated loss[:norm:reduction]:weight")
    ap.add_argument("--iters", type=int, default=400)
    ap.add_argument("--work", default="benchmarks/work/distill_tune")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    import torch

    from nfdseg.config import deep_update
    from nfdseg.distill.config import load_run_config
    from nfdseg.distill.trainer import train_stage
    from nfdseg.manifest import read_manifest

    mach = machine()
    path = RESULTS / f"distill_tune_{mach['tag']}.json"
    doc = json.loads(path.read_text()) if path.is_file() else {}
    if args.choose:
        for pname, entry in doc.get("pairs", {}).items():  # the per-iteration ratio over the guard's window
            for r in entry["runs"]:
                hist = Path(args.work) / f"{pname}_{r['loss']}_{r['norm']}_{r['reduction']}_{r['weight']:g}" / "history.json"
                if hist.is_file():
                    h = json.loads(hist.read_text())["train"][:50]
                    r["max_ratio_first_50_iters"] = round(max(x["distill"] / max(x["ce"], 1e-9) for x in h), 3)
        doc["chosen"] = choose(doc)
        path.write_text(json.dumps(doc, indent=2) + "\n")
        print(json.dumps(doc["chosen"], indent=2))
        return 0
    source, base = pair_overrides(args.pair, args.iters)
    if "pairs" not in doc:  # first run of this sweep: keep the earlier kd/cwd rows that chose their defaults
        old = doc
        doc = {"benchmark": "distill_tune", "split": "tune (synthetic, disjoint from train and val)",
               "purpose": "choose each loss's default weight without touching the reported val split",
               "pairs": {}, "earlier_sweep": {k: old.get(k) for k in ("teacher", "student", "runs", "chosen")}}
    doc.update(machine=mach, git=git_rev(), torch=torch.__version__)
    teacher = read_manifest(Path(args.teacher) / "checkpoint.json")
    cfg0 = load_run_config(source, base)
    entry = doc["pairs"].setdefault(args.pair, {"runs": []})
    entry.update(teacher={"arch": teacher.architecture, "val_miou": teacher.metrics["miou"], "dir": args.teacher},
                 student={"arch": cfg0.student.model.arch, "iters": args.iters,
                          "crop": list(cfg0.data.crop_size), "batch": cfg0.student.train.batch_size})
    for spec in args.runs.split(","):
        parts = spec.split(":")
        loss, weight = parts[0], float(parts[-1])
        norm, reduction = (parts[1], parts[2]) if len(parts) == 4 else ("squared", "element")
        key = {"loss": loss, "norm": norm, "reduction": reduction, "weight": weight}
        if any({k: r.get(k) for k in key} == key for r in entry["runs"]):
            continue
        over = deep_update(base, {"distill": {"loss": loss, "weight": weight, "norm": norm, "reduction": reduction,
                                              "max_ratio": 0.0, "max_abs_logit": 0.0}})
        cfg = load_run_config(source, over)
        name = f"{args.pair}_{loss}_{norm}_{reduction}_{weight:g}"
        m = train_stage(cfg, "student", Path(args.work) / name, teacher_dir=args.teacher, progress=False)
        hist = json.loads((Path(args.work) / name / "history.json").read_text())["train"]
        first = hist[0]
        row = {**key, "tune_miou": m.metrics["miou"], "train_time_s": m.metrics["train_time_s"],
               "first_logged": {"iter": first["iter"], "ce": first["ce"], "distill": first["distill"],
                                "ratio": round(first["distill"] / max(first["ce"], 1e-9), 3)},
               "last_logged": hist[-1]}
        entry["runs"].append(row)
        path.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"{name}: tune mIoU {row['tune_miou']:.2f}%  first ratio {row['first_logged']['ratio']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
