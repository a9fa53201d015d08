"""`nfdseg export` and `nfdseg check`."""

from __future__ import annotations

import logging
from pathlib import Path

from nfdseg.artifacts import (CHECKPOINT, EXPORT_DIR, EXPORT_SUMMARY, ONNX_FP32, PARITY_REPORT, STUDENT_DIR,
                              manifest_path)
from nfdseg.cliargs import add_out_arg

from .int8 import ACTIVATION_TYPES, CALIBRATION_METHODS, MIN_CALIBRATION_IMAGES
from .onnx2engine import ENGINE_MODES, ENGINE_PRECISIONS, EngineProfile
from .onnx_options import MAX_OPSET, MIN_OPSET, OnnxExportOptions
from .parity import ParityBudget
from .run import ExportConfig

log = logging.getLogger(__name__)
# The flags' defaults are the settings' own (ExportConfig and the dataclasses it holds): one source, so
# `nfdseg export`, the pipeline's export: section and run_export() cannot disagree.
DEFAULTS = ExportConfig()


def _export_config(args):
    hws = _profile_hw(args.profile_hw) if args.profile_hw else (None, None, None)
    batches = [int(v) for v in args.profile_batch.split(",")]
    if len(batches) != 3:
        from nfdseg.errors import ConfigError

        raise ConfigError("--profile-batch takes min,opt,max", seen=args.profile_batch, fix="e.g. 1,4,8")
    return ExportConfig(
        onnx=OnnxExportOptions(opset=args.opset, output=args.output, label_dtype=args.label_dtype,
                               normalize_in_graph=args.normalize_in_graph, dynamic_hw=not args.static_hw,
                               simplify=not args.no_simplify),
        fp16=not args.no_fp16, engine=args.engine, engine_precision=args.engine_precision,
        engine_allow_rtx=args.allow_rtx,
        profile=EngineProfile(*batches, min_hw=hws[0], opt_hw=hws[1], max_hw=hws[2]),
        parity=_budget(args), triton_dir=args.triton or "",
        int8=args.int8, int8_calib_images=args.int8_calib_images, int8_calib_method=args.int8_calib_method,
        int8_activations=args.int8_activations,
    )


def _budget(args):
    return ParityBudget(args.fp32_min_agreement, args.fp16_max_delta_miou, args.parity_images,
                        int8_max_delta_miou=args.int8_max_delta_miou)


def _profile_hw(text: str) -> tuple:
    """'HxW' (one size) or 'HxW,HxW,HxW' (min,opt,max) -> three (h, w) tuples."""
    from nfdseg.errors import ConfigError

    try:
        sizes = [tuple(int(v) for v in part.lower().split("x")) for part in text.split(",")]
    except ValueError:
        sizes = []
    if len(sizes) not in (1, 3) or any(len(s) != 2 or min(s) < 1 for s in sizes):
        raise ConfigError("--profile-hw takes HxW or min,opt,max as HxW,HxW,HxW", seen=text,
                          fix="e.g. 512x1024, or 256x512,512x1024,1024x2048")
    return tuple(sizes * 3) if len(sizes) == 1 else tuple(sizes)


def cmd_export(args) -> int:
    from .stage import export_stage, recorded_parity_text

    out = Path(args.out) if args.out else Path(args.checkpoint).resolve().parent / EXPORT_DIR
    r = export_stage(args.checkpoint, out, _export_config(args), force=args.force, expect_classes=args.num_classes)
    summary = r.summary
    if r.state == "up to date":
        print(f"{out} is up to date with {args.checkpoint} and these settings: kept (--force rebuilds it)")
    for name, mb in summary["files"].items():
        print(f"{mb:8.2f} MB  {out / name}")
    eng = summary.get("engine", {})
    if eng and not eng.get("path"):
        print(f"NO TensorRT ENGINE: {eng.get('reason')} - serve model.onnx with onnxruntime, or rebuild where TensorRT is installed")
    if summary.get("triton"):
        print(f"Triton repository: {summary['triton']}")
    print(r.parity_text or recorded_parity_text(out))
    if not summary["parity_passed"]:
        print("export FAILED its parity budget (see parity.json)")
        return 1
    return 0


