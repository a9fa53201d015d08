"""Lazy, version-aware access to TensorRT and the CUDA device (shared by export and serve).

TensorRT 10 (Jetson, most servers) builds FP16 from an fp32 network with the FP16 builder flag;
TensorRT 11 and TensorRT-RTX build strongly typed networks whose precision comes from the ONNX.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass

from .errors import MissingDependencyError

log = logging.getLogger(__name__)

INSTALL_HINT = ("install TensorRT: use NVIDIA's TensorRT container or JetPack, or `pip install tensorrt` "
                "(needs NVIDIA's package host); tests may use `pip install tensorrt-rtx`")


@dataclass(frozen=True)
class TrtModule:
    module: object
    flavor: str  # "tensorrt" | "tensorrt_rtx"
    version: str

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])

    @property
    def strongly_typed_only(self) -> bool:
        """True where FP16 must come from the network's types (TensorRT 11+, TensorRT-RTX)."""
        return self.flavor == "tensorrt_rtx" or self.major >= 11

    @property
    def short_version(self) -> str:
        prefix = "rtx" if self.flavor == "tensorrt_rtx" else ""
        return prefix + ".".join(self.version.split(".")[:2])


def import_tensorrt(allow_rtx: bool = True) -> TrtModule:
    """Import TensorRT (preferred) or TensorRT-RTX; raise MissingDependencyError with a hint otherwise."""
    names = ["tensorrt"] + (["tensorrt_rtx"] if allow_rtx else [])
    for name in names:
        try:
            mod = importlib.import_module(name)
        except Exception:  # ImportError, or a broken install raising OSError for missing libs
            continue
        return TrtModule(mod, name, str(mod.__version__))
    raise MissingDependencyError("TensorRT is not installed", fix=INSTALL_HINT)


@dataclass(frozen=True)
class GpuInfo:
    name: str
    compute_capability: str  # "9.0"

    @property
    def sm(self) -> str:
        return "sm" + self.compute_capability.replace(".", "")


def current_gpu() -> GpuInfo | None:
    """The first CUDA GPU, found through cuda-python (or torch when present), or None when there is none."""
    try:
        cudart = cuda_runtime()
        err, props = cudart.cudaGetDeviceProperties(0)
        if int(err) == 0:
            name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
            return GpuInfo(name.strip("\x00"), f"{props.major}.{props.minor}")
    except Exception:
        pass
    try:  # torch is not a runtime dependency: only asked when cuda-python is absent
        import torch

        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            return GpuInfo(p.name, f"{p.major}.{p.minor}")
    except Exception:
        pass
    return None


def cuda_runtime():
    """cuda-python's runtime module (new `cuda.bindings.runtime` or old `cuda.cudart` layout)."""
    try:
        from cuda.bindings import runtime  # cuda-python >= 12.6

        return runtime
    except ImportError:
        pass
    try:
        from cuda import cudart  # older cuda-python

        return cudart
    except ImportError:
        raise MissingDependencyError("the TensorRT backend needs CUDA bindings",
                                     fix="pip install cuda-python (or use the NVIDIA TensorRT container)") from None
