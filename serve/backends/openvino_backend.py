"""OpenVINO backend: Intel's runtime for x86 edge CPUs (and Intel GPUs/NPUs), beside onnxruntime.

Reads the same ONNX files as the onnxruntime backend (model.onnx; model.int8.onnx, whose Q/DQ nodes OpenVINO
runs as INT8). Device: "cpu" or the project's "auto" mean OpenVINO's CPU plugin; any other string is passed to
OpenVINO as is (GPU, GPU.1, NPU, AUTO, HETERO:GPU,CPU, ...) after checking that each named device is in
`Core().available_devices`. The model is reshaped to each input shape it is called with and compiled static
(GPU/NPU plugins want static shapes); on the CPU batch 1 is compiled static and larger batches once per input
size with a dynamic batch dimension, so a MicroBatcher's batches of 1..max_batch images cost two compiles per size
(about 0.85 s each for DeepLabV3-MobileNetV3 at 360x480 here), not one per batch size evicting each other. The
last `cache_size` compiled shapes stay. Each compiled model keeps a pool of infer requests taken under a lock, so
several threads (MicroBatcher, Segmenter.stream) may call `infer` at once: one request per concurrent call.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from nfdseg.errors import ArtifactError, ConfigError, MissingDependencyError
from nfdseg.manifest import Manifest

from .base import Backend

log = logging.getLogger(__name__)
OPENVINO_INSTALL_HINT = "pip install 'nfdseg[openvino]'"
HINTS = ("LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT")
_VIRTUAL = ("AUTO", "MULTI", "HETERO", "BATCH")  # meta-plugins: they name other devices after a ':'


def import_openvino():
    try:
        import openvino
    except ImportError:
        raise MissingDependencyError("the openvino backend needs OpenVINO, which is not installed",
                                     seen="import openvino failed",
                                     fix=f"{OPENVINO_INSTALL_HINT}, or serve with --backend onnxruntime") from None
    return openvino


_CORE = None
_CORE_LOCK = threading.Lock()


def shared_core():
    """The process's one `openvino.Core`: creating a second Core and querying it can crash the process with a
    segmentation fault (openvinotoolkit/openvino#35338; ultralytics reuses one Core for the same reason), and a
    Core holds plugins and caches that every model may share."""
    global _CORE
    ov = import_openvino()
    with _CORE_LOCK:
        if _CORE is None:
            _CORE = ov.Core()
        return _CORE


def openvino_device(device: str, found: list[str]) -> str:
    """The OpenVINO device string for the project's `device`: auto/cpu -> CPU; CUDA names are refused; any other
    string must name devices OpenVINO found here (one error listing them otherwise)."""
    if device in ("auto", "cpu"):
        device = "CPU"
    if device.startswith("cuda"):
        raise ConfigError(f"the openvino backend cannot run on '{device}'",
                          fix="use --backend onnxruntime/tensorrt/torch for NVIDIA GPUs, or an OpenVINO device "
                              f"({', '.join(found) or 'none found'})")
    head, _, rest = device.partition(":")
    named = [d for d in rest.split(",") if d] if head.upper() in _VIRTUAL else [device]
    for d in named:
        d_up = d.upper()
        if d_up not in found and d_up.split(".")[0] not in [f.split(".")[0] for f in found]:
            raise ConfigError(f"OpenVINO device '{d}' is not on this machine", seen=f"devices found: "
                              f"{', '.join(found) or 'none'}", fix="pass one of those with --device, or cpu")
    return device if head.upper() in _VIRTUAL else device.upper()


class _Compiled:
    """One compiled model and its pool of infer requests (one per concurrent caller, kept for reuse)."""

    def __init__(self, compiled):
        self.compiled = compiled
        self._free: list = []
        self._lock = threading.Lock()

    def acquire(self):
        with self._lock:
            if self._free:
                return self._free.pop()
        return self.compiled.create_infer_request()

    def release(self, request) -> None:
        with self._lock:
            self._free.append(request)


def project_device(execution_devices: str) -> str:
    """OpenVINO's execution device(s) in the vocabulary every backend reports: "cpu" when only the CPU plugin ran
    (as onnxruntime and torch say), otherwise OpenVINO's own string ("GPU.0", "GPU.0,CPU", ...)."""
    names = [d.strip() for d in execution_devices.split(",") if d.strip()]
    return "cpu" if names and all(d.upper() == "CPU" for d in names) else execution_devices


class OpenVinoBackend(Backend):
    name = "openvino"

    def __init__(self, path: Path, manifest: Manifest, device: str = "auto", threads: int = 0,
                 hint: str = "LATENCY", cache_size: int = 4, inference_precision: str = "f32"):
        super().__init__(path, manifest)
        ov = import_openvino()
        if hint not in HINTS:
            raise ConfigError(f"unknown OpenVINO performance hint '{hint}'", fix=f"choose one of {', '.join(HINTS)}")
        if cache_size < 1:
            raise ConfigError("cache_size must be at least 1", seen=str(cache_size))
        self._ov = ov
        self.core = shared_core()
        self.found = list(self.core.available_devices)
        self.ov_device = openvino_device(device, self.found)
        self.version = ov.__version__
        self.threads, self.hint, self.cache_size = threads, hint, cache_size
        # f32 by default: on CPUs with AVX512_BF16/AMX OpenVINO otherwise computes an fp32 model in bf16, which
        # moved 0.2 % of the test student's labels (under the fp32 parity gate). "" takes the device's default.
        self.inference_precision = inference_precision
        try:
            self.model = self.core.read_model(str(path))
        except Exception as e:
            raise ArtifactError(f"OpenVINO cannot read {path}", seen=f"{type(e).__name__}: {str(e)[:300]}",
                                fix="re-export the model with `nfdseg export`, or serve with --backend "
                                    "onnxruntime") from None
        self._cache: OrderedDict[tuple, _Compiled] = OrderedDict()
        self._lock = threading.Lock()
        self.compiles = 0
        shape = self._default_shape()
        first = self._compiled(shape) if shape else None  # compile now: a model OpenVINO cannot compile fails here
        self.execution_devices = self._ran_on(first) if first else self.ov_device
        self.device = project_device(self.execution_devices)
        log.info("openvino %s on %s (%s, hint %s%s)", self.version, self.execution_devices, path.name, hint,
                 f", {threads} threads" if threads else "")

    def _default_shape(self) -> tuple | None:
        """Batch 1 at the manifest's input size (preprocess.input_size for dynamic H, W), or None if unknown."""
        spec = self.manifest.inputs[0] if self.manifest.inputs else None
        ps = self.model.inputs[0].get_partial_shape()
        if ps.rank.is_dynamic or len(ps) != 4:
            return None
        nhwc = bool(spec and spec.layout.upper() == "NHWC") or (spec is not None and spec.dtype == "uint8")
        h, w = self.manifest.preprocess.input_size
        want = (1, h, w, 3) if nhwc else (1, 3, h, w)
        return tuple(d.get_length() if d.is_static else want[i] for i, d in enumerate(ps))

    def _cache_key(self, shape: tuple) -> tuple:
        """The shape to compile for `shape`: itself, or on the CPU for a batch > 1 the same with batch -1 (dynamic)."""
        return shape if shape[0] == 1 or self.ov_device != "CPU" else (-1, *shape[1:])

    def _compiled(self, shape: tuple) -> _Compiled:
        shape = self._cache_key(shape)
        with self._lock:
            hit = self._cache.get(shape)
            if hit is not None:
                self._cache.move_to_end(shape)
                return hit
            model = self.model.clone()
            try:
                model.reshape({model.inputs[0]: self._ov.PartialShape(list(shape))})
                compiled = self.core.compile_model(model, self.ov_device, self._config())
            except Exception as e:
                raise ArtifactError(f"OpenVINO cannot compile {self.path.name} for {self.ov_device} at input "
                                    f"{list(shape)}" + (" (-1: any batch)" if shape[0] == -1 else ""),
                                    seen=f"{type(e).__name__}: {str(e)[:300]}",
                                    fix="serve with --backend onnxruntime, or another --device") from None
            entry = self._cache[shape] = _Compiled(compiled)
            self.compiles += 1
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
            return entry

    def _config(self) -> dict:
        cfg = {"PERFORMANCE_HINT": self.hint}
        if self.inference_precision:
            cfg["INFERENCE_PRECISION_HINT"] = self.inference_precision
        if self.threads and "CPU" in self.ov_device.upper():
            cfg["INFERENCE_NUM_THREADS"] = int(self.threads)
        return cfg

    def _ran_on(self, entry: _Compiled) -> str:
        try:
            return ",".join(entry.compiled.get_property("EXECUTION_DEVICES"))
        except Exception:  # an older plugin without the property: what was asked for
            return self.ov_device

    def infer(self, batch: np.ndarray) -> np.ndarray:
        entry = self._compiled(tuple(batch.shape))
        request = entry.acquire()
        try:
            request.infer({0: np.ascontiguousarray(batch)})
            return request.get_output_tensor(0).data.copy()
        finally:
            entry.release(request)

    def describe(self) -> dict:
        return {**super().describe(), "openvino": self.version, "openvino_device": self.ov_device,
                "execution_devices": self.execution_devices,
                "devices_found": self.found, "hint": self.hint, "threads": self.threads,
                "inference_precision": self.inference_precision or "device default"}

    def close(self) -> None:
        with self._lock:
            self._cache.clear()