def cmd_check(args) -> int:
    from nfdseg.fsutil import write_json_atomic

    from .parity import format_report, run_parity

    export_dir = Path(args.export_dir)
    if args.checkpoint:
        ckpt = Path(args.checkpoint)
    else:
        from nfdseg.manifest import read_manifest

        m = read_manifest(manifest_path(export_dir / ONNX_FP32), expect_kind="onnx")
        ckpt = _find_checkpoint(export_dir, m.parent_sha256, m.parent)
    try:
        from .torch2onnx import load_onnx_checked
    except ModuleNotFoundError as e:  # the runtime-only install has onnxruntime but not onnx
        log.warning("%s is not installed: the ONNX checker is skipped (onnxruntime still loads and runs each "
                    "model below); pip install 'nfdseg[export]' to run it", e.name)
    else:
        for p in export_dir.glob("*.onnx"):
            load_onnx_checked(p)
    report = run_parity(export_dir, ckpt, _budget(args), engine_allow_rtx=args.allow_rtx)
    write_json_atomic(export_dir / PARITY_REPORT, report)
    print(format_report(report))
    return 0 if report["passed"] else 1


def _recorded_parents(export_dir: Path, parent: str) -> list[Path]:
    """Where the export says its checkpoint is: the ONNX manifest's parent when it is a path, and the checkpoint
    folder export_summary.json records (an export written with --out elsewhere is found through these)."""
    import json

    found = []
    if parent and Path(parent).is_absolute():
        found.append(Path(parent) if Path(parent).is_dir() else Path(parent).parent)
    try:
        recorded = json.loads((export_dir / EXPORT_SUMMARY).read_text()).get("checkpoint")
    except (OSError, ValueError, AttributeError):
        recorded = None
    if recorded:
        path = Path(recorded)
        found.append(path if path.is_absolute() else (Path.cwd() / path))
    return found


def _find_checkpoint(export_dir: Path, sha: str, parent: str = "") -> Path:
    from nfdseg.errors import ArtifactError
    from nfdseg.fsutil import sha256_file

    for cand in [*_recorded_parents(export_dir, parent), export_dir.parent / STUDENT_DIR, export_dir.parent,
                 *export_dir.parent.glob("*/")]:
        if (cand / CHECKPOINT).is_file() and sha256_file(cand / CHECKPOINT) == sha:
            return cand
    raise ArtifactError(f"cannot find the checkpoint {export_dir} was exported from",
                        seen=f"parent sha256 {sha[:12]}...", fix="pass --checkpoint DIR")


def _parity_args(p) -> None:
    budget = DEFAULTS.parity
    p.add_argument("--fp32-min-agreement", type=float, default=budget.fp32_min_agreement,
                   help=f"fp32 budget: %% of pixels equal to torch (default {budget.fp32_min_agreement})")
    p.add_argument("--fp16-max-delta-miou", type=float, default=budget.fp16_max_delta_miou,
                   help=f"fp16 budget: max |ΔmIoU| in points (default {budget.fp16_max_delta_miou})")
    p.add_argument("--int8-max-delta-miou", type=float, default=budget.int8_max_delta_miou,
                   help=f"int8 budget: max |ΔmIoU| in points (default {budget.int8_max_delta_miou})")
    p.add_argument("--parity-images", type=int, default=budget.max_images,
                   help=f"validation images compared (0 = all; default {budget.max_images})")
    p.add_argument("--allow-rtx", action="store_true", help="let TensorRT-RTX stand in for TensorRT")


