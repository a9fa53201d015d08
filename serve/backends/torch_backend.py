"""torch backend: the checkpoint itself, on CUDA (fp16/bf16 autocast, channels_last, optional CUDA
graphs) or CPU (fp32). Needs torch, so it is for development and GPU servers, not small devices."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from nfdseg.errors import ConfigError, MissingDependencyError
from nfdseg.manifest import Manifest

from .base import Backend

log = logging.getLogger(__name__)


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, path: Path, manifest: Manifest, device: str = "auto", precision: str = "auto",
                 channels_last: bool = True, cuda_graphs: bool = False):
        super().__init__(path, manifest)
        try:
            import torch
        except ImportError:
            raise MissingDependencyError("the torch backend needs torch", fix="pip install torch, or use onnxruntime") from None
        from nfdseg.distill.checkpoint import load_model_from_dir

        self.torch = torch
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError("the torch backend was asked for CUDA but no CUDA GPU is visible",
                              fix="use --device cpu or --backend onnxruntime")
        self.dev = torch.device(device)
        self.device = str(self.dev)
        if precision == "auto":
            precision = "fp16" if self.dev.type == "cuda" else "fp32"
        if self.dev.type == "cpu" and precision != "fp32":
            self.fallback = f"{precision} requested on CPU: running fp32"
            log.warning("FALLBACK: %s", self.fallback)
            precision = "fp32"
        self.precision = precision
        self.dtype = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
        model, _ = load_model_from_dir(path.parent, self.dev)
        self.channels_last = channels_last and self.dev.type == "cuda"
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.cuda_graphs = cuda_graphs and self.dev.type == "cuda"
        self._graphs: dict[tuple, tuple] = {}

    def _run(self, x):
        torch = self.torch
        with torch.autocast(self.dev.type, dtype=self.dtype, enabled=self.dtype is not None):
            return self.model(x).float()

    def infer(self, batch: np.ndarray) -> np.ndarray:
        torch = self.torch
        with torch.inference_mode():
            x = torch.from_numpy(batch).to(self.dev, non_blocking=True)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            if not self.cuda_graphs:
                return self._run(x).cpu().numpy()
            key = tuple(x.shape)
            if key not in self._graphs:  # capture once per shape, after a warm-up on a side stream
                static_in = x.clone()
                s = torch.cuda.Stream()
                s.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(s):
                    for _ in range(2):
                        self._run(static_in)
                torch.cuda.current_stream().wait_stream(s)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    static_out = self._run(static_in)
                self._graphs[key] = (graph, static_in, static_out)
            graph, static_in, static_out = self._graphs[key]
            static_in.copy_(x)
            graph.replay()
            return static_out.cpu().numpy()
