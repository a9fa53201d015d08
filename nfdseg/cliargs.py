"""The flags every stage's command shares (--config, --set, --out, --quiet), defined once so they read the same
in `nfdseg distill`, `nfdseg pipeline`, `nfdseg data check`, `nfdseg eval` and the rest."""

from __future__ import annotations

import argparse
import sys
from typing import Any

PRESETS_HELP = "a built-in name (quick, camvid_cpu, cityscapes_r101_r18, ...)"


def add_config_args(p: argparse.ArgumentParser, default: str | None = "quick", what: str = "",
                    set_example: str = "student.train.iters=200") -> None:
    """--config (a YAML run config or a built-in preset name) and --set KEY=VALUE (repeatable)."""
    shown = f" (default {default})" if default else ""
    p.add_argument("--config", default=default,
                   help=f"YAML run config or {PRESETS_HELP}{shown}{'; ' + what if what else ''}")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help=f"override one config value, e.g. --set {set_example} (repeatable)")


def add_out_arg(p: argparse.ArgumentParser, default: str | None, what: str = "output directory") -> None:
    shown = f" (default {default})" if default else ""
    p.add_argument("--out", default=default, help=f"{what}{shown}")


def add_quiet_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def overrides_of(args: argparse.Namespace) -> dict[str, Any]:
    """The nested dict of the command's --set KEY=VALUE flags (ConfigError on a malformed one)."""
    from .config import parse_overrides

    return parse_overrides(getattr(args, "overrides", []) or [])


def parse_command_line(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """The one argument convention of `nfdseg`: every subcommand takes its options before or after its
    positionals, in any order (`nfdseg data check --format camvid ROOT` = `nfdseg data check ROOT --format camvid`).

    Plain argparse binds an optional positional (nargs='?') at the first positional chunk, so one given after
    an option is "unrecognized". When that happens, the command's own parser reads its arguments again with
    parse_intermixed_args (options first, then positionals), which is what a user means."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args, rest = parser.parse_known_args(argv)
    if not rest:
        return args
    command = getattr(args, "command", None)
    subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if command is None or not subparsers or command not in argv:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    sub = subparsers[0].choices[command]
    again = sub.parse_intermixed_args(argv[argv.index(command) + 1:])  # errors exit 2 with the command's usage
    for key, value in vars(again).items():
        setattr(args, key, value)
    return args
