"""onnx2engine: ONNX -> serialized TensorRT engine + engine.json, for TensorRT 10 and 11 (and TensorRT-RTX).

FP16: on TensorRT 11, TensorRT-RTX and TensorRT >= 10.12 (where the FP16 builder flag is deprecated) a
strongly typed network parsed from the FP16 ONNX (the types are the precision); on older TensorRT 10
the fp32 ONNX with the FP16 builder flag. The optimisation profile comes from config and must contain
the size the runtime resizes to;
INT8: always from the Q/DQ model.int8.onnx (explicit quantization; implicit calibrators are deprecated): strongly
typed on TensorRT 11 and TensorRT-RTX and >= 10.12 (the Q/DQ nodes and types define the precision), the
BuilderFlag.INT8 (with FP16 for the layers left float) on older TensorRT 10; the timing cache is loaded, checked,
reused and saved; the builder log (INFO and up) is kept in <engine>.log; the manifest records the precision and
path actually built. `onnx2engine` reads top to bottom: setup, the network, the build, the deliverables (the file
names are nfdseg/artifacts.py's).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from nfdseg.artifacts import ENGINE_LOG_SUFFIX, ENGINE_SUFFIX, manifest_path
from nfdseg.errors import ArtifactError, ConfigError
from nfdseg.fsutil import sha256_file, write_bytes_atomic, write_text_atomic
from nfdseg.manifest import EngineInfo, Manifest, write_manifest
from nfdseg.serve.backends.trt_compat import current_gpu, fp16_build_path, import_tensorrt

from .onnx_options import MAX_OPSET, MIN_OPSET

log = logging.getLogger(__name__)
MAX_LOG_LINES = 20_000
# Defined once, here (a module that imports no torch, so the CLIs can list them): ExportConfig's Literal fields,
# `nfdseg export` and `nfdseg pipeline` take them from here.
ENGINE_MODES = ("auto", "on", "off")  # auto: build when TensorRT is installed; on: required; off: no engine
ENGINE_PRECISIONS = ("fp16", "fp32", "int8")


@dataclass(frozen=True)
class EngineProfile:
    """Batch and (height, width) ranges the engine accepts; opt is what TensorRT tunes for.

    The runtime always resizes images to the manifest's `preprocess.input_size`, so an (h, w) range
    that excludes it would build an engine nothing could serve: `shapes` refuses that.
    """

    min_batch: int = 1
    opt_batch: int = 4
    max_batch: int = 8
    min_hw: tuple[int, int] | None = None  # None: the manifest's input size
    opt_hw: tuple[int, int] | None = None
    max_hw: tuple[int, int] | None = None

    def shapes(self, manifest: Manifest) -> dict[str, tuple[tuple[int, ...], ...]]:
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise ConfigError("engine profile batches must satisfy 1 <= min <= opt <= max",
                              seen=f"{self.min_batch}/{self.opt_batch}/{self.max_batch}")
        size = tuple(manifest.preprocess.input_size)
        hws = [tuple(v) if v else size for v in (self.min_hw, self.opt_hw, self.max_hw)]
        if not all(hws[0][i] <= hws[1][i] <= hws[2][i] for i in range(2)):
            raise ConfigError("engine profile sizes must satisfy min <= opt <= max in height and width",
                              seen=" / ".join(f"{h}x{w}" for h, w in hws))
        if not all(hws[0][i] <= size[i] <= hws[2][i] for i in range(2)):
            raise ConfigError(
                f"the engine profile ({hws[0][0]}x{hws[0][1]} to {hws[2][0]}x{hws[2][1]}) excludes the model's "
                f"input size {size[0]}x{size[1]}, which the runtime and parity always resize images to",
                seen=f"--profile-hw {hws[1][0]}x{hws[1][1]}, preprocess.input_size {size[0]}x{size[1]}",
                fix=f"drop --profile-hw (or pass {size[0]}x{size[1]}), or train/export with data.input_size "
                    "set to the size you want to serve")
        inp = manifest.inputs[0]
        nhwc = inp.layout == "NHWC"
        dims = [(b, h, w, 3) if nhwc else (b, 3, h, w)
                for b, (h, w) in zip((self.min_batch, self.opt_batch, self.max_batch), hws)]
        return {inp.name: tuple(dims)}


class _CapturingLogger:
    """A TensorRT ILogger that keeps the build log (INFO and up, bounded) and forwards warnings to logging.

    TensorRT calls a Python ILogger for every message, VERBOSE included (the built-in trt.Logger filters in
    C++, a subclass cannot): VERBOSE is dropped on arrival so a build does not pile up thousands of lines.
    """

    def __new__(cls, trt, keep_verbose: bool = False):
        verbose = trt.ILogger.Severity.VERBOSE

        class Impl(trt.ILogger):
            def __init__(self):
                trt.ILogger.__init__(self)
                self.lines: list[str] = []
                self.dropped = 0

            def log(self, severity, msg):
                if severity == verbose and not keep_verbose:
                    return
                if len(self.lines) < MAX_LOG_LINES:
                    self.lines.append(f"[{severity.name}] {msg}")
                else:
                    self.dropped += 1
                if severity <= trt.ILogger.Severity.WARNING:
                    log.warning("TensorRT: %s", msg)

        return Impl()


def engine_name(manifest: Manifest, precision: str, trt_short: str, sm: str) -> str:
    return f"{manifest.architecture}_{precision}_trt{trt_short}_{sm}{ENGINE_SUFFIX}"


def attach_timing_cache(config, path: Path | None, flavor: str) -> tuple[object | None, str]:
    """Attach the timing cache at `path` (or a new one) to a builder config.

    Returns (cache or None, state) with state one of "off" (no path, or TensorRT-RTX, whose timing caches
    are no-ops), "new", "reused", or "discarded: ..." when TensorRT refused the saved cache (another GPU or
    TensorRT version: set_timing_cache returns False with ignore_mismatch=False) and a new one was started.
    """
    if not path or flavor == "tensorrt_rtx":
        return None, "off"
    blob = Path(path).read_bytes() if Path(path).is_file() else b""
    cache = config.create_timing_cache(blob)
    if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
        return cache, "reused" if blob else "new"
    reason = f"discarded: TensorRT refused {path} (made on another GPU or TensorRT version); a new cache was started"
    log.warning("TIMING CACHE %s", reason)
    cache = config.create_timing_cache(b"")
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        log.warning("TensorRT would not attach even an empty timing cache: building without one")
        return None, reason + "; building without a cache"
    return cache, reason


def serialized_timing_cache(config) -> bytes | None:
    """The builder config's timing cache as bytes, or None (logged) when TensorRT has none to give."""
    cache = config.get_timing_cache()
    if cache is None:
        log.warning("TensorRT returned no timing cache after the build: the cache file is not updated")
        return None
    data = cache.serialize()
    return bytes(data) if data is not None else None


