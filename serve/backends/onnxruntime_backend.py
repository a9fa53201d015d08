"""onnxruntime backend: CUDA execution provider (with IO binding) when it loads, CPU otherwise.

Which provider actually runs is read back from the session (`get_available_providers()` lists CUDA
whenever onnxruntime-gpu is installed, even where its libraries cannot load) and reported; asking
for CUDA and getting CPU is logged as a warning and recorded in `fallback` with what onnxruntime said
about it (ort_providers.py captures it), never silent. Before a CUDA session, NVIDIA's pip CUDA/cuDNN
libraries are preloaded (`onnxruntime.preload_dlls()`, where it exists).
`InferenceSession.run` is safe to call from several threads; the IO binding is made per call.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import numpy as np

from nfdseg.errors import RUNTIME_INSTALL_HINT, ArtifactError, ConfigError, MissingDependencyError
from nfdseg.serve.backends.gpu_probe import gpu_present
from nfdseg.manifest import Manifest

from .base import Backend
from .ort_providers import GPU_PROVIDERS, captured_output, preload_gpu_libraries, relog, telling_lines

log = logging.getLogger(__name__)


def parse_device(device: str) -> tuple[bool, int]:
    """(want CUDA, device id) from auto | cpu | cuda | cuda:N."""
    if device in ("auto", "cuda"):
        return True, 0
    if device == "cpu":
        return False, 0
    if device.startswith("cuda:") and device[5:].isdigit():
        return True, int(device[5:])
    raise ConfigError(f"unknown device '{device}'", fix="use auto, cpu, cuda or cuda:N")


def conflicting_installs() -> list[str]:
    """Installed onnxruntime distributions; more than one (e.g. onnxruntime + onnxruntime-gpu) share one
    import name and the last installed wins, often the CPU-only one."""
    from importlib import metadata

    names = {(d.metadata["Name"] or "").lower() for d in metadata.distributions()}
    return sorted(n for n in names if n.startswith("onnxruntime") and n not in ("onnxruntime-extensions",)
                  and not n.startswith("onnxruntime-genai"))


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self, path: Path, manifest: Manifest, device: str = "auto", threads: int = 0, spin: bool = False):
        super().__init__(path, manifest)
        try:
            import onnxruntime as ort
        except ImportError:
            raise MissingDependencyError("the onnxruntime backend needs onnxruntime",
                                         seen="nfdseg is installed without a runtime extra",
                                         fix=RUNTIME_INSTALL_HINT) from None
        want_cuda, device_id = parse_device(device)
        available = ort.get_available_providers()
        providers: list = ["CPUExecutionProvider"]
        if want_cuda and "CUDAExecutionProvider" in available:
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": device_id}))
        gpu_requested = any((p[0] if isinstance(p, tuple) else p) in GPU_PROVIDERS for p in providers)
        preload_said = preload_gpu_libraries(ort) if gpu_requested else ""
        opts = ort.SessionOptions()
        # CPU: errors only (run-time chatter). A GPU session: warnings too, since the provider's failure to load
        # is one; they are captured below and logged, and put in `fallback` when CUDA did not load.
        opts.log_severity_level = 2 if gpu_requested else 3
        if threads:
            opts.intra_op_num_threads = threads
        if not spin:
            # Idle intra-op threads otherwise spin-wait after each run, taking the cores that callers'
            # decoding and preprocessing need; measured on 2 cores, batching only pays with spinning off.
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        with (captured_output() if gpu_requested else contextlib.nullcontext()) as cap:
            try:
                self.session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
            except Exception as e:
                error = e
            else:
                error = None
        said = cap.text if cap is not None else ""  # read once the capture ended
        if error is not None:
            raise ArtifactError(f"onnxruntime cannot load {path}", seen=f"{type(error).__name__}: {str(error)[:300]}"
                                + (f"; onnxruntime said: {telling_lines(said)}" if said.strip() else ""),
                                fix="re-export the model with `nfdseg export`") from None
        used = self.session.get_providers()
        self.onnxruntime_said = telling_lines(f"{preload_said}\n{said}")  # '' when it reported nothing
        self.provider = used[0]
        self.device_id = device_id
        self.device = f"cuda:{device_id}" if used[0] == "CUDAExecutionProvider" else "cpu"
        relog(f"{preload_said}\n{said}")  # at INFO: other threads' output of that moment is in it too
        if want_cuda and device != "auto" and self.device == "cpu":
            self.fallback = _why_no_cuda(available, used[0], self.onnxruntime_said)
            log.warning("FALLBACK: %s", self.fallback)
        elif device == "auto" and self.device == "cpu" and (gpu_requested or gpu_present().found):
            self.fallback = _why_no_cuda(available, used[0], self.onnxruntime_said)
            log.warning("FALLBACK: %s", self.fallback)
        log.info("onnxruntime %s on %s (%s)", ort.__version__, used[0], path.name)
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name

    def infer(self, batch: np.ndarray) -> np.ndarray:
        if self.device.startswith("cuda"):
            b = self.session.io_binding()  # one per call: a binding holds per-run state, a session is shared
            b.bind_cpu_input(self.input_name, batch)
            b.bind_output(self.output_name, "cuda", self.device_id)
            self.session.run_with_iobinding(b)
            return b.copy_outputs_to_cpu()[0]
        return self.session.run([self.output_name], {self.input_name: batch})[0]

    def describe(self) -> dict:
        import onnxruntime as ort

        return {**super().describe(), "provider": self.provider, "onnxruntime": ort.__version__,
                "onnxruntime_said": self.onnxruntime_said}


def _why_no_cuda(available: list[str], used: str, said: str = "") -> str:
    if "CUDAExecutionProvider" not in available:
        dists = conflicting_installs()
        if len(dists) > 1:
            return (f"onnxruntime has no CUDA provider: {' and '.join(dists)} are both installed and the CPU build "
                    "won; pip uninstall them all, then pip install 'nfdseg[gpu-cu13]' (or [gpu-cu12]) alone")
        return (f"a GPU is visible ({gpu_present().evidence}) but onnxruntime has no CUDA provider: running on CPU "
                "(the CPU build is installed: pip uninstall onnxruntime, then pip install 'nfdseg[gpu-cu13]', or "
                "[gpu-cu12] on CUDA 12)")
    why = f"; onnxruntime said: {said}" if said else "; onnxruntime gave no reason"
    return (f"onnxruntime lists CUDAExecutionProvider but could not create it (ran on {used}){why}. Usually its "
            "CUDA/cuDNN major does not match this machine (onnxruntime-gpu 1.27+ needs CUDA 13, older needs CUDA "
            "12: docs/deploying.md)")
