"""`nfdseg distill`: train the teacher, then the student by distillation (the stage's own policy: distill/stage.py)."""

from __future__ import annotations

from pathlib import Path

from nfdseg.artifacts import STUDENT_DIR, TEACHER_DIR
from nfdseg.cliargs import add_config_args, add_out_arg, add_quiet_arg

from .config import LOSSES


def _load_cfg(args):
    from nfdseg.cliargs import overrides_of

    from .config import load_run_config

    over = overrides_of(args)
    if getattr(args, "loss", None):
        over.setdefault("distill", {})["loss"] = args.loss
    return load_run_config(args.config, over)


def cmd_distill(args) -> int:
    from .stage import run_stage

    cfg = _load_cfg(args)
    out = Path(args.out)
    teacher_dir = Path(args.teacher) if args.teacher else out / TEACHER_DIR
    # The stage's own policy (distill/stage.py), as the pipeline runs it: a finished stage whose inputs are
    # unchanged is kept (with or without --restart); a run of other inputs is refused unless --restart.
    on_stale = "restart" if args.restart else "refuse"
    if args.stage in ("teacher", "both"):
        r = run_stage(cfg, "teacher", out / TEACHER_DIR, on_stale=on_stale, progress=not args.quiet)
        if r.manifest is not None:  # None on non-main ranks under torchrun
            print(f"teacher {r.manifest.architecture} ({_said(r.state)}): val mIoU {r.manifest.metrics['miou']:.2f}% "
                  f"-> {out / TEACHER_DIR}")
    if args.stage in ("student", "both"):
        student_dir = out / (args.student_name or STUDENT_DIR)
        r = run_stage(cfg, "student", student_dir, teacher_dir, on_stale=on_stale, progress=not args.quiet)
        if r.manifest is not None:
            print(f"student {r.manifest.architecture} ({cfg.distill.loss}, {_said(r.state)}): val mIoU "
                  f"{r.manifest.metrics['miou']:.2f}% -> {student_dir}")
    return 0


def _said(state: str) -> str:
    return "up to date, kept" if state == "up to date" else state


def register(sub) -> None:
    p = sub.add_parser("distill", help="train the teacher, then the student by distillation",
                       description="Train the teacher (cross-entropy), then the student (cross-entropy + the "
                                   "distillation loss). Each stage writes best.pt + checkpoint.json; rerunning the "
                                   "same command resumes from last.pt.")
    add_config_args(p)
    add_out_arg(p, "runs/quick")
    p.add_argument("--stage", choices=("teacher", "student", "both"), default="both",
                   help="which stage to run (default: both)")
    p.add_argument("--teacher", help="teacher run directory for the student stage (default: OUT/teacher)")
    p.add_argument("--loss", choices=LOSSES, help="distillation loss (default: the config's, nfd)")
    p.add_argument("--student-name", help="subdirectory for the student (default: student)")
    p.add_argument("--restart", action="store_true",
                   help="start over the stages whose inputs changed (discarding their last.pt); finished stages "
                        "with unchanged inputs are kept")
    add_quiet_arg(p)
    p.set_defaults(func=cmd_distill)
