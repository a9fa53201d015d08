"""`run_export`: checkpoint directory -> export directory (the whole export stage in one call)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from nfdseg.artifacts import (CHECKPOINT_MANIFEST, EXPORT_SUMMARY, ONNX_FP16, ONNX_FP32, ONNX_INT8, PARITY_REPORT,
                              TIMING_CACHE, manifest_path)
from nfdseg.errors import ArtifactError, BrokenDependencyError, ConfigError, MissingDependencyError
from nfdseg.fsutil import sha256_file, write_json_atomic
from nfdseg.manifest import read_manifest

from .int8 import ACTIVATION_TYPES, CALIBRATION_METHODS, Int8Options
from .onnx2engine import ENGINE_MODES, ENGINE_PRECISIONS, EngineProfile
from .parity import ParityBudget
from .onnx_options import OnnxExportOptions

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportConfig:
    """engine: auto (build when TensorRT is installed) | on (fail without TensorRT) | off.
    engine_allow_rtx: let TensorRT-RTX stand in for TensorRT (tests and RTX deployments).
    int8: also write a Q/DQ model.int8.onnx (export/int8.py), calibrated on int8_calib_images images of the
    training split with int8_calib_method, kept only within parity.int8_max_delta_miou of the checkpoint;
    int8_activations int8 (symmetric) is what a TensorRT INT8 engine (engine_precision int8) needs."""

    onnx: OnnxExportOptions = field(default_factory=OnnxExportOptions)
    fp16: bool = True
    engine: Literal[ENGINE_MODES] = "auto"
    engine_precision: Literal[ENGINE_PRECISIONS] = "fp16"
    engine_allow_rtx: bool = False
    profile: EngineProfile = field(default_factory=EngineProfile)
    parity: ParityBudget = field(default_factory=ParityBudget)
    fp16_calibration_images: int = 4  # validation images scanned for activations beyond the float16 range (0: off)
    int8: bool = False
    # the INT8 settings' defaults are Int8Options's (export/int8.py), which these fields are handed to
    int8_calib_images: int = Int8Options.images
    int8_calib_method: Literal[CALIBRATION_METHODS] = Int8Options.method
    int8_activations: Literal[ACTIVATION_TYPES] = Int8Options.activation_type
    int8_remedies: tuple[str, ...] = Int8Options.remedies  # tried in this order when the budget breaks; () = none

    def int8_options(self) -> Int8Options:
        return Int8Options(images=self.int8_calib_images, method=self.int8_calib_method,
                           activation_type=self.int8_activations, remedies=tuple(self.int8_remedies))
    triton_dir: str = ""
    triton_name: str = "nfdseg"


def _calibration(ckpt, onnx_m, n: int):
    """The first n validation images as the ONNX graph takes them, or None (logged) when they cannot be read."""
    from nfdseg.errors import NfdsegError
    from nfdseg.preprocess import prepare_batch

    from .parity import validation_images

    if n <= 0:
        return None
    try:
        imgs = validation_images(ckpt, n)[0]
    except (NfdsegError, OSError) as e:
        log.warning("FP16 overflow scan NOT RUN: the validation images cannot be read (%s)", getattr(e, "what", e))
        return None
    return prepare_batch(imgs, onnx_m.preprocess, bool(onnx_m.onnx and onnx_m.onnx.normalize_in_graph))


def _non_finite(onnx_path: Path, x) -> bool:
    import numpy as np
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return not all(np.isfinite(sess.run(None, {name: x[k:k + 1]})[0]).all() for k in range(len(x)))


def _fp16_with_overflow_guard(fp32_path: Path, onnx_m, fp16_path: Path, ckpt, n_images: int) -> dict[str, Any]:
    """FP16 twin with the nodes whose values leave the float16 range kept in float32; if its outputs are still
    non-finite on the calibration images, everything after the first overflowing op is kept in float32 too.
    Parity (run after this) rechecks the result on the whole validation split. Returns what was done."""
    from .fp16 import convert_to_fp16

    x = _calibration(ckpt, onnx_m, n_images)
    m = convert_to_fp16(fp32_path, onnx_m, fp16_path, calibration=x)
    info = {"calibration_images": 0 if x is None else len(x), "kept_fp32_nodes": len(m.onnx.kept_fp32_nodes),
            "first_overflow": m.onnx.fp16_overflow.get("first"), "downstream": False}
    if x is not None and _non_finite(fp16_path, x):
        log.warning("FP16 outputs are non-finite with the overflowing nodes in float32: keeping everything after "
                    "the first overflowing op (%s) in float32 and converting again", info["first_overflow"])
        m = convert_to_fp16(fp32_path, onnx_m, fp16_path, calibration=x, keep_downstream=True)
        info.update(kept_fp32_nodes=len(m.onnx.kept_fp32_nodes), downstream=True,
                    still_non_finite=_non_finite(fp16_path, x))
    return info


def _check_int8_request(cfg: ExportConfig) -> None:
    """Refuse, before any work, INT8 settings that cannot be honoured."""
    if cfg.int8:
        cfg.int8_options().check()
    if cfg.engine_precision == "int8" and cfg.engine != "off":
        if not cfg.int8:
            raise ConfigError("an INT8 engine is built from the INT8 Q/DQ model, which this export does not make",
                              seen="engine_precision int8 without int8", fix="add --int8 (int8: true)")
        if cfg.int8_activations != "int8":
            raise ConfigError("a TensorRT INT8 engine needs symmetric int8 activations (zero point 0) in the Q/DQ "
                              "model", seen=f"int8_activations {cfg.int8_activations}",
                              fix="add --int8-activations int8 (onnxruntime on CPUs is fastest with uint8: export "
                                  "the CPU model separately)")


def _int8_stage(out: Path, onnx_m, ckpt, cfg: ExportConfig, reference, summary: dict[str, Any]):
    """None when INT8 is off."""
    """The INT8 model and its remedies ladder (export/int8.py), each candidate scored by parity."""
    from .int8 import export_int8, remove_int8
    from .parity import judge, score_backend

    if not cfg.int8:
        remove_int8(out)  # a model.int8.onnx of an earlier export would not match this model
        return None

    def score(path: Path) -> dict[str, Any]:
        from nfdseg.serve.backends import open_backend

        return score_backend(open_backend(path, "onnxruntime", device="cpu"), path.name, reference, cfg.parity)

    t0 = time.perf_counter()
    outcome = export_int8(out / ONNX_FP32, onnx_m, ckpt, out, cfg.int8_options(), score)
    summary["int8"] = outcome.to_json() | {"seconds": round(time.perf_counter() - t0, 2)}
    if outcome.passed:
        summary["files"][ONNX_INT8] = round((out / ONNX_INT8).stat().st_size / 1e6, 3)
    return outcome


def _int8_verdict(report: dict[str, Any], int8, reference) -> None:
    """A refused INT8 model fails the export: its best attempt's rule and per-class table go in the report."""
    from .parity import failure_entry

    if int8 is None:
        return
    report["int8"] = int8.to_json()
    if not int8.passed:
        res = dict(int8.result or {}, artifact=f"{ONNX_INT8} (refused: best of {len(int8.attempts)} attempt(s))")
        if int8.result:
            report["failures"].append(failure_entry(res, reference.result))
        report["passed"] = False


