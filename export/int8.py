"""INT8: a Q/DQ `model.int8.onnx` calibrated on the model's training split, kept only inside the parity budget.

The quantization is onnxruntime's (`quantize_static`, QuantFormat.QDQ, per-channel int8 weights; the graph is
first prepared with `quant_pre_process`); nothing here inserts Q/DQ nodes by hand. Calibration images are the
first `images` of the training split recorded in the checkpoint manifest, as the graph takes them; their names
and pixels are hashed into the manifest.

Each candidate is scored by the caller's `score` (export parity: ΔmIoU against the checkpoint on the
validation images). When the budget breaks, the remedies run in this order, each on top of the previous ones:

1. `keep_ends_float`: the first Conv, and the last Conv with everything after it (the classifier and the
   upsampling of the logits), stay float.
2. `other_calibration_method`: minmax -> percentile, entropy/percentile -> minmax (kept only if it helped).
3. `keep_sensitive_float`: the quantizable consumers of the activations with the lowest signal-to-quantization
   noise ratio (onnxruntime.quantization.qdq_loss_debug, on a few calibration images) stay float too.

The accepted model is renamed to model.int8.onnx and its manifest model.int8.json written last; while the ladder
runs the candidate is a hidden `.model.int8.candidate.onnx`, removed when none holds, so no failed INT8 model
ever looks complete. The fp32/FP16 artifacts are never touched.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np

from nfdseg.artifacts import ONNX_INT8
from nfdseg.errors import ConfigError, DataError, MissingDependencyError
from nfdseg.fsutil import sha256_file
from nfdseg.manifest import Int8Info, Manifest, runtime_versions, write_manifest

log = logging.getLogger(__name__)

CANDIDATE_FILE = ".model.int8.candidate.onnx"
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
ACTIVATION_TYPES = ("uint8", "int8")  # int8: symmetric (zero point 0), what TensorRT takes from Q/DQ
REMEDIES = ("keep_ends_float", "other_calibration_method", "keep_sensitive_float")
MIN_CALIBRATION_IMAGES = 8
SENSITIVITY_IMAGES = 4  # calibration images run through both models to rank activations by quantization noise
_OTHER_METHOD = {"minmax": "percentile", "entropy": "minmax", "percentile": "minmax"}


@dataclass(frozen=True)
class Int8Options:
    """images: calibration images from the training split (at least 8). method: how activation ranges are
    chosen. activation_type: uint8 (asymmetric; onnxruntime's fast CPU path) or int8 (symmetric, zero point 0,
    what a TensorRT INT8 engine needs; biases then stay float, as TensorRT takes them). remedies: tried in this order when the budget breaks (any subset of
    REMEDIES; () disables the ladder). sensitive_fraction: share of quantized nodes keep_sensitive_float keeps."""

    images: int = 64
    method: Literal[CALIBRATION_METHODS] = "minmax"
    activation_type: Literal[ACTIVATION_TYPES] = "uint8"
    remedies: tuple[str, ...] = REMEDIES
    sensitive_fraction: float = 0.1

    def check(self) -> None:
        if self.method not in CALIBRATION_METHODS:
            raise ConfigError(f"unknown INT8 calibration method '{self.method}'", seen=self.method,
                              fix=f"use one of {', '.join(CALIBRATION_METHODS)}")
        if self.activation_type not in ACTIVATION_TYPES:
            raise ConfigError(f"unknown INT8 activation type '{self.activation_type}'",
                              fix=f"use one of {', '.join(ACTIVATION_TYPES)}")
        if self.images < MIN_CALIBRATION_IMAGES:
            raise ConfigError(f"INT8 calibration needs at least {MIN_CALIBRATION_IMAGES} images",
                              seen=f"int8_calib_images {self.images}",
                              fix=f"set int8_calib_images (--int8-calib-images) to {MIN_CALIBRATION_IMAGES} or more "
                                  f"({Int8Options.images} is the default)")
        unknown = [r for r in self.remedies if r not in REMEDIES]
        if unknown:
            raise ConfigError(f"unknown INT8 remedies {unknown}", fix=f"choose from {', '.join(REMEDIES)}")
        if not 0 < self.sensitive_fraction <= 1:
            raise ConfigError("int8 sensitive_fraction must be in (0, 1]", seen=str(self.sensitive_fraction))


@dataclass(frozen=True)
class CalibrationSet:
    """The calibration images as the graph takes them (N, ...) and where they came from."""

    inputs: np.ndarray
    names: tuple[str, ...]
    sha256: str
    split: str


def calibration_set(ckpt: Manifest, onnx_manifest: Manifest, n: int) -> CalibrationSet:
    """The first n images of the checkpoint's training split, preprocessed for the graph. Raises DataError
    when the split is short or an image cannot be read."""
    from nfdseg.config import from_dict
    from nfdseg.data import build_source
    from nfdseg.data.config import DataConfig
    from nfdseg.preprocess import prepare_batch

    data_cfg = from_dict(DataConfig, ckpt.config.get("data", {}))
    source = build_source(data_cfg, "train")
    if len(source) < n:
        raise DataError(f"INT8 calibration asks for {n} images but the training split has only {len(source)}",
                        seen=f"{data_cfg.format} split '{data_cfg.train_split}': {len(source)} images",
                        fix=f"lower int8_calib_images (--int8-calib-images) to at most {len(source)} (at least "
                            f"{MIN_CALIBRATION_IMAGES}), or add training images")
    digest = hashlib.sha256()
    images, names = [], []
    for i in range(n):
        name = source.name(i)
        try:
            img = source.load(i)[0]
        except (DataError, OSError, ValueError) as e:
            raise DataError(f"INT8 calibration image {i} of the training split cannot be read",
                            seen=f"{name}: {getattr(e, 'what', e)}",
                            fix=f"replace or remove the file; `nfdseg data check {data_cfg.root or 'ROOT'} --format "
                                f"{data_cfg.format} --full` lists every bad pair") from None
        digest.update(name.encode() + b"\0" + np.ascontiguousarray(img).tobytes())
        images.append(img)
        names.append(name)
    normalize = bool(onnx_manifest.onnx and onnx_manifest.onnx.normalize_in_graph)
    return CalibrationSet(prepare_batch(images, onnx_manifest.preprocess, normalize), tuple(names),
                          digest.hexdigest(), data_cfg.train_split)


def _quantization():
    try:
        from onnxruntime import quantization
        from onnxruntime.quantization import qdq_loss_debug, shape_inference  # noqa: F401
    except ImportError as e:
        raise MissingDependencyError("INT8 export needs onnxruntime.quantization (and onnx)", seen=str(e),
                                     fix="pip install 'nfdseg[export]'") from None
    return quantization


def _reader(inputs: np.ndarray, input_name: str):
    """A CalibrationDataReader yielding one image per call; `set_range` lets onnxruntime calibrate in strides
    (CalibStridedMinMax), so only a stride's intermediate activations are held in memory at once."""
    q = _quantization()

    class Reader(q.CalibrationDataReader):
        def __init__(self):
            self.i, self.end = 0, len(inputs)

        def __len__(self):
            return len(inputs)

        def set_range(self, start_index: int, end_index: int):
            self.i, self.end = start_index, min(end_index, len(inputs))

        def get_next(self):
            if self.i >= self.end:
                return None
            self.i += 1
            return {input_name: inputs[self.i - 1:self.i]}

        def rewind(self):
            self.i, self.end = 0, len(inputs)

    return Reader()


