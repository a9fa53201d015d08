"""The `nfdseg` command: one subcommand per stage, plus the whole pipeline.

Heavy libraries are imported inside each command, so `nfdseg --help` is instant and `serve`-side
commands work without torch.
"""

from __future__ import annotations

import argparse
import logging
import sys

from nfdseg.cliargs import parse_command_line
from nfdseg.errors import NfdsegError, missing_extra
from nfdseg.redact import install_log_redaction

log = logging.getLogger("nfdseg")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nfdseg",
        description="Train a small segmentation student by Normalized Feature Distillation, export it to "
                    "ONNX / TensorRT, serve it, and demo it.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for register in _stage_commands():
        register(sub)
    return parser


def _stage_commands():
    """Each stage's command registers itself from its own folder (each module owns its flags). Their CLI modules
    import only light modules at import time, so this works on a runtime-only install."""
    from nfdseg.app import pipeline
    from nfdseg.data import cli as data_cli
    from nfdseg.demo import cli as demo_cli
    from nfdseg.distill import cli as distill_cli
    from nfdseg.export import cli as export_cli
    from nfdseg.serve import cli as serve_cli

    return [distill_cli.register, data_cli.register, export_cli.register, serve_cli.register, demo_cli.register,
            pipeline.register]


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
