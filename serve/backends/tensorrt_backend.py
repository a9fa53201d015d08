"""TensorRT backend (TensorRT 10 and 11 runtime API): tensors by name, set_input_shape for dynamic
shapes, execute_async_v3 on a CUDA stream, pinned host buffers, through cuda-python.

The engine's manifest is checked first: an engine built for another GPU or TensorRT version is
refused with a clear error before TensorRT is asked to deserialize it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from nfdseg.errors import ArtifactError, InputError
from nfdseg.manifest import Manifest
from nfdseg.trt_compat import GpuInfo, TrtModule, cuda_runtime, current_gpu, import_tensorrt

from .base import Backend

log = logging.getLogger(__name__)


def check_engine_compatible(manifest: Manifest, tm: TrtModule, gpu: GpuInfo | None) -> None:
    """Refuse an engine whose TensorRT version/flavor or GPU compute capability differs from this machine."""
    info = manifest.engine
    if info is None:
        raise ArtifactError("the manifest describes no TensorRT engine", fix="pass the .json beside a .engine file")
    built = ".".join(info.tensorrt_version.split(".")[:2])
    here = ".".join(tm.version.split(".")[:2])
    if info.tensorrt_flavor != tm.flavor or built != here:
        raise ArtifactError(
            f"engine {manifest.artifact} was built with {info.tensorrt_flavor} {info.tensorrt_version}; "
            f"this machine has {tm.flavor} {tm.version}",
            fix="rebuild the engine here: `nfdseg export CHECKPOINT --engine on`, or install the matching TensorRT",
        )
    if gpu is None:
        raise ArtifactError("a TensorRT engine needs a CUDA GPU and none is visible",
                            fix="run on the GPU machine, or serve the ONNX with --backend onnxruntime")
    if info.compute_capability and info.compute_capability != gpu.compute_capability:
        raise ArtifactError(
            f"engine {manifest.artifact} was built for compute capability {info.compute_capability} "
            f"({info.gpu_name}); this GPU is {gpu.name} ({gpu.compute_capability})",
            fix="TensorRT engines are not portable across GPU architectures: rebuild it on this GPU",
        )


def _check(result):
    err = result[0]
    if int(err) != 0:
        raise RuntimeError(f"CUDA error {err}")
    return result[1] if len(result) == 2 else result[1:]


class TensorRTBackend(Backend):
    name = "tensorrt"

    def __init__(self, path: Path, manifest: Manifest, allow_rtx: bool = False):
        super().__init__(path, manifest)
        tm = import_tensorrt(allow_rtx)
        check_engine_compatible(manifest, tm, current_gpu())
        trt = tm.module
        self.trt, self.cudart = trt, cuda_runtime()
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise ArtifactError(f"TensorRT could not deserialize {path}", fix="rebuild the engine on this machine")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.in_name = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self.out_name = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
        lo, _, hi = self.engine.get_tensor_profile_shape(self.in_name, 0)
        self.min_shape, self.max_shape = tuple(lo), tuple(hi)
        self.max_batch = int(hi[0])
        self.out_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(self.out_name)))
        self.stream = _check(self.cudart.cudaStreamCreate())
        self._buffers: dict[str, tuple[int, int, int]] = {}  # name -> (device ptr, pinned host ptr, nbytes)
        self.device = "cuda"
        self.precision = manifest.engine.precision_built

    def _buffer(self, name: str, nbytes: int) -> tuple[int, int]:
        cur = self._buffers.get(name)
        if cur is None or cur[2] < nbytes:
            if cur is not None:
                self.cudart.cudaFree(cur[0])
                self.cudart.cudaFreeHost(cur[1])
            dev = _check(self.cudart.cudaMalloc(nbytes))
            host = _check(self.cudart.cudaMallocHost(nbytes))
            self._buffers[name] = cur = (dev, host, nbytes)
        return cur[0], cur[1]

    def infer(self, batch: np.ndarray) -> np.ndarray:
        shape = tuple(batch.shape)
        if any(s < lo or s > hi for s, lo, hi in zip(shape, self.min_shape, self.max_shape)):
            raise InputError(f"input shape {shape} is outside the engine's profile",
                             seen=f"min {self.min_shape}, max {self.max_shape}",
                             fix="resize to a size inside the profile, or rebuild the engine with a wider profile")
        cudart, kind = self.cudart, self.cudart.cudaMemcpyKind
        batch = np.ascontiguousarray(batch)
        self.context.set_input_shape(self.in_name, shape)
        out_shape = tuple(self.context.get_tensor_shape(self.out_name))
        out_bytes = int(np.prod(out_shape)) * self.out_dtype.itemsize
        d_in, h_in = self._buffer("in", batch.nbytes)
        d_out, h_out = self._buffer("out", out_bytes)
        np.ctypeslib.as_array((np.ctypeslib.ctypes.c_byte * batch.nbytes).from_address(h_in))[:] = batch.view(np.int8).ravel()
        _check((cudart.cudaMemcpyAsync(d_in, h_in, batch.nbytes, kind.cudaMemcpyHostToDevice, self.stream)[0], None))
        self.context.set_tensor_address(self.in_name, d_in)
        self.context.set_tensor_address(self.out_name, d_out)
        if not self.context.execute_async_v3(self.stream):
            raise RuntimeError("TensorRT execution failed")
        _check((cudart.cudaMemcpyAsync(h_out, d_out, out_bytes, kind.cudaMemcpyDeviceToHost, self.stream)[0], None))
        _check((cudart.cudaStreamSynchronize(self.stream)[0], None))
        raw = np.ctypeslib.as_array((np.ctypeslib.ctypes.c_byte * out_bytes).from_address(h_out))
        return raw.view(self.out_dtype).reshape(out_shape).copy()

    def describe(self) -> dict:
        return {**super().describe(), "tensorrt": self.trt.__version__, "profile_max": self.max_shape}

    def close(self) -> None:
        for dev, host, _ in self._buffers.values():
            self.cudart.cudaFree(dev)
            self.cudart.cudaFreeHost(host)
        self._buffers.clear()
