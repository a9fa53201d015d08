"""torch backend: the checkpoint itself, on CUDA (fp16/bf16 weights, channels_last, optional CUDA
graphs) or CPU (fp32). Needs torch, so it is for development and GPU servers, not small devices.

Reduced precision converts the weights once (`.half()` / `.to(torch.bfloat16)`) rather than
autocasting every call; the label map's argmax runs on the GPU, so only N*H*W bytes come back when
probabilities are not asked for. CUDA graphs are captured once per input shape, all in one shared
memory pool, and replayed under a lock (their static buffers are shared by every caller). With graphs on,
every device operation of a call (the host-to-device copy, capture, replay, the copy back) runs under that
one lock, so no thread touches the GPU while another captures; capture also uses
`capture_error_mode="thread_local"`, so work that other code in the process (another backend, a trainer)
issues from its own threads does not invalidate a capture.

PyTorch allows one capture at a time per process, and `torch.cuda.graph` without `stream=` captures on one
process-wide stream made on whichever device was current when it was first used: a model on cuda:1 captured
there records an empty graph whose replays return the capture-time output. So each device gets its own capture
stream (`capture_stream`), every capture in the process holds one lock (`CAPTURE_LOCK`), and capture and replay
run with the backend's device current.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from pathlib import Path

import numpy as np

from nfdseg.errors import ConfigError, MissingDependencyError
from nfdseg.manifest import Manifest

from . import PRECISIONS
from .base import Backend

log = logging.getLogger(__name__)

CAPTURE_LOCK = threading.Lock()  # one CUDA graph capture at a time in the process (PyTorch's rule)
_STREAMS: dict[str, object] = {}  # "cuda:N" -> that device's capture stream
_STREAMS_LOCK = threading.Lock()


def capture_stream(torch, dev):
    """The capture stream of device `dev` (a torch.device with an index), made once, on that device."""
    with _STREAMS_LOCK:
        if str(dev) not in _STREAMS:
            _STREAMS[str(dev)] = torch.cuda.Stream(dev)
        return _STREAMS[str(dev)]


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, path: Path, manifest: Manifest, device: str = "auto", precision: str = "auto",
                 channels_last: bool = True, cuda_graphs: bool = False, model=None):
        """`model`: an in-memory torch module to serve instead of loading the checkpoint at `path` (the trainer
        evaluates through this backend, so its figures are measured like every other artifact's)."""
        super().__init__(path, manifest)
        try:
            import torch
        except ImportError:
            raise MissingDependencyError("the torch backend needs torch", fix="pip install torch, or use onnxruntime") from None
        from nfdseg.models.checkpoint import load_model_from_dir

        self.torch = torch
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError("the torch backend was asked for CUDA but no CUDA GPU is visible",
                              fix="use --device cpu or --backend onnxruntime")
        self.dev = torch.device(device)
        if self.dev.type == "cuda" and self.dev.index is None:
            self.dev = torch.device("cuda", torch.cuda.current_device())
        self.device = str(self.dev)
        if precision == "auto":
            precision = "fp16" if self.dev.type == "cuda" else "fp32"
        torch_precisions = tuple(p for p in PRECISIONS if p != "int8")
        if precision == "int8":
            raise ConfigError("the torch backend cannot run INT8", seen="precision int8",
                              fix=f"use one of {', '.join(torch_precisions)}; INT8 runs on onnxruntime "
                                  "(model.int8.onnx from `nfdseg export --int8`) or an INT8 TensorRT engine")
        if precision not in torch_precisions:
            raise ConfigError(f"unknown precision '{precision}'", fix=f"use one of {', '.join(torch_precisions)}")
        if self.dev.type == "cpu" and precision != "fp32":
            self.fallback = f"{precision} requested on CPU: running fp32"
            log.warning("FALLBACK: %s", self.fallback)
            precision = "fp32"
        self.precision = precision
        self.dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
        if model is None:
            model, _ = load_model_from_dir(path.parent, self.dev)
        model = model.to(dtype=self.dtype)  # once, instead of autocast on every call
        self.channels_last = channels_last and self.dev.type == "cuda"
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model.eval()
        self.cuda_graphs = cuda_graphs and self.dev.type == "cuda"
        if cuda_graphs and not self.cuda_graphs:
            self.fallback = "CUDA graphs requested on CPU: running eagerly"
            log.warning("FALLBACK: %s", self.fallback)
        self._graphs: dict[tuple, tuple] = {}
        self._pool = torch.cuda.graph_pool_handle() if self.cuda_graphs else None
        self._lock = threading.Lock()

    def _forward(self, x):
        """Model input batch (on the device) -> (float32 logits, uint8 labels), both on the device."""
        logits = self.model(x.to(self.dtype))
        return logits.float(), logits.argmax(1).to(self.torch.uint8)

    def _to_device(self, batch: np.ndarray):
        torch = self.torch
        x = torch.from_numpy(np.ascontiguousarray(batch))
        if self.dev.type == "cuda":
            x = x.pin_memory().to(self.dev, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _run(self, batch: np.ndarray, labels_only: bool) -> np.ndarray:
        torch = self.torch
        with torch.inference_mode():
            if not self.cuda_graphs:
                logits, labels = self._forward(self._to_device(batch))
                return (labels if labels_only else logits).cpu().numpy()
            # The graph's static tensors are shared by all callers, and a capture (first call of a shape) must not
            # overlap another thread's device work: the copy in, capture, replay and copy out all hold the lock.
            with self._lock, self._on_device():
                x = self._to_device(batch)
                graph, static_in, static_out = self._graph_for(x)
                static_in.copy_(x)
                graph.replay()
                return static_out[1 if labels_only else 0].cpu().numpy()

    def _on_device(self):
        """The backend's device made current (CUDA), so streams, capture and replay are all on it."""
        return self.torch.cuda.device(self.dev) if self.dev.type == "cuda" else contextlib.nullcontext()

    def _graph_for(self, x):
        """The CUDA graph for x's shape: captured on first use (after a warm-up on the device's capture stream),
        in the backend's one memory pool so that several shapes do not each hold their own activations."""
        torch = self.torch
        key = tuple(x.shape)
        if key not in self._graphs:
            static_in = x.clone()
            with CAPTURE_LOCK, torch.cuda.device(self.dev):
                s = capture_stream(torch, self.dev)
                s.wait_stream(torch.cuda.current_stream(self.dev))
                with torch.cuda.stream(s):
                    for _ in range(2):
                        self._forward(static_in)
                torch.cuda.current_stream(self.dev).wait_stream(s)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=self._pool, stream=s, capture_error_mode="thread_local"):
                    static_out = self._forward(static_in)
            self._graphs[key] = (graph, static_in, static_out)
            log.info("captured a CUDA graph for input %s (%d shapes share one pool)", key, len(self._graphs))
        return self._graphs[key]

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self._run(batch, labels_only=False)

    def infer_labels(self, batch: np.ndarray) -> np.ndarray:
        return self._run(batch, labels_only=True)

    def describe(self) -> dict:
        return {**super().describe(), "cuda_graphs": self.cuda_graphs, "channels_last": self.channels_last,
                "torch": self.torch.__version__}

    def close(self) -> None:
        with self._lock:
            self._graphs.clear()
