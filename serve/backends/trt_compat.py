"""Lazy, version-aware access to TensorRT and the CUDA device (shared by export and serve).

TensorRT 10 (Jetson, most servers) builds FP16 from an fp32 network with the FP16 builder flag, which
10.12 deprecates in favour of strongly typed networks; TensorRT 11 and TensorRT-RTX build strongly
typed networks only, whose precision comes from the ONNX. Nothing here imports TensorRT, CUDA or
torch until asked.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass

from nfdseg.errors import ArtifactError, BrokenDependencyError, MissingDependencyError

log = logging.getLogger(__name__)

def version_tuple(version: str) -> tuple[int, ...]:
    """'10.13.2.6' -> (10, 13, 2, 6); non-numeric parts (e.g. 'rc1') end the tuple."""
    out = []
    for part in str(version).split("."):
        digits = part[:len(part) - len(part.lstrip("0123456789"))]  # leading digits only
        if not digits:
            break
        out.append(int(digits))
        if len(digits) < len(part):
            break
    return tuple(out)


def tensorrt_pip_spec(cuda_major: int, tensorrt_major: int = 10, exact: str = "") -> str:
    """The pip requirement for TensorRT on a host whose driver runs CUDA `cuda_major`: NVIDIA's per-CUDA package
    (`tensorrt-cu12` / `tensorrt-cu13`). The bare `tensorrt` metapackage requires `tensorrt_cu13` on Linux since
    10.13.2, which a CUDA 12 driver cannot run. `exact`: an engine's TensorRT version, pinned to its release
    (==X.Y.Z.*), since TensorRT loads only engines of its own major.minor.patch (engine_version_problem)."""
    if exact:
        v = version_tuple(exact)
        return f"tensorrt-cu{cuda_major}==" + ".".join(str(n) for n in v[:3]) + ".*"
    return f"tensorrt-cu{cuda_major}>={tensorrt_major},<{tensorrt_major + 1}"


# Where TensorRT 10 is meant (JetPack 6, engines built by TensorRT 10, the 24.08 container) the range says so;
# TensorRT 11 is supported too (strongly typed builds only). A range picks the newest release in it: an engine
# built by another release will not load, so an existing engine needs its exact version.
INSTALL_HINT = ("install TensorRT: use NVIDIA's TensorRT container or JetPack, or pip the build for your driver's "
                f"CUDA: `pip install '{tensorrt_pip_spec(12)}'` (CUDA 12 driver) or `'{tensorrt_pip_spec(13)}'` "
                f"(CUDA 13; `'{tensorrt_pip_spec(13, 11)}'` for TensorRT 11); not the bare `tensorrt`, which "
                "installs the CUDA 13 build since 10.13.2. To load an existing engine pin its exact release "
                f"(e.g. `'{tensorrt_pip_spec(12, exact='10.13.0.35')}'`): TensorRT refuses engines of any other "
                "version. Tests may use `pip install tensorrt-rtx`")


@dataclass(frozen=True)
class TrtModule:
    module: object
    flavor: str  # "tensorrt" | "tensorrt_rtx"
    version: str

    @property
    def major(self) -> int:
        return version_tuple(self.version)[0]

    @property
    def strongly_typed_only(self) -> bool:
        """True where FP16 must come from the network's types (TensorRT 11+, TensorRT-RTX)."""
        return self.flavor == "tensorrt_rtx" or self.major >= 11

    @property
    def fp16_flag_deprecated(self) -> bool:
        """TensorRT 10.12 deprecated weak typing (the FP16 builder flag); 11 removed it."""
        return self.strongly_typed_only or version_tuple(self.version)[:2] >= (10, 12)

    @property
    def short_version(self) -> str:
        prefix = "rtx" if self.flavor == "tensorrt_rtx" else ""
        return prefix + ".".join(self.version.split(".")[:2])


