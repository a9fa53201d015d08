"""onnx2engine: ONNX -> serialized TensorRT engine + engine.json, for TensorRT 10 and 11 (and TensorRT-RTX).

TensorRT 10: parse the fp32 ONNX, set the FP16 builder flag (if the GPU has fast FP16).
TensorRT 11 / RTX: strongly typed network parsed from the FP16 ONNX (the types are the precision).
The optimisation profile comes from config; the timing cache is loaded, reused and saved; the
builder log is captured to <engine>.log; the manifest records the precision actually built.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

from nfdseg.errors import ArtifactError, ConfigError
from nfdseg.fsutil import sha256_file, write_bytes_atomic, write_text_atomic
from nfdseg.manifest import EngineInfo, Manifest, write_manifest
from nfdseg.trt_compat import current_gpu, import_tensorrt

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineProfile:
    """Batch and (height, width) ranges the engine accepts; opt is what TensorRT tunes for."""

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
        inp = manifest.inputs[0]
        nhwc = inp.layout == "NHWC"
        dims = [(b, h, w, 3) if nhwc else (b, 3, h, w)
                for b, (h, w) in zip((self.min_batch, self.opt_batch, self.max_batch), hws)]
        return {inp.name: tuple(dims)}


class _CapturingLogger:
    """A TensorRT ILogger that keeps every message (the build log) and forwards warnings to logging."""

    def __new__(cls, trt):
        class Impl(trt.ILogger):
            def __init__(self):
                trt.ILogger.__init__(self)
                self.lines: list[str] = []

            def log(self, severity, msg):
                self.lines.append(f"[{severity.name}] {msg}")
                if severity <= trt.ILogger.Severity.WARNING:
                    log.warning("TensorRT: %s", msg)

        return Impl()


def engine_name(manifest: Manifest, precision: str, trt_short: str, sm: str) -> str:
    return f"{manifest.architecture}_{precision}_trt{trt_short}_{sm}.engine"


def onnx2engine(fp32_onnx: Path, fp32_manifest: Manifest, out_dir: Path, precision: str = "fp16",
                fp16_onnx: Path | None = None, profile: EngineProfile = EngineProfile(),
                timing_cache: Path | None = None, workspace_mb: int = 2048, allow_rtx: bool = True) -> Manifest:
    """Build an engine in `out_dir`; return its manifest (also written as <engine>.json)."""
    if precision not in ("fp16", "fp32"):
        raise ConfigError(f"engine precision '{precision}' is not supported", fix="use fp16 or fp32")
    tm = import_tensorrt(allow_rtx)
    trt = tm.module
    gpu = current_gpu()
    logger = _CapturingLogger(trt)
    builder = trt.Builder(logger)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)

    # choose the network source and precision path by API generation
    precision_built, strongly_typed, source = "fp32", False, fp32_onnx
    if tm.strongly_typed_only:
        strongly_typed = True
        if precision == "fp16":
            if fp16_onnx is None or not Path(fp16_onnx).is_file():
                raise ArtifactError(f"TensorRT {tm.version} builds FP16 only from an FP16 ONNX (strongly typed)",
                                    fix="export with FP16 enabled (the default) so model.fp16.onnx exists")
            source, precision_built = Path(fp16_onnx), "fp16"
        flag = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        network = builder.create_network(flag)
    else:
        network = builder.create_network(0)
        if precision == "fp16":
            if getattr(builder, "platform_has_fast_fp16", True):
                config.set_flag(trt.BuilderFlag.FP16)
                precision_built = "fp16"
            else:
                log.warning("FALLBACK: this GPU has no fast FP16; building an fp32 engine")
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(source).read_bytes()):
        errors = "; ".join(str(parser.get_error(i).desc()) for i in range(parser.num_errors))
        raise ArtifactError(f"TensorRT could not parse {source}", seen=errors[:500],
                            fix="check the opset (17-20) and that the ONNX passes `nfdseg check`")
    shapes = profile.shapes(fp32_manifest)
    opt_profile = builder.create_optimization_profile()
    for name, (lo, mid, hi) in shapes.items():
        opt_profile.set_shape(name, lo, mid, hi)
    config.add_optimization_profile(opt_profile)

    cache_reused = False
    if tm.flavor == "tensorrt_rtx":
        timing_cache = None  # TensorRT-RTX treats timing caches as no-ops (it compiles just in time)
    if timing_cache:
        cache_blob = b""
        if Path(timing_cache).is_file():
            cache_blob = Path(timing_cache).read_bytes()
            cache_reused = True
        cache = config.create_timing_cache(cache_blob)
        config.set_timing_cache(cache, ignore_mismatch=False)

    t0 = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - t0
    if serialized is None:
        tail = "\n".join(logger.lines[-10:])
        raise ArtifactError("TensorRT failed to build the engine", seen=tail[-800:],
                            fix="read the build log; try --engine-precision fp32 or a smaller profile")
    sm = gpu.sm if gpu else "nogpu"
    name = engine_name(fp32_manifest, precision_built, tm.short_version, sm)
    out_dir.mkdir(parents=True, exist_ok=True)
    engine_path = out_dir / name
    write_bytes_atomic(engine_path, bytes(serialized))
    if timing_cache:
        write_bytes_atomic(timing_cache, bytes(config.get_timing_cache().serialize()))
    write_text_atomic(engine_path.with_suffix(".log"), "\n".join(logger.lines) + "\n")
    info = EngineInfo(
        tensorrt_version=tm.version, tensorrt_flavor=tm.flavor, gpu_name=gpu.name if gpu else "",
        compute_capability=gpu.compute_capability if gpu else "", precision_requested=precision,
        precision_built=precision_built, strongly_typed=strongly_typed,
        profile={k: [list(s) for s in v] for k, v in shapes.items()},
        timing_cache=str(timing_cache or ""), timing_cache_reused=cache_reused,
    )
    manifest = replace(fp32_manifest, kind="engine", artifact=name, precision=precision_built, engine=info,
                       sha256="", created="", parent=Path(source).name, parent_sha256=sha256_file(source),
                       metrics={**fp32_manifest.metrics, "engine_build_s": round(seconds, 2)},
                       versions={**fp32_manifest.versions, tm.flavor: tm.version})
    log.info("built %s (%s) in %.1fs", name, precision_built, seconds)
    return write_manifest(manifest, engine_path.with_suffix(".json"))