def calibration_stride(n: int, most: int = 8) -> int:
    """The largest divisor of n up to `most`: onnxruntime's strided calibration needs n divisible by it."""
    return max(d for d in range(1, min(n, most) + 1) if n % d == 0)


def prepare_for_quantization(fp32_path: Path, out_path: Path) -> Path:
    """onnxruntime's pre-processing (shape inference, graph optimisation) that quantize_static expects."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    _quantization()
    quant_pre_process(str(fp32_path), str(out_path), skip_symbolic_shape=False)
    return out_path


def quantize(pre_path: Path, out_path: Path, calib: CalibrationSet, input_name: str, method: str,
             activation_type: str, keep_float: tuple[str, ...] = (), cache: Path | None = None) -> float:
    """One quantize_static run; returns its wall time (s). The activation ranges are measured on the float
    model, so they do not depend on keep_float: with `cache` (one file per method) they are measured once and
    reused by the later attempts of the ladder."""
    q = _quantization()
    methods = {"minmax": q.CalibrationMethod.MinMax, "entropy": q.CalibrationMethod.Entropy,
               "percentile": q.CalibrationMethod.Percentile}
    symmetric = activation_type == "int8"
    # symmetric (the TensorRT flavour): biases stay float, TensorRT's DequantizeLinear takes no int32 input
    extra = {"CalibStridedMinMax": calibration_stride(len(calib.inputs)), "ActivationSymmetric": symmetric,
             "WeightSymmetric": True, "QuantizeBias": not symmetric}
    t0 = time.perf_counter()
    q.quantize_static(str(pre_path), str(out_path), _reader(calib.inputs, input_name),
                      quant_format=q.QuantFormat.QDQ, per_channel=True,
                      activation_type=q.QuantType.QInt8 if symmetric else q.QuantType.QUInt8,
                      weight_type=q.QuantType.QInt8, nodes_to_exclude=list(keep_float),
                      calibrate_method=methods[method], extra_options=extra,
                      calibration_cache_path=str(cache) if cache else None)
    return time.perf_counter() - t0


def end_nodes(pre_path: Path) -> tuple[str, ...]:
    """The first Conv, and the last Conv with every node after it (classifier and logit upsampling)."""
    import onnx

    nodes = list(onnx.load(str(pre_path), load_external_data=False).graph.node)
    convs = [i for i, n in enumerate(nodes) if n.op_type == "Conv"]
    if not convs:
        return ()
    return tuple(dict.fromkeys([nodes[convs[0]].name] + [n.name for n in nodes[convs[-1]:]]))


def sensitive_nodes(pre_path: Path, qdq_path: Path, calib: CalibrationSet, input_name: str, fraction: float,
                    workdir: Path) -> tuple[str, ...]:
    """Consumers of the activations whose quantization adds the most noise (lowest SQNR, measured by
    onnxruntime.quantization.qdq_loss_debug on a few calibration images), about `fraction` of the quantized
    nodes."""
    import onnx
    from onnxruntime.quantization import qdq_loss_debug as dbg

    few = calib.inputs[:SENSITIVITY_IMAGES]
    aug_f, aug_q = workdir / "float.aug.onnx", workdir / "qdq.aug.onnx"
    dbg.modify_model_output_intermediate_tensors(str(pre_path), str(aug_f))
    dbg.modify_model_output_intermediate_tensors(str(qdq_path), str(aug_q))
    matching = dbg.create_activation_matching(dbg.collect_activations(str(aug_q), _reader(few, input_name)),
                                              dbg.collect_activations(str(aug_f), _reader(few, input_name)))
    errors = dbg.compute_activation_error(matching)
    graph = onnx.load(str(pre_path), load_external_data=False).graph
    consumers: dict[str, list[str]] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n.name)
    quantized = {n.name for n in onnx.load(str(qdq_path), load_external_data=False).graph.node}
    ranked = sorted((e["qdq_err"], t) for t, e in errors.items() if np.isfinite(e.get("qdq_err", np.inf)))
    budget = max(1, round(fraction * sum(1 for n in graph.node if n.name in quantized)))
    keep: list[str] = []
    for _, tensor in ranked:
        keep += [c for c in consumers.get(tensor, []) if c not in keep]
        if len(keep) >= budget:
            break
    return tuple(keep)


@dataclass
class Int8Outcome:
    """What the ladder did: passed, the accepted manifest (or None), every attempt, the best failing result."""

    passed: bool
    manifest: Manifest | None
    attempts: list[dict[str, Any]]
    result: dict[str, Any] | None  # the parity result of the accepted (or best rejected) candidate
    calibration: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"passed": self.passed, "artifact": self.manifest.artifact if self.manifest else None,
                "attempts": self.attempts, "calibration": self.calibration}


def remove_int8(out_dir: Path) -> None:
    """Remove an INT8 model and manifest (and candidates) left by an earlier export of this directory."""
    for name in (ONNX_INT8, CANDIDATE_FILE):
        for p in (out_dir / name, (out_dir / name).with_suffix(".json")):
            if p.is_file():
                p.unlink()


def export_int8(fp32_path: Path, fp32_manifest: Manifest, ckpt: Manifest, out_dir: Path, opts: Int8Options,
                score: Callable[[Path], dict[str, Any]]) -> Int8Outcome:
    """Quantize fp32_path, score each candidate with `score(path)` (a parity result holding 'passed' and
    'delta_miou'), climb the remedy ladder until one passes; returns the outcome (see the module doc)."""
    opts.check()
    out_dir = Path(out_dir)
    remove_int8(out_dir)
    calib = calibration_set(ckpt, fp32_manifest, opts.images)
    input_name = fp32_manifest.inputs[0].name
    candidate = out_dir / CANDIDATE_FILE
    calibration = {"split": calib.split, "images": len(calib.names), "sha256": calib.sha256}
    attempts: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    try:
        with tempfile.TemporaryDirectory(prefix="nfdseg-int8-") as tmp:
            pre = prepare_for_quantization(fp32_path, Path(tmp) / "pre.onnx")
            method, keep, used = opts.method, (), []
            for step in ("as_configured", *opts.remedies):
                trial_method, trial_keep = method, keep
                if step == "keep_ends_float":
                    trial_keep = tuple(dict.fromkeys(keep + end_nodes(pre)))
                elif step == "other_calibration_method":
                    trial_method = _OTHER_METHOD[method]
                elif step == "keep_sensitive_float":
                    trial_keep = tuple(dict.fromkeys(keep + sensitive_nodes(
                        pre, candidate, calib, input_name, opts.sensitive_fraction, Path(tmp))))
                seconds = quantize(pre, candidate, calib, input_name, trial_method, opts.activation_type, trial_keep,
                                   cache=Path(tmp) / f"ranges.{trial_method}.json")
                trial_used = used + ([step] if step != "as_configured" else [])
                info = Int8Info(
                    quantizer=f"onnxruntime.quantization {_ort_version()} quantize_static QDQ",
                    calibration_method=trial_method, calibration_images=len(calib.names),
                    calibration_split=calib.split, calibration_sha256=calib.sha256,
                    activation_type=opts.activation_type, weight_type="int8", per_channel=True,
                    calibration_s=round(seconds, 2), remedies_used=tuple(trial_used), nodes_kept_float=trial_keep)
                m = _write_int8_manifest(fp32_path, fp32_manifest, candidate, info)
                res = score(candidate)
                attempt = {"step": step, "method": trial_method, "nodes_kept_float": len(trial_keep),
                           "calibration_s": round(seconds, 2), "miou": res["miou"], "delta_miou": res["delta_miou"],
                           "passed": bool(res["passed"])}
                attempts.append(attempt)
                log.info("int8 %s: method %s, %d node(s) float, ΔmIoU %+.3f -> %s", step, trial_method,
                         len(trial_keep), res["delta_miou"], "ok" if res["passed"] else "over budget")
                improved = best is None or abs(res["delta_miou"]) < abs(best["delta_miou"])
                if improved:
                    best = res
                if res["passed"]:
                    info = replace(info, attempts=tuple(attempts))
                    return Int8Outcome(True, _accept(fp32_path, fp32_manifest, candidate, out_dir, info), attempts,
                                       res, calibration)
                if step != "other_calibration_method" or improved:  # another method is kept only if it helped
                    method, keep, used = trial_method, trial_keep, trial_used
    finally:
        remove_candidate(out_dir)
    log.error("INT8 REFUSED: no quantization held the parity budget (%d attempt(s)); model.int8.onnx not written",
              len(attempts))
    return Int8Outcome(False, None, attempts, best, calibration)


def remove_candidate(out_dir: Path) -> None:
    for p in (out_dir / CANDIDATE_FILE, (out_dir / CANDIDATE_FILE).with_suffix(".json")):
        if p.is_file():
            p.unlink()


def _write_int8_manifest(fp32_path: Path, fp32_manifest: Manifest, path: Path, info: Int8Info) -> Manifest:
    onnx_info = replace(fp32_manifest.onnx, int8=info) if fp32_manifest.onnx else None
    m = replace(fp32_manifest, artifact=path.name, precision="int8", sha256="", created="", parent=fp32_path.name,
                parent_sha256=sha256_file(fp32_path), onnx=onnx_info,
                versions={**fp32_manifest.versions, **runtime_versions("onnxruntime")})
    return write_manifest(m, path.with_suffix(".json"))


def _accept(fp32_path: Path, fp32_manifest: Manifest, candidate: Path, out_dir: Path, info: Int8Info) -> Manifest:
    """Rename the passing candidate to model.int8.onnx, then write its manifest (last: only then is it complete)."""
    final = out_dir / ONNX_INT8
    os.replace(candidate, final)
    return _write_int8_manifest(fp32_path, fp32_manifest, final, info)


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__
