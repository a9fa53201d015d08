"""Helpers shared by the benchmark scripts: machine description and result paths."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def gpu_name() -> str | None:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except Exception:
        pass
    return None


def machine() -> dict:
    """What the benchmark ran on; `tag` names the results file."""
    gpu = gpu_name()
    cores = os.cpu_count() or 0
    mem_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    tag = (gpu.lower().replace("nvidia ", "").replace(" ", "-") if gpu else f"cpu{cores}")
    return {"tag": tag, "cpu": cpu_model(), "cores": cores, "memory_gb": mem_gb, "gpu": gpu,
            "platform": platform.platform(), "python": platform.python_version()}


def git_rev() -> str:
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent,
                                       text=True, stderr=subprocess.DEVNULL).strip()
    except Exception:
        return "unknown"
