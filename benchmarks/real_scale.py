"""Real-architecture distillation benchmark: a DeepLabV3-ResNet-50 teacher, ResNet-18 and MobileNetV3 DeepLabV3
students at their real widths, trained on synthetic scenes at a reduced resolution (>= 128x256 crops) with
none / kd / cwd / nfd at an equal budget and every loss at its documented default. For each student it records
val mIoU, the distillation-to-cross-entropy ratio over training, the range of the student's logits on val
images, and fp32 / FP16 ONNX parity. Writes benchmarks/results/real_scale_<machine>.json after every run
(a killed run keeps what finished; rerunning resumes from --work).

    python benchmarks/real_scale.py                      # full budget (about an hour on 2 CPU cores)
    python benchmarks/real_scale.py --stage teacher      # only the teacher
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, git_rev, machine  # noqa: E402

STUDENTS = ("deeplabv3_resnet18", "deeplabv3_mobilenetv3_large")


def base_overrides(args) -> dict:
    h, w = args.crop
    stage = lambda arch, iters, ev, log_every: {  # noqa: E731
        "model": {"arch": arch},
        "optim": {"name": "sgd", "lr": args.lr, "weight_decay": 1e-4, "poly_power": 0.9},
        "train": {"iters": iters, "batch_size": args.batch, "eval_every": ev, "ckpt_every": 10, "log_every": log_every}}
    return {"data": {"format": "synthetic", "synthetic_train": 1000, "synthetic_val": args.val_images,
                     "synthetic_size": [h, w], "crop_size": [h, w], "input_size": [h, w]},
            "teacher": stage(args.teacher, args.teacher_iters, args.teacher_iters, 5),
            "student": stage(STUDENTS[0], args.student_iters, max(args.student_iters // 2, 1), 1),
            "distill": {"loss": "nfd", "layers": []}}


def logit_range(ckpt_dir: Path, n: int = 8) -> dict:
    """max |logit| and whether all are finite, over the first n val images (torch, fp32)."""
    import numpy as np
    import torch

    from nfdseg.models.checkpoint import load_model_from_dir
    from nfdseg.preprocess import prepare_batch
    from nfdseg.export.parity import validation_images  # the same val images as parity

    model, ckpt = load_model_from_dir(ckpt_dir, "cpu")
    imgs, _, _ = validation_images(ckpt, n)
    x = torch.from_numpy(prepare_batch(imgs, ckpt.preprocess, False))
    with torch.no_grad():
        y = model(x).numpy()
    return {"max_abs_logit": float(np.abs(y).max()), "finite": bool(np.isfinite(y).all())}


def ratio_curve(run_dir: Path) -> list[dict]:
    hist = json.loads((run_dir / "history.json").read_text())["train"]
    return [{"iter": h["iter"], "ce": h["ce"], "distill": h["distill"],
             "ratio": round(h["distill"] / max(h["ce"], 1e-9), 4)} for h in hist]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", default="deeplabv3_resnet50")
    ap.add_argument("--students", default=",".join(STUDENTS))
    ap.add_argument("--methods", default="nfd,none,kd,cwd")
    ap.add_argument("--crop", type=int, nargs=2, default=[128, 256])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--lr", type=float, default=0.02)
    ap.add_argument("--teacher-iters", type=int, default=150)
    ap.add_argument("--student-iters", type=int, default=80)
    ap.add_argument("--val-images", type=int, default=40)
    ap.add_argument("--stage", choices=["teacher", "all"], default="all")
    ap.add_argument("--parity-methods", default="nfd,none,kd,cwd", help="methods whose students are exported "
                    "and checked for fp32/FP16 parity ('' for none)")
    ap.add_argument("--work", default="benchmarks/work/real_scale")
    ap.add_argument("--tag", help="results file suffix (default: the machine)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    import torch

    from nfdseg.config import deep_update
    from nfdseg.distill.config import load_run_config
    from nfdseg.distill.losses import DEFAULT_WEIGHTS
    from nfdseg.distill.trainer import train_stage
    from nfdseg.errors import NfdsegError
    from nfdseg.manifest import read_manifest

    work = Path(args.work)
    base = base_overrides(args)
    cfg = load_run_config(None, base)
    t0 = time.perf_counter()
    tdir = work / "teacher"
    teacher = (read_manifest(tdir / "checkpoint.json") if (tdir / "checkpoint.json").is_file()
               else train_stage(cfg, "teacher", tdir, progress=False))
    mach = machine()
    out_path = RESULTS / f"real_scale_{args.tag or mach['tag']}.json"
    result = {"benchmark": "real_scale", "machine": mach, "git": git_rev(), "torch": torch.__version__,
              "data": "synthetic scenes (8 classes), train 1000 / val %d images" % args.val_images,
              "crop": args.crop, "batch": args.batch, "lr": args.lr,
              "teacher": {"arch": teacher.architecture, "iters": args.teacher_iters, "miou": teacher.metrics["miou"],
                          "params": teacher.metrics["params"], "train_time_s": teacher.metrics["train_time_s"]},
              "student_iters": args.student_iters, "default_weights": DEFAULT_WEIGHTS,
              "distill_defaults": cfg.to_dict()["distill"], "runs": []}
    if out_path.is_file():  # keep runs finished by an earlier invocation with the same settings
        old = json.loads(out_path.read_text())
        if old.get("crop") == args.crop and old.get("student_iters") == args.student_iters:
            result["runs"] = old.get("runs", [])
    if args.stage == "teacher":
        return 0
    from nfdseg.export.run import ExportConfig, run_export

    done = {(r["student"], r["method"]) for r in result["runs"]}
    # The previous default (squared over H*W, weight 0.1, chosen on 64-256-channel models) at these widths:
    # once with the runaway guard (it should stop at the first iteration), once without it for a few iterations.
    legacy = {"distill": {"loss": "nfd", "reduction": "spatial", "weight": 0.1}}
    plan = [(STUDENTS[0], "nfd_legacy_guarded", legacy),
            (STUDENTS[0], "nfd_legacy_unguarded", deep_update(legacy, {
                "distill": {"max_ratio": 0.0, "max_abs_logit": 0.0},
                "student": {"train": {"iters": 4, "eval_every": 4}}}))]
    plan += [(arch, method, {"distill": {"loss": method}})  # method-major: nfd and none of both students first
             for method in args.methods.split(",") for arch in args.students.split(",")]
    for arch, method, extra in plan:
        if (arch, method) in done:
            continue
        over = deep_update(base, deep_update({"student": {"model": {"arch": arch}}}, extra))
        run_cfg = load_run_config(None, over)
        rdir = work / f"{arch}_{method}"
        rec = {"student": arch, "method": method}
        try:
            m = (read_manifest(rdir / "checkpoint.json") if (rdir / "checkpoint.json").is_file()
                 else train_stage(run_cfg, "student", rdir, teacher_dir=tdir, progress=False))
        except NfdsegError as e:  # the runaway guard (or another user-facing stop) is a result too
            rec.update({"stopped": str(e), "distill": run_cfg.to_dict()["distill"]})
            result["runs"].append(rec)
            out_path.write_text(json.dumps(result, indent=2) + "\n")
            continue
        rec.update({"distill": run_cfg.to_dict()["distill"], "iters": run_cfg.student.train.iters,
                    "miou": m.metrics["miou"], "params": m.metrics["params"],
                    "train_time_s": m.metrics["train_time_s"], "ratio_curve": ratio_curve(rdir),
                    "logits": logit_range(rdir)})
        if method in args.parity_methods.split(","):
            summary = run_export(rdir, rdir / "export", ExportConfig(engine="off"))
            par = json.loads((rdir / "export" / "parity.json").read_text())
            rec["parity"] = {"passed": par["passed"], "results": [
                {k: r.get(k) for k in ("artifact", "precision", "pixel_agreement_pct", "delta_miou", "finite", "passed")}
                for r in par["results"]]}
            rec["export_time_s"] = summary["export_time_s"]
        result["runs"].append(rec)
        result["wall_time_s"] = round(time.perf_counter() - t0, 1)
        out_path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"{arch} {method}: mIoU {rec['miou']:.2f}%  max|logit| {rec['logits']['max_abs_logit']:.3g}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
