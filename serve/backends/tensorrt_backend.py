"""TensorRT backend (TensorRT 10 and 11 runtime API): tensors by name, set_input_shape for dynamic
shapes, execute_async_v3 on a CUDA stream, pinned host buffers, through cuda-python.

The engine's manifest is checked first: an engine built for another GPU architecture or TensorRT
release is refused with a clear error before TensorRT is asked to deserialize it; a TensorRT-RTX
engine is then also asked to the runtime's own validity check. One execution context, stream and
buffer set serve all callers, so `infer` holds a lock: threads may call it at once (the micro-batcher
is how concurrent requests share the GPU efficiently).
"""

from __future__ import annotations

import ctypes
import logging
import threading
from pathlib import Path

import numpy as np

from nfdseg.errors import ArtifactError, EngineNotRunnableHere, InputError
from nfdseg.manifest import Manifest
from nfdseg.serve.backends.trt_compat import (GpuInfo, TrtModule, cuda_check, cuda_device_index, cuda_runtime,
                                              current_gpu, engine_version_problem, import_tensorrt, tensorrt_pip_spec)

from .base import Backend

log = logging.getLogger(__name__)


def check_engine_compatible(manifest: Manifest, tm: TrtModule, gpu: GpuInfo | None,
                            runtime_checks_gpu: bool = False) -> list[str]:
    """Refuse (EngineNotRunnableHere) an engine whose TensorRT flavor or release (major.minor.patch, as TensorRT
    itself compares) or GPU compute capability differs from this machine's. Returns warnings: another build of the same
    release, another GPU model of the same compute capability. `runtime_checks_gpu`: the runtime has its
    own validity check (TensorRT-RTX), which then decides about the GPU instead of the compute capability."""
    info = manifest.engine
    if info is None:
        raise ArtifactError("the manifest describes no TensorRT engine", fix="pass the .json beside a .engine file")
    refusal, warning = engine_version_problem(info.tensorrt_version, tm.version)
    if info.tensorrt_flavor != tm.flavor or refusal:
        raise EngineNotRunnableHere(
            f"engine {manifest.artifact} was built with {info.tensorrt_flavor} {info.tensorrt_version}; "
            f"this machine has {tm.flavor} {tm.version}",
            fix="TensorRT loads only engines of its own release: rebuild the engine here "
                "(`nfdseg export CHECKPOINT --engine on`), or install that exact release "
                f"(`pip install '{tensorrt_pip_spec(12, exact=info.tensorrt_version)}'` on a CUDA 12 driver, "
                "-cu13 on CUDA 13; a looser range picks another release, which cannot load it)",
        )
    warnings = [warning] if warning else []
    if gpu is None:
        raise EngineNotRunnableHere("a TensorRT engine needs a CUDA GPU and none is visible",
                            fix="run on the GPU machine, or serve the ONNX with --backend onnxruntime")
    if info.compute_capability and info.compute_capability != gpu.compute_capability and not runtime_checks_gpu:
        raise EngineNotRunnableHere(
            f"engine {manifest.artifact} was built for compute capability {info.compute_capability} "
            f"({info.gpu_name}); this GPU is {gpu.name} ({gpu.compute_capability})",
            fix="TensorRT engines are not portable across GPU architectures: rebuild it on this GPU",
        )
    if info.gpu_name and info.gpu_name != gpu.name and info.compute_capability == gpu.compute_capability:
        warnings.append(f"engine built on {info.gpu_name}, running on {gpu.name} (same compute capability "
                        f"{gpu.compute_capability}; TensorRT allows it, but tactics were timed on the other GPU: "
                        "rebuild here for best speed)")
    for w in warnings:
        log.warning("engine %s: %s", manifest.artifact, w)
    return warnings


def check_engine_validity(runtime, blob: bytes, trt, name: str) -> str:
    """TensorRT-RTX's own check (`Runtime.get_engine_validity`); "" when valid or the API is absent,
    a warning when suboptimal, EngineNotRunnableHere when invalid."""
    if not hasattr(runtime, "get_engine_validity"):
        return ""
    validity, diagnostics = runtime.get_engine_validity(blob)
    if validity == trt.EngineValidity.INVALID:
        raise EngineNotRunnableHere(f"TensorRT says engine {name} cannot run here", seen=str(diagnostics),
                            fix="rebuild the engine on this machine with this TensorRT")
    if validity == trt.EngineValidity.SUBOPTIMAL:
        msg = f"TensorRT says engine {name} runs here suboptimally ({diagnostics}): rebuild it here for best speed"
        log.warning(msg)
        return msg
    return ""