def check_export_inputs(ckpt, cfg: ExportConfig) -> None:
    """Everything that can be checked before an export writes anything: the checkpoint's recorded data is where
    it was (parity reads its validation split, INT8 calibration its training split) and holds enough images.
    Raises DataError naming the folder that moved."""
    from nfdseg.config import from_dict
    from nfdseg.data import build_source
    from nfdseg.data.config import DataConfig
    from nfdseg.errors import DataError, NfdsegError

    data_cfg = from_dict(DataConfig, ckpt.config.get("data", {}))
    splits = [("val", "parity")] + ([("train", "INT8 calibration")] if cfg.int8 else [])
    for split, why in splits:
        try:
            n = len(build_source(data_cfg, split))
        except (NfdsegError, OSError) as e:
            raise DataError(f"the checkpoint's {split} data cannot be read, and the export needs it for {why}",
                            seen=f"{data_cfg.format} data recorded at {getattr(data_cfg, 'root', '?')}: "
                                 f"{getattr(e, 'what', e)}",
                            fix="put the dataset back where the checkpoint recorded it (or symlink it there); "
                                "nothing was written") from None
        if split == "train" and n < cfg.int8_calib_images:
            raise DataError(f"INT8 calibration asks for {cfg.int8_calib_images} images but the training split has "
                            f"only {n}", seen=f"{data_cfg.format} split '{data_cfg.train_split}': {n} images",
                            fix=f"lower --int8-calib-images to at most {n}, or add training images; nothing was "
                                "written")


