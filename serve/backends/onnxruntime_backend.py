"""onnxruntime backend: CUDA execution provider (with IO binding) when present, CPU otherwise.

Which provider actually runs is read back from the session and reported; asking for CUDA and
getting CPU is logged as a warning and recorded in `fallback`, never silent.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from nfdseg.errors import ArtifactError, MissingDependencyError
from nfdseg.manifest import Manifest

from .base import Backend

log = logging.getLogger(__name__)


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self, path: Path, manifest: Manifest, device: str = "auto", threads: int = 0, spin: bool = False):
        super().__init__(path, manifest)
        try:
            import onnxruntime as ort
        except ImportError:
            raise MissingDependencyError("the onnxruntime backend needs onnxruntime",
                                         fix="pip install onnxruntime (CPU) or onnxruntime-gpu") from None
        available = ort.get_available_providers()
        want_cuda = device in ("auto", "cuda") or device.startswith("cuda")
        providers = ["CPUExecutionProvider"]
        if want_cuda and "CUDAExecutionProvider" in available:
            providers.insert(0, "CUDAExecutionProvider")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = threads
        if not spin:
            # Idle intra-op threads otherwise spin-wait after each run, taking the cores that callers'
            # decoding and preprocessing need; measured on 2 cores, batching only pays with spinning off.
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        except Exception as e:
            raise ArtifactError(f"onnxruntime cannot load {path}", seen=f"{type(e).__name__}: {str(e)[:300]}",
                                fix="re-export the model with `nfdseg export`") from None
        used = self.session.get_providers()
        self.device = "cuda" if used[0] == "CUDAExecutionProvider" else "cpu"
        if device == "cuda" and self.device != "cuda":
            self.fallback = f"CUDA requested but onnxruntime ran on {used[0]} (available: {available})"
            log.warning("FALLBACK: %s", self.fallback)
        elif device == "auto" and self.device == "cpu" and _gpu_visible():
            self.fallback = "a GPU is visible but onnxruntime has no CUDA provider: running on CPU"
            log.warning("FALLBACK: %s (pip install onnxruntime-gpu)", self.fallback)
        log.info("onnxruntime %s on %s (%s)", ort.__version__, used[0], path.name)
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        self._binding = self.session.io_binding() if self.device == "cuda" else None

    def infer(self, batch: np.ndarray) -> np.ndarray:
        if self._binding is not None:
            b = self._binding
            b.bind_cpu_input(self.input_name, batch)
            b.bind_output(self.output_name, "cuda")
            self.session.run_with_iobinding(b)
            return b.copy_outputs_to_cpu()[0]
        return self.session.run([self.output_name], {self.input_name: batch})[0]

    def describe(self) -> dict:
        import onnxruntime as ort

        return {**super().describe(), "provider": self.session.get_providers()[0], "onnxruntime": ort.__version__}


def _gpu_visible() -> bool:
    return bool(os.environ.get("CUDA_VISIBLE_DEVICES", "x") != "" and Path("/dev/nvidia0").exists())