def int8_build(trt, tm, config, int8_onnx: Path | None) -> tuple[Path, str, str, bool]:
    """(source, path taken, precision built, strongly typed) for an INT8 engine from the Q/DQ ONNX."""
    if int8_onnx is None or not Path(int8_onnx).is_file():
        raise ArtifactError("an INT8 engine is built from the Q/DQ model.int8.onnx, which is not there",
                            seen=str(int8_onnx or "no INT8 ONNX given"),
                            fix="export with --int8 --int8-activations int8 (and pass its parity budget)")
    if tm.fp16_flag_deprecated:  # TensorRT 11, TensorRT-RTX, TensorRT >= 10.12: the types are the precision
        return Path(int8_onnx), "int8_strongly_typed", "int8", True
    config.set_flag(trt.BuilderFlag.INT8)
    config.set_flag(trt.BuilderFlag.FP16)  # the layers kept float may run in FP16
    return Path(int8_onnx), "int8_builder_flag", "int8", False


@dataclass
class _Build:
    """The TensorRT objects one build goes through: the logger that keeps its log, the builder and its config."""

    trt: Any
    logger: Any
    builder: Any
    config: Any


@dataclass(frozen=True)
class _Source:
    """What the network is parsed from and how it gets its precision: the ONNX file, the path taken ("" for fp32,
    "strongly_typed", "builder_flag", "fallback_fp32", "int8_strongly_typed", "int8_builder_flag"), the precision
    that path builds, and whether the network is strongly typed (its types are the precision)."""

    path: Path
    fp16_path: str
    precision_built: str
    strongly_typed: bool