def run_export(ckpt_dir: str | Path, out_dir: str | Path, cfg: ExportConfig = ExportConfig(),
               expect_classes: int | None = None) -> dict[str, Any]:
    """Export the student in ckpt_dir to out_dir; returns a summary (paths, sizes, parity verdict)."""
    from nfdseg.config import check_choices
    from nfdseg.models.checkpoint import load_model_from_dir

    from .onnx2engine import onnx2engine
    from .parity import build_reference, format_report, run_parity
    from .torch2onnx import file_mb, torch2onnx
    from .triton import write_triton_repository

    check_choices(cfg)  # Literal fields of a config built in code (engine, engine_precision)
    _check_int8_request(cfg)
    ckpt_dir, out = Path(ckpt_dir), Path(out_dir)
    if ckpt_dir.is_file():
        ckpt_dir = ckpt_dir.parent
    if not (ckpt_dir / CHECKPOINT_MANIFEST).is_file():
        raise ArtifactError(f"{ckpt_dir} is not an nfdseg checkpoint directory (no checkpoint.json)",
                            fix="pass the directory `nfdseg distill` wrote, e.g. runs/quick/student")
    model, ckpt = load_model_from_dir(ckpt_dir)
    if expect_classes is not None and expect_classes != ckpt.num_classes:
        raise ArtifactError(f"--num-classes {expect_classes} disagrees with the checkpoint's {ckpt.num_classes} classes",
                            seen=", ".join(ckpt.classes.names[:10]), fix="drop --num-classes or export the right checkpoint")
    check_export_inputs(ckpt, cfg)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    summary: dict[str, Any] = {"checkpoint": str(ckpt_dir.resolve()), "out": str(out), "files": {}}
    onnx_m = torch2onnx(model, ckpt, sha256_file(ckpt_dir / ckpt.artifact), out / ONNX_FP32, cfg.onnx)
    summary["files"][ONNX_FP32] = file_mb(out / ONNX_FP32)
    fp16_path = None
    if cfg.fp16:
        fp16_path = out / ONNX_FP16
        summary["fp16"] = _fp16_with_overflow_guard(out / ONNX_FP32, onnx_m, fp16_path, ckpt,
                                                    cfg.fp16_calibration_images)
        summary["files"][ONNX_FP16] = file_mb(fp16_path)
    reference = build_reference(out, ckpt_dir, cfg.parity)
    int8 = _int8_stage(out, onnx_m, ckpt, cfg, reference, summary)
    engine_path, engine_m = None, None
    int8_ok = int8 is not None and int8.passed
    if cfg.engine_precision == "int8" and cfg.engine != "off" and not int8_ok:
        summary["engine"] = {"path": None, "reason": "the INT8 model was refused by its parity budget"}
    elif cfg.engine != "off":
        try:
            engine_m = onnx2engine(out / ONNX_FP32, onnx_m, out, cfg.engine_precision, fp16_path, cfg.profile,
                                   timing_cache=out / TIMING_CACHE, allow_rtx=cfg.engine_allow_rtx,
                                   int8_onnx=out / ONNX_INT8 if int8_ok else None)
            engine_path = out / engine_m.artifact
            summary["files"][engine_m.artifact] = file_mb(engine_path)
            summary["engine"] = {"path": str(engine_path), "precision_built": engine_m.precision}
        except MissingDependencyError as e:
            if cfg.engine == "on" or isinstance(e, BrokenDependencyError):  # installed but broken: never skipped
                raise
            summary["engine"] = {"path": None, "reason": e.what}
            log.warning("NO ENGINE BUILT: %s. Deploy model.onnx / model.fp16.onnx with onnxruntime, or rebuild "
                        "on a machine with TensorRT: nfdseg export %s --engine on", e.what, ckpt_dir)
    summary["export_time_s"] = round(time.perf_counter() - t0, 2)
    report = run_parity(out, ckpt_dir, cfg.parity, engine_allow_rtx=cfg.engine_allow_rtx, reference=reference)
    _int8_verdict(report, int8, reference)
    write_json_atomic(out / PARITY_REPORT, report)
    summary["parity"] = {"passed": report["passed"], "text": format_report(report)}
    if cfg.triton_dir:
        repo = Path(cfg.triton_dir)
        write_triton_repository(repo, out / ONNX_FP32, read_manifest(manifest_path(out / ONNX_FP32)), engine_path, engine_m,
                                name=cfg.triton_name, max_batch=cfg.profile.max_batch)
        summary["triton"] = str(repo)
    write_json_atomic(out / EXPORT_SUMMARY, {k: v for k, v in summary.items() if k != "parity"}
                      | {"parity_passed": report["passed"]})
    return summary
