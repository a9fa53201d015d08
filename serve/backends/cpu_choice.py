"""`backend="auto"` on a CPU with both onnxruntime and OpenVINO installed: time both on the model at its input
size and keep the faster. Neither wins everywhere (OpenVINO on mid-size CNNs, onnxruntime on tiny ones), so it
is measured, not assumed. The choice is cached beside the model in `backend_choice.json`, keyed by machine, both
runtime versions and the model's sha256, so a new runtime or model is probed again. OpenVINO failing to load or
compile keeps onnxruntime, with the reason logged. Without OpenVINO installed nothing changes.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from nfdseg.errors import NfdsegError
from nfdseg.fsutil import read_json_object

from .base import Backend
from .parity_record import parity_refusal

log = logging.getLogger(__name__)
CHOICE_FILE = "backend_choice.json"
PROBE_RUNS = 5


def probe_ms(backend: Backend, x: np.ndarray, runs: int = PROBE_RUNS, clock=time.perf_counter) -> float:
    """Median ms of `runs` calls after one warm-up (which also compiles)."""
    backend.infer(x)
    times = []
    for _ in range(runs):
        t0 = clock()
        backend.infer(x)
        times.append((clock() - t0) * 1000)
    return statistics.median(times)


def _machine() -> str:
    cpu = ""
    try:
        cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                    if ln.startswith("model name")), "")
    except OSError:
        pass
    return f"{platform.node()}|{platform.machine()}|{cpu or platform.processor()}|{os.cpu_count()} cpus"


def _probe_input(b: Backend, ov_backend) -> np.ndarray | None:
    shape = ov_backend._default_shape()
    if shape is None:
        return None
    spec = b.manifest.inputs[0] if b.manifest.inputs else None
    dtype = np.uint8 if spec is not None and spec.dtype == "uint8" else np.float32
    return np.random.default_rng(0).integers(0, 255, shape).astype(dtype)


def prefer_faster_cpu_runtime(ort_backend: Backend, kwargs: dict) -> Backend:
    """`ort_backend` (already open on the CPU) or an OpenVINO backend on the same file, whichever probed faster."""
    try:
        import openvino
    except ImportError:
        return ort_backend  # today's auto: onnxruntime
    import onnxruntime as ort

    from .openvino_backend import OpenVinoBackend

    f = ort_backend.path
    refused = parity_refusal(f, "openvino")
    if refused is not None:
        log.warning("backend auto -> onnxruntime: OpenVINO broke %s's parity budget at export (%s)", f.name, refused)
        return ort_backend
    key = f"{_machine()}|onnxruntime {ort.__version__}|openvino {openvino.__version__}|{f.name}|" \
          f"{ort_backend.manifest.sha256[:16]}|threads {kwargs.get('threads', 0)}"
    cache_file = f.parent / CHOICE_FILE
    cache = read_json_object(cache_file)
    hit = cache.get(key)
    if hit is not None and hit.get("backend") == "onnxruntime":
        log.info("backend auto -> onnxruntime on cpu (%s)", hit.get("reason", "cached"))
        return ort_backend
    try:
        ov_b = OpenVinoBackend(f, ort_backend.manifest, device="cpu", threads=kwargs.get("threads", 0),
                               hint=kwargs.get("openvino_hint", "LATENCY"),
                               inference_precision=kwargs.get("openvino_precision", "f32"))
    except NfdsegError as e:
        log.warning("backend auto -> onnxruntime: OpenVINO could not serve %s (%s)", f.name, e.what)
        return ort_backend
    if hit is not None:
        log.info("backend auto -> openvino on %s (%s)", ov_b.device, hit.get("reason", "cached"))
        ort_backend.close()
        return ov_b
    x = _probe_input(ort_backend, ov_b)
    if x is None:
        log.info("backend auto -> onnxruntime: the model's input size is not fixed, nothing to probe OpenVINO at")
        ov_b.close()
        return ort_backend
    try:
        ms = {}
        for b in (ort_backend, ov_b, ort_backend, ov_b):  # interleaved, two rounds: load on the box shifts both
            ms.setdefault(b.name, []).append(probe_ms(b, x))
        ort_ms, ov_ms = min(ms["onnxruntime"]), min(ms["openvino"])
    except NfdsegError as e:
        log.warning("backend auto -> onnxruntime: OpenVINO failed on the probe input (%s)", e.what)
        ov_b.close()
        return ort_backend
    pick = "openvino" if ov_ms < ort_ms else "onnxruntime"
    reason = (f"probe at input {list(x.shape)}: onnxruntime {ort_ms:.2f} ms, openvino {ov_ms:.2f} ms per batch of "
              f"1 (median of {PROBE_RUNS}, best of 2 interleaved rounds)")
    log.info("backend auto -> %s on cpu (%s)", pick, reason)
    cache[key] = {"backend": pick, "onnxruntime_ms": round(ort_ms, 3), "openvino_ms": round(ov_ms, 3),
                  "reason": reason, "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    _write(cache_file, cache)
    keep, drop = (ov_b, ort_backend) if pick == "openvino" else (ort_backend, ov_b)
    drop.close()
    return keep


def _write(p: Path, data: dict) -> None:
    """Best effort: a read-only export directory only means probing again next time."""
    tmp = p.with_name(f".{p.name}.{os.getpid()}")
    try:
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, p)
    except OSError as e:
        log.info("could not cache the backend choice in %s (%s); it will be probed again", p, e)