def _start_build(trt, workspace_mb: int) -> _Build:
    """A builder whose log is captured, and a builder config with the workspace limit."""
    logger = _CapturingLogger(trt)
    builder = trt.Builder(logger)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    return _Build(trt, logger, builder, config)


def _choose_source(tm, b: _Build, precision: str, fp32_onnx: Path, fp16_onnx: Path | None,
                   int8_onnx: Path | None) -> _Source:
    """The network source and precision path by TensorRT generation (the module docstring); sets the builder
    flags the path needs."""
    strongly_typed = tm.strongly_typed_only
    if precision == "int8":
        source, fp16_path, built, strongly_typed = int8_build(b.trt, tm, b.config, int8_onnx)
        return _Source(source, fp16_path, built, strongly_typed)
    if precision != "fp16":
        return _Source(Path(fp32_onnx), "", "fp32", strongly_typed)
    fp16_path = fp16_build_path(tm, fp16_onnx is not None and Path(fp16_onnx).is_file())
    if fp16_path == "strongly_typed":
        return _Source(Path(fp16_onnx), fp16_path, "fp16", True)
    if getattr(b.builder, "platform_has_fast_fp16", True):
        b.config.set_flag(b.trt.BuilderFlag.FP16)
        return _Source(Path(fp32_onnx), fp16_path, "fp16", strongly_typed)
    log.warning("FALLBACK: this GPU has no fast FP16; building an fp32 engine (recorded in the manifest)")
    return _Source(Path(fp32_onnx), "fallback_fp32", "fp32", strongly_typed)


def _parse_network(b: _Build, src: _Source, shapes: dict[str, tuple[tuple[int, ...], ...]]):
    """The network parsed from the source ONNX, and the optimisation profile added to the config."""
    trt = b.trt
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if src.strongly_typed else 0
    network = b.builder.create_network(flags)
    parser = trt.OnnxParser(network, b.logger)
    if not parser.parse(src.path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i).desc()) for i in range(parser.num_errors))
        raise ArtifactError(f"TensorRT could not parse {src.path}", seen=errors[:500],
                            fix=f"check the opset ({MIN_OPSET}-{MAX_OPSET}) and that the ONNX passes `nfdseg check`")
    opt_profile = b.builder.create_optimization_profile()
    for name, (lo, mid, hi) in shapes.items():
        opt_profile.set_shape(name, lo, mid, hi)
    b.config.add_optimization_profile(opt_profile)
    return network


def _build_serialized(b: _Build, network) -> tuple[bytes, float]:
    """The serialized engine and the seconds the build took; a failed build raises with the log's tail."""
    t0 = time.perf_counter()
    serialized = b.builder.build_serialized_network(network, b.config)
    seconds = time.perf_counter() - t0
    if serialized is None:
        tail = "\n".join(b.logger.lines[-10:])
        raise ArtifactError("TensorRT failed to build the engine", seen=tail[-800:],
                            fix="read the build log; try --engine-precision fp32 or a smaller profile")
    return serialized, seconds