def register(sub) -> None:
    p = sub.add_parser("export", help="export a student checkpoint to ONNX, FP16 ONNX, a TensorRT engine; check parity",
                       description="Turn a trained student (a `nfdseg distill` directory) into deployable artifacts, "
                                   "each with a manifest, and prove they match torch (parity.json). Exits 1 when a "
                                   "parity budget is broken.")
    p.add_argument("checkpoint", help="student checkpoint directory (holds best.pt + checkpoint.json)")
    add_out_arg(p, None, "export directory (default: CHECKPOINT/../export); emptied first when it holds an "
                         "earlier export, refused when it holds anything else")
    onnx, prof = DEFAULTS.onnx, DEFAULTS.profile
    p.add_argument("--opset", type=int, default=onnx.opset,
                   help=f"ONNX opset, {MIN_OPSET}-{MAX_OPSET} (default {onnx.opset})")
    p.add_argument("--output", choices=("logits", "probs", "labels"), default=onnx.output,
                   help=f"graph output: logits, softmax probs, or an argmax label map (default {onnx.output})")
    p.add_argument("--label-dtype", choices=("uint8", "int32"), default=onnx.label_dtype,
                   help=f"label map dtype with --output labels (default {onnx.label_dtype})")
    p.add_argument("--normalize-in-graph", action="store_true", help="graph takes uint8 NHWC RGB and normalises itself")
    p.add_argument("--static-hw", action="store_true", help="fix height/width to the training input size")
    p.add_argument("--no-simplify", action="store_true", help="skip onnxslim simplification")
    p.add_argument("--no-fp16", action="store_true", help="skip the FP16 ONNX")
    p.add_argument("--int8", action="store_true",
                   help="also write a Q/DQ INT8 model.int8.onnx calibrated on the training split; it is kept only "
                        "within --int8-max-delta-miou of the checkpoint (remedies are tried in order, see "
                        "docs/deploying.md), else the export fails and keeps the fp32/FP16 models")
    p.add_argument("--int8-calib-images", type=int, default=DEFAULTS.int8_calib_images,
                   help=f"training images used for INT8 calibration (at least {MIN_CALIBRATION_IMAGES}; "
                        f"default {DEFAULTS.int8_calib_images})")
    p.add_argument("--int8-calib-method", choices=CALIBRATION_METHODS, default=DEFAULTS.int8_calib_method,
                   help=f"how INT8 activation ranges are chosen (default {DEFAULTS.int8_calib_method})")
    p.add_argument("--int8-activations", choices=ACTIVATION_TYPES, default=DEFAULTS.int8_activations,
                   help="uint8: asymmetric, fastest on onnxruntime CPUs; int8: symmetric, needed for a TensorRT "
                        f"INT8 engine (--engine-precision int8) (default {DEFAULTS.int8_activations})")
    p.add_argument("--engine", choices=ENGINE_MODES, default=DEFAULTS.engine,
                   help="TensorRT engine: auto = build when TensorRT is installed, on = required, off "
                        f"(default {DEFAULTS.engine})")
    p.add_argument("--engine-precision", choices=ENGINE_PRECISIONS, default=DEFAULTS.engine_precision,
                   help=f"engine precision (default {DEFAULTS.engine_precision})")
    batches = f"{prof.min_batch},{prof.opt_batch},{prof.max_batch}"
    p.add_argument("--profile-batch", default=batches, help=f"engine profile batch min,opt,max (default {batches})")
    p.add_argument("--profile-hw", help="engine profile sizes: HxW, or min,opt,max as HxW,HxW,HxW; the range must "
                                        "contain the model's input size, which the runtime resizes every image to "
                                        "(default: exactly that size)")
    p.add_argument("--triton", metavar="DIR", help="also write a Triton model repository to DIR")
    p.add_argument("--num-classes", type=int, help="refuse the checkpoint unless it has this many classes")
    p.add_argument("--force", action="store_true",
                   help="export again even when OUT already holds this checkpoint's export with these settings")
    _parity_args(p)
    p.set_defaults(func=cmd_export)

    c = sub.add_parser("check", help="re-run the parity check of an export directory",
                       description="Compare the ONNX / FP16 / engine artifacts of an export directory with the torch "
                                   "checkpoint they came from; rewrite parity.json; exit 1 when a budget is broken.")
    c.add_argument("export_dir", help="directory written by `nfdseg export`")
    c.add_argument("--checkpoint", help="checkpoint directory (default: found by the ONNX manifest's parent hash)")
    _parity_args(c)
    c.set_defaults(func=cmd_check)
