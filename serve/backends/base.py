"""The one interface every runtime backend implements: a model input batch in, the model output out."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nfdseg.manifest import Manifest


class Backend:
    """Runs one artifact. `infer` takes the graph input exactly as the manifest describes it
    (float32 NCHW, or uint8 NHWC when normalisation is in the graph) and returns the graph output
    (float32 logits/probs NCHW, or a label map NHW). Attributes say what actually runs."""

    name = "base"

    def __init__(self, path: Path, manifest: Manifest):
        self.path, self.manifest = path, manifest
        self.device = "cpu"
        self.precision = manifest.precision
        self.max_batch: int | None = None  # largest batch one call accepts (engine profiles), None: any
        self.fallback: str = ""  # non-empty when the requested device/precision was not available

    def infer(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def infer_labels(self, batch: np.ndarray) -> np.ndarray:
        """Like `infer`, but returns the (N, H, W) uint8 label map: backends that can take the argmax where
        the logits are (the torch backend, on the GPU) override this to copy C times fewer bytes back."""
        out = self.infer(batch)
        return out.astype(np.uint8, copy=False) if out.ndim == 3 else out.argmax(1).astype(np.uint8)

    def describe(self) -> dict:
        return {"backend": self.name, "device": self.device, "precision": self.precision,
                "artifact": str(self.path), "fallback": self.fallback}

    def close(self) -> None:
        pass