def fp16_build_path(tm: TrtModule, fp16_onnx_exists: bool) -> str:
    """How to build an FP16 engine here: "strongly_typed" (network parsed from the FP16 ONNX) or
    "builder_flag" (fp32 network + BuilderFlag.FP16, TensorRT 10 before 10.12 or without an FP16 ONNX)."""
    if tm.strongly_typed_only:
        if not fp16_onnx_exists:
            raise ArtifactError(f"{tm.flavor} {tm.version} builds FP16 only from an FP16 ONNX (strongly typed)",
                                fix="export with FP16 enabled (the default) so model.fp16.onnx exists")
        return "strongly_typed"
    if tm.fp16_flag_deprecated and fp16_onnx_exists:
        return "strongly_typed"
    if tm.fp16_flag_deprecated:
        log.warning("TensorRT %s deprecates the FP16 builder flag and there is no FP16 ONNX: using the flag", tm.version)
    return "builder_flag"


def import_tensorrt(allow_rtx: bool = True) -> TrtModule:
    """Import TensorRT (preferred) or TensorRT-RTX; raise MissingDependencyError with a hint otherwise.

    Only the package itself missing counts as absent (and lets TensorRT-RTX stand in). A package that is there
    but fails to import (a missing libnvinfer, a mismatched build: ImportError, OSError, or a
    ModuleNotFoundError for one of its own dependencies) raises BrokenDependencyError with the real error,
    so `--engine auto` never reads a broken install as "not installed"."""
    names = ["tensorrt"] + (["tensorrt_rtx"] if allow_rtx else [])
    for name in names:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:
                continue
            raise _broken(name, e) from e
        except Exception as e:  # ImportError, or OSError for a missing shared library
            raise _broken(name, e) from e
        return TrtModule(mod, name, str(mod.__version__))
    raise MissingDependencyError("TensorRT is not installed", fix=INSTALL_HINT)


def _broken(name: str, error: Exception) -> BrokenDependencyError:
    return BrokenDependencyError(f"the {name} package is installed but cannot be imported",
                                 seen=f"{type(error).__name__}: {error}",
                                 fix=f"repair it (`python -c 'import {name}'` shows the full error: usually a "
                                     "missing libnvinfer / CUDA library on LD_LIBRARY_PATH or a build for another "
                                     f"CUDA), or uninstall it (`pip uninstall {name}`); pass --engine off to skip "
                                     "the engine")


def engine_version_problem(built: str, here: str) -> tuple[str, str]:
    """Compare an engine's TensorRT version with this runtime's, as TensorRT does when deserializing:
    major.minor.patch must match ("expecting library version X got Y"). Returns (refusal, warning), each
    "" when there is none; a different build number is only warned about."""
    b, h = version_tuple(built), version_tuple(here)
    if b[:3] != h[:3]:
        return f"built with TensorRT {built}; this machine has {here}", ""
    if b[3:4] != h[3:4] and b[3:4] and h[3:4]:
        return "", f"engine built with TensorRT {built}, running on {here} (same release, another build)"
    return "", ""


@dataclass(frozen=True)
class GpuInfo:
    name: str
    compute_capability: str  # "9.0"

    @property
    def sm(self) -> str:
        return "sm" + self.compute_capability.replace(".", "")


class CudaSetupError(MissingDependencyError):
    """A GPU driver is present but the CUDA binding cannot use it (e.g. cuda-python 13 on a CUDA 12 driver)."""


def binding_mismatch(driver_version: int, runtime_version: int) -> str:
    """Why a CUDA binding built for `runtime_version` cannot run on `driver_version` (CUDA's integer
    form, 12060 = 12.6), or "" when it can. Drivers run any runtime of their CUDA major or older."""
    if driver_version and runtime_version and driver_version // 1000 < runtime_version // 1000:
        d, r = driver_version // 1000, runtime_version // 1000
        return (f"cuda-python is built for CUDA {r}.{runtime_version % 1000 // 10} but the driver supports CUDA "
                f"{d}.{driver_version % 1000 // 10}")
    return ""


