"""The `nfdseg` command: one subcommand per stage, plus the whole pipeline.

Heavy libraries are imported inside each command, so `nfdseg --help` is instant and `serve`-side
commands work without torch.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from nfdseg.artifacts import STUDENT_DIR, TEACHER_DIR
from nfdseg.cliargs import add_config_args, add_out_arg, add_quiet_arg, parse_command_line
from nfdseg.distill.config import LOSSES
from nfdseg.errors import NfdsegError, missing_extra
from nfdseg.redact import install_log_redaction

log = logging.getLogger("nfdseg")


def _load_cfg(args):
    from nfdseg.cliargs import overrides_of
    from nfdseg.distill.config import load_run_config

    over = overrides_of(args)
    if getattr(args, "loss", None):
        over.setdefault("distill", {})["loss"] = args.loss
    return load_run_config(args.config, over)


def cmd_distill(args) -> int:
    from nfdseg.distill.stage import run_stage

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nfdseg",
        description="Train a small segmentation student by Normalized Feature Distillation, export it to "
                    "ONNX / TensorRT, serve it, and demo it.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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

    for register in _extra_commands():
        register(sub)
    return parser


def _extra_commands():
    """Commands of the other stages register themselves here (each module owns its flags). Their CLI modules
    import only light modules at import time, so this works on a runtime-only install."""
    from nfdseg.app import pipeline
    from nfdseg.data import cli as data_cli
    from nfdseg.demo import cli as demo_cli
    from nfdseg.export import cli as export_cli
    from nfdseg.serve import cli as serve_cli

    return [data_cli.register, export_cli.register, serve_cli.register, demo_cli.register, pipeline.register]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse_command_line(parser, argv)  # options before or after positionals (nfdseg/cliargs.py)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    install_log_redaction()  # no stream URL's password in any log line (nfdseg/redact.py)
    try:
        return int(args.func(args) or 0)
    except NfdsegError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:  # an optional library of another extra (torch, onnx, gradio, ...)
        hint = missing_extra(e, args.command)
        if hint is None:
            raise
        print(f"error: {hint}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished work is saved; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
