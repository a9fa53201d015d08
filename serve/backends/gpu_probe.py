"""Is there an NVIDIA GPU on this machine? Answered without importing torch or any CUDA library.

The runtime asks this to decide whether running on the CPU deserves a FALLBACK warning (a GPU is here, but
onnxruntime could not use it). `/dev/nvidia0` alone misses too much: a container given only its second GPU
has `/dev/nvidia1`, a Jetson's integrated GPU has no `/dev/nvidia*` at all, and `CUDA_VISIBLE_DEVICES=""`
hides every GPU that is there. The evidence, in order (the first that answers wins):

1. `CUDA_VISIBLE_DEVICES` set to "" or "-1": no GPU is visible to CUDA, whatever is installed.
2. `/proc/driver/nvidia/gpus/*`: one entry per GPU the discrete-GPU driver found.
3. `/dev/nvidia<N>` for any N.
4. A Jetson's integrated GPU: `/dev/nvhost-ctrl-gpu`, `/dev/nvgpu/`, or `/etc/nv_tegra_release`.
5. torch or CuPy, only when the process has already imported them (never imported here).
6. `nvidia-smi -L` (5 s time limit), when it is on PATH.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class GpuPresence:
    found: bool
    evidence: str  # what was seen (or what was checked, when nothing was found)


JETSON_MARKERS = ("dev/nvhost-ctrl-gpu", "dev/nvgpu", "etc/nv_tegra_release")


def probe_gpu(env: dict | None = None, root: str | os.PathLike = "/", smi: str | None = "nvidia-smi",
              modules: dict | None = None) -> GpuPresence:
    """Look for an NVIDIA GPU. `env`, `root` (the file system's root), `smi` (the nvidia-smi command, None: do
    not run it) and `modules` (imported modules, default sys.modules) exist so tests can stand in for a machine."""
    env = os.environ if env is None else env
    root = Path(root)
    modules = sys.modules if modules is None else modules
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return GpuPresence(False, f"CUDA_VISIBLE_DEVICES={visible!r} hides every GPU")
    gpus = root / "proc/driver/nvidia/gpus"
    if gpus.is_dir() and any(gpus.iterdir()):
        return GpuPresence(True, f"/proc/driver/nvidia/gpus lists {len(list(gpus.iterdir()))} GPU(s)")
    dev = root / "dev"
    nodes = sorted(p.name for p in dev.glob("nvidia*") if re.fullmatch(r"nvidia\d+", p.name)) if dev.is_dir() else []
    if nodes:
        return GpuPresence(True, f"/dev/{', /dev/'.join(nodes)}")
    for marker in JETSON_MARKERS:
        if (root / marker).exists():
            return GpuPresence(True, f"Jetson integrated GPU (/{marker})")
    imported = _from_imported(modules)
    if imported:
        return GpuPresence(True, imported)
    smi_path = shutil.which(smi, path=env.get("PATH")) if smi else None
    if smi_path:
        try:
            r = subprocess.run([smi_path, "-L"], capture_output=True, text=True, timeout=5)
            listed = [ln for ln in r.stdout.splitlines() if ln.startswith("GPU ")]
            if r.returncode == 0 and listed:
                return GpuPresence(True, f"nvidia-smi -L: {listed[0]}" + (f" (+{len(listed) - 1})" if len(listed) > 1 else ""))
        except (OSError, subprocess.SubprocessError):
            pass
    return GpuPresence(False, "no NVIDIA GPU seen (/proc/driver/nvidia/gpus, /dev/nvidia*, Jetson device nodes, "
                              "imported torch/CuPy, nvidia-smi -L)")


def _from_imported(modules: dict) -> str:
    """A GPU count from torch or CuPy when the process already imported them; '' otherwise or on any error."""
    torch = modules.get("torch")
    try:
        if torch is not None and torch.cuda.is_available() and torch.cuda.device_count() > 0:
            return f"torch sees {torch.cuda.device_count()} CUDA GPU(s)"
    except Exception:  # noqa: BLE001 - a broken CUDA setup is "no evidence", never a crash here
        pass
    cupy = modules.get("cupy")
    try:
        if cupy is not None and cupy.cuda.runtime.getDeviceCount() > 0:
            return f"CuPy sees {cupy.cuda.runtime.getDeviceCount()} CUDA GPU(s)"
    except Exception:  # noqa: BLE001
        pass
    return ""


@functools.lru_cache(maxsize=1)
def gpu_present() -> GpuPresence:
    """probe_gpu() for this process, asked once (CUDA_VISIBLE_DEVICES is read by CUDA at start-up too)."""
    return probe_gpu()