def current_gpu(index: int = 0) -> GpuInfo | None:
    """CUDA GPU `index` (default the first), or None when this machine has no NVIDIA driver or no GPU.

    Found through cuda-python (or torch when cuda-python is absent). A driver that the installed
    binding cannot use raises CudaSetupError: an engine must never be named or checked as if no GPU were there.
    """
    try:
        cudart = cuda_runtime()
    except MissingDependencyError:
        cudart = None
    if cudart is not None:
        err, driver = cudart.cudaDriverGetVersion()
        if int(err) != 0 or driver == 0:  # 0: no NVIDIA driver installed
            return None
        err, runtime = cudart.cudaRuntimeGetVersion()
        problem = binding_mismatch(driver, runtime if int(err) == 0 else 0)
        if problem:
            d = driver // 1000
            raise CudaSetupError("the CUDA binding does not match this machine's driver", seen=problem,
                                 fix=f"install the binding of the driver's CUDA major: pip install 'cuda-python>={d},<{d + 1}' "
                                     "(docs/deploying.md)")
        err, count = cudart.cudaGetDeviceCount()
        if int(err) == 100 or (int(err) == 0 and count == 0):  # cudaErrorNoDevice
            return None
        if int(err) == 0 and index >= count:
            raise CudaSetupError(f"there is no CUDA GPU {index}", seen=f"{count} GPU(s) visible",
                                 fix=f"pass a device from cuda:0 to cuda:{count - 1}, or check CUDA_VISIBLE_DEVICES")
        if int(err) != 0:
            raise CudaSetupError("CUDA cannot see the GPU", seen=_cuda_error_text(cudart, err),
                                 fix="check the driver (nvidia-smi), CUDA_VISIBLE_DEVICES, and the cuda-python version")
        err, props = cudart.cudaGetDeviceProperties(index)
        if int(err) != 0:
            raise CudaSetupError("CUDA cannot read the GPU's properties", seen=_cuda_error_text(cudart, err),
                                 fix="check the driver (nvidia-smi) and the cuda-python version")
        name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
        return GpuInfo(name.strip("\x00"), f"{props.major}.{props.minor}")
    try:  # torch is not a runtime dependency: only asked when cuda-python is absent
        import torch
    except ImportError:
        return None
    if torch.cuda.is_available() and index < torch.cuda.device_count():
        p = torch.cuda.get_device_properties(index)
        return GpuInfo(p.name, f"{p.major}.{p.minor}")
    return None


def _cuda_error_text(cudart, err) -> str:
    try:
        return f"{err!r}: {cudart.cudaGetErrorString(err)[1].decode()}"
    except Exception:  # an old binding without cudaGetErrorString
        return repr(err)


def cuda_check(cudart, result, what: str):
    """Unwrap a cuda-python call's (err, value...) tuple; raise ArtifactError naming the call on failure."""
    err = result[0]
    if int(err) != 0:
        raise ArtifactError(f"CUDA call failed: {what}", seen=_cuda_error_text(cudart, err),
                            fix="check GPU memory (nvidia-smi) and that cuda-python matches the driver")
    return None if len(result) == 1 else (result[1] if len(result) == 2 else result[1:])


def cuda_device_index(device: str) -> int:
    """'auto' | 'cuda' -> 0, 'cuda:N' -> N; anything else is a ConfigError (TensorRT runs on a GPU only)."""
    from nfdseg.errors import ConfigError

    if device in ("auto", "cuda", "gpu"):
        return 0
    if device.startswith("cuda:") and device[5:].isdigit():
        return int(device[5:])
    raise ConfigError(f"the TensorRT backend runs on a CUDA GPU, not on '{device}'",
                      fix="pass device auto, cuda or cuda:N, or serve the ONNX with --backend onnxruntime")


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
                                     fix="pip install 'cuda-python>=12,<13' on CUDA 12 drivers (JetPack 6), "
                                         "'cuda-python>=13,<14' on CUDA 13 (see docs/deploying.md)") from None