class TensorRTBackend(Backend):
    name = "tensorrt"

    def __init__(self, path: Path, manifest: Manifest, allow_rtx: bool = False, device: str = "auto"):
        super().__init__(path, manifest)
        self._buffers: dict[str, tuple[int, int, int]] = {}  # name -> (device ptr, pinned host ptr, nbytes)
        self.stream = None
        self.index = cuda_device_index(device)
        tm = import_tensorrt(allow_rtx)
        trt = tm.module
        blob = path.read_bytes()
        gpu = current_gpu(self.index)
        runtime_checks = tm.flavor == "tensorrt_rtx" and hasattr(trt.Runtime, "get_engine_validity")
        self.warnings = check_engine_compatible(manifest, tm, gpu, runtime_checks_gpu=runtime_checks)
        self.trt, self.cudart = trt, cuda_runtime()
        cuda_check(self.cudart, self.cudart.cudaSetDevice(self.index), f"cudaSetDevice({self.index})")
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        if runtime_checks:
            self.warnings += [w for w in [check_engine_validity(self.runtime, blob, trt, path.name)] if w]
        self.engine = self.runtime.deserialize_cuda_engine(blob)
        if self.engine is None:
            raise ArtifactError(f"TensorRT could not deserialize {path}", fix="rebuild the engine on this machine")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.in_name = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self.out_name = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
        lo, _, hi = self.engine.get_tensor_profile_shape(self.in_name, 0)
        self.min_shape, self.max_shape = tuple(lo), tuple(hi)
        self.max_batch = int(hi[0])
        self.in_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(self.in_name)))
        self.out_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(self.out_name)))
        self.stream = cuda_check(self.cudart, self.cudart.cudaStreamCreate(), "cudaStreamCreate")
        self._lock = threading.Lock()
        self.device = f"cuda:{self.index}"
        self.precision = manifest.engine.precision_built

    def _buffer(self, name: str, nbytes: int) -> tuple[int, int]:
        cur = self._buffers.get(name)
        if cur is None or cur[2] < nbytes:
            if cur is not None:
                self._free(self._buffers.pop(name))
            dev = cuda_check(self.cudart, self.cudart.cudaMalloc(nbytes), f"cudaMalloc({nbytes})")
            host = cuda_check(self.cudart, self.cudart.cudaMallocHost(nbytes), f"cudaMallocHost({nbytes})")
            self._buffers[name] = cur = (int(dev), int(host), nbytes)
        return cur[0], cur[1]

    def _free(self, buf: tuple[int, int, int]) -> None:
        dev, host, _ = buf
        cuda_check(self.cudart, self.cudart.cudaFree(dev), "cudaFree")
        cuda_check(self.cudart, self.cudart.cudaFreeHost(host), "cudaFreeHost")

    def infer(self, batch: np.ndarray) -> np.ndarray:
        shape = tuple(batch.shape)
        if len(shape) != len(self.min_shape) or any(
                s < lo or s > hi for s, lo, hi in zip(shape, self.min_shape, self.max_shape)):
            raise InputError(f"input shape {shape} is outside the engine's profile",
                             seen=f"min {self.min_shape}, max {self.max_shape}",
                             fix="resize to a size inside the profile, or rebuild the engine with a wider profile")
        batch = np.ascontiguousarray(batch, dtype=self.in_dtype)
        with self._lock:
            return self._infer_locked(batch, shape)

    def _infer_locked(self, batch: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        cudart, kind = self.cudart, self.cudart.cudaMemcpyKind
        cuda_check(cudart, cudart.cudaSetDevice(self.index), "cudaSetDevice")  # the current device is per thread
        if not self.context.set_input_shape(self.in_name, shape):
            raise InputError(f"TensorRT refused input shape {shape}", seen=f"profile {self.min_shape}..{self.max_shape}",
                             fix="resize to a size inside the engine's profile")
        out_shape = tuple(self.context.get_tensor_shape(self.out_name))
        if any(d < 0 for d in out_shape):
            raise ArtifactError(f"TensorRT could not infer the output shape for input {shape}", seen=str(out_shape))
        out_bytes = int(np.prod(out_shape)) * self.out_dtype.itemsize
        d_in, h_in = self._buffer("in", batch.nbytes)
        d_out, h_out = self._buffer("out", out_bytes)
        ctypes.memmove(h_in, batch.ctypes.data, batch.nbytes)
        cuda_check(cudart, cudart.cudaMemcpyAsync(d_in, h_in, batch.nbytes, kind.cudaMemcpyHostToDevice, self.stream),
                   "cudaMemcpyAsync (input)")
        self.context.set_tensor_address(self.in_name, d_in)
        self.context.set_tensor_address(self.out_name, d_out)
        if not self.context.execute_async_v3(self.stream):
            raise ArtifactError("TensorRT execution failed", seen=f"input {shape}", fix="see the TensorRT log above")
        cuda_check(cudart, cudart.cudaMemcpyAsync(h_out, d_out, out_bytes, kind.cudaMemcpyDeviceToHost, self.stream),
                   "cudaMemcpyAsync (output)")
        cuda_check(cudart, cudart.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")
        out = np.empty(out_shape, self.out_dtype)
        ctypes.memmove(out.ctypes.data, h_out, out_bytes)
        return out

    def describe(self) -> dict:
        return {**super().describe(), "tensorrt": self.trt.__version__, "profile_max": self.max_shape,
                "warnings": list(self.warnings)}

    def close(self) -> None:
        """Free the buffers and destroy the stream (idempotent); errors are raised, not ignored."""
        lock = getattr(self, "_lock", None) or threading.Lock()
        with lock:
            while self._buffers:
                self._free(self._buffers.popitem()[1])
            if self.stream is not None:
                stream, self.stream = self.stream, None
                cuda_check(self.cudart, self.cudart.cudaStreamDestroy(stream), "cudaStreamDestroy")