def _engine_manifest(fp32_manifest: Manifest, tm, gpu, src: _Source, precision: str, name: str,
                     shapes: dict, timing_cache: Path | None, cache_attached: bool, cache_state: str,
                     seconds: float, log_lines_dropped: int) -> Manifest:
    """The engine's manifest (written beside it as <engine>.json): what was asked, what was built, on what."""
    info = EngineInfo(
        tensorrt_version=tm.version, tensorrt_flavor=tm.flavor, gpu_name=gpu.name if gpu else "",
        compute_capability=gpu.compute_capability if gpu else "", precision_requested=precision,
        precision_built=src.precision_built, strongly_typed=src.strongly_typed,
        profile={k: [list(s) for s in v] for k, v in shapes.items()},
        timing_cache=str(timing_cache or "") if cache_attached else "", timing_cache_reused=cache_state == "reused",
    )
    return replace(fp32_manifest, kind="engine", artifact=name, precision=src.precision_built, engine=info,
                   sha256="", created="", parent=src.path.name, parent_sha256=sha256_file(src.path),
                   metrics={**fp32_manifest.metrics, "engine_build_s": round(seconds, 2)},
                   config={**fp32_manifest.config, "engine_build": {
                       "fp16_path": src.fp16_path, "timing_cache": cache_state,
                       "log_lines_dropped": log_lines_dropped}},
                   versions={**fp32_manifest.versions, tm.flavor: tm.version})


def _write_engine(out_dir: Path, name: str, serialized: bytes, log_lines: list[str], manifest: Manifest,
                  timing_cache: Path | None, cache_blob: bytes | None) -> Manifest:
    """The engine, its build log and its manifest, then the timing cache: all written only after the build."""
    out_dir.mkdir(parents=True, exist_ok=True)
    engine_path = out_dir / name
    write_bytes_atomic(engine_path, bytes(serialized))
    write_text_atomic(engine_path.with_suffix(ENGINE_LOG_SUFFIX), "\n".join(log_lines) + "\n")
    manifest = write_manifest(manifest, manifest_path(engine_path))
    if cache_blob is not None:
        write_bytes_atomic(Path(timing_cache), cache_blob)
    return manifest


def onnx2engine(fp32_onnx: Path, fp32_manifest: Manifest, out_dir: Path, precision: str = "fp16",
                fp16_onnx: Path | None = None, profile: EngineProfile = EngineProfile(),
                timing_cache: Path | None = None, workspace_mb: int = 2048, allow_rtx: bool = True,
                int8_onnx: Path | None = None) -> Manifest:
    """Build an engine in `out_dir`; return its manifest (also written as <engine>.json).

    Nothing is written until the build has succeeded and its timing cache is in hand, so a failure
    leaves no engine without a manifest.
    """
    if precision not in ENGINE_PRECISIONS:
        raise ConfigError(f"engine precision '{precision}' is not supported",
                          fix=f"use {' or '.join(ENGINE_PRECISIONS)}")
    shapes = profile.shapes(fp32_manifest)  # refuse a profile the runtime could never use before any work

    # --- setup: TensorRT, the GPU, a builder that keeps its log
    tm = import_tensorrt(allow_rtx)
    gpu = current_gpu()
    b = _start_build(tm.module, workspace_mb)

    # --- the network: its source and precision path by API generation, parsed, with the profile
    src = _choose_source(tm, b, precision, fp32_onnx, fp16_onnx, int8_onnx)
    network = _parse_network(b, src, shapes)
    cache, cache_state = attach_timing_cache(b.config, timing_cache, tm.flavor)

    # --- build, then take the timing cache
    serialized, seconds = _build_serialized(b, network)
    cache_blob = serialized_timing_cache(b.config) if cache is not None else None
    if cache is not None and cache_blob is None:
        cache_state += "; not saved (TensorRT returned no cache)"

    # --- deliverables: the engine, its log, its manifest, the timing cache
    name = engine_name(fp32_manifest, src.precision_built, tm.short_version, gpu.sm if gpu else "nogpu")
    manifest = _engine_manifest(fp32_manifest, tm, gpu, src, precision, name, shapes, timing_cache,
                                cache is not None, cache_state, seconds, b.logger.dropped)
    manifest = _write_engine(out_dir, name, serialized, b.logger.lines, manifest, timing_cache, cache_blob)
    log.info("built %s (%s, %s) in %.1fs; timing cache: %s", name, src.precision_built, src.fp16_path or "fp32",
             seconds, cache_state)
    return manifest
