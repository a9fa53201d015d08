"""`nfdseg data check`: the dataset check from the command line (no torch needed)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from nfdseg.cliargs import add_config_args, add_quiet_arg

from .sources import FORMATS


def run_config_data(source: str | Path) -> dict:
    """The `data:` section of run config `source` (a YAML path or a preset name) merged over its `base:` chain by
    the resolver the training loader uses (run_config_layers), so that checking data needs no torch."""
    from nfdseg.config import deep_update, run_config_layers
    from nfdseg.errors import ConfigError

    merged: dict = {}
    for layer in run_config_layers(source):
        merged = deep_update(merged, layer.data)
    data = merged.get("data", {})
    if not isinstance(data, dict):  # the training loader's refusal, word for word (nfdseg.config.from_dict)
        raise ConfigError("'data' must be a mapping", seen=repr(data), fix="write it as `key: value` lines")
    return data


def data_config(args):
    """The DataConfig to check: --config's resolved `data:` section (with --set data.KEY=VALUE), then ROOT,
    --format, --classes on top; a bare ROOT is the folder format."""
    from nfdseg.config import deep_update, from_dict, parse_overrides
    from nfdseg.errors import ConfigError

    from .config import DataConfig

    section = run_config_data(args.config) if args.config else {}
    over = parse_overrides(args.overrides)
    extra = set(over) - {"data"}
    if extra:
        raise ConfigError("--set here takes data.KEY=VALUE only", seen=", ".join(sorted(extra)))
    section = deep_update(section, over.get("data", {}))
    if args.root:
        section["root"] = args.root
        if not args.config:
            section.setdefault("format", "folder")
    if args.format:
        section["format"] = args.format
    if args.classes:  # given on the command line: relative to where the command runs
        section["classes"] = str(Path(args.classes).resolve())
    if not section.get("root"):
        raise ConfigError("no dataset to check", fix="pass the dataset folder (nfdseg data check DIR) or --config RUN.yaml")
    return from_dict(DataConfig, section, where="data")


def cmd_data(args) -> int:
    from nfdseg.fsutil import write_json_atomic

    from .check import check_dataset

    cfg = data_config(args)
    report = check_dataset(cfg, splits=args.split or None, full=args.full, workers=args.workers,
                           progress=not args.quiet and sys.stderr.isatty())
    if args.json == "-":
        print(json.dumps(report.to_dict(), indent=1))
    else:
        print(report.format_text())
        if args.json:
            write_json_atomic(args.json, report.to_dict())
            print(f"wrote {args.json}")
    return 0 if report.ok else 1


def register(sub) -> None:
    p = sub.add_parser(
        "data", help="check a dataset: every bad file, and a summary per split",
        usage="%(prog)s check [ROOT] [--config RUN.yaml] [--set data.KEY=VALUE] [--format FORMAT]\n"
              "                         [--classes FILE] [--split NAME] [--full] [--workers N] [--json PATH] [--quiet]",
        description="check: one pass over the whole dataset that lists every problem with its file (unreadable image "
                    "or mask, image/mask size mismatch, mask ids out of range with the ids seen, images without masks "
                    "and masks without images, empty splits) and summarises each split (images, sizes, pixel share "
                    "per class, classes never present). Images are read by header (a PNG or JPEG whose end marker is "
                    "missing is decoded), masks are decoded. Exit status 0 when clean, 1 when anything is wrong, 2 for a usage error. "
                    "Training runs the same check before it starts.")
    p.add_argument("action", choices=("check",), help="what to do (check)")
    p.add_argument("root", nargs="?", help="dataset folder (folder format unless --format or --config says otherwise)")
    add_config_args(p, default=None, set_example="data.val_split=test",
                    what="its `data:` section, resolved over its `base:` as training resolves it, names the dataset "
                         "(format, root, classes)")
    p.add_argument("--format", choices=tuple(FORMATS), help="dataset format (default folder)")
    p.add_argument("--classes", help="class list file for the folder format (default ROOT/classes.yaml)")
    p.add_argument("--split", action="append", metavar="NAME",
                   help="split to check (repeatable; default the config's train and val splits)")
    p.add_argument("--full", action="store_true", help="decode every image too, not only its header (slower)")
    p.add_argument("--workers", type=int, default=0, help="reader threads (default: CPU count, at most 8)")
    p.add_argument("--json", metavar="PATH", help="also write the report as JSON here ('-': print JSON instead of text)")
    add_quiet_arg(p)
    p.set_defaults(func=cmd_data)
