"""Segmenter: the embeddable runtime. Images in (any size, path/bytes/PIL/numpy, RGB or BGR), label maps out.

Pre- and post-processing are nfdseg.preprocess, the same code training used. Batches larger than
the backend accepts (an engine's profile) are split, not refused.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from nfdseg.errors import ArtifactError, InputError
from nfdseg.manifest import Manifest
from nfdseg.preprocess import ImageLimits, load_image, prepare_batch, resize_labels

from .backends import note_missing_parity, open_backend
from .backends.parity_record import note_refused_runtime
from .backends.base import Backend
from .prediction import Prediction
from .stream import FrameStream

log = logging.getLogger(__name__)


class Segmenter:
    """Load an artifact by its manifest and segment images.

    Args:
        artifact: export directory, .onnx, .engine, or checkpoint directory.
        backend: auto | tensorrt | onnxruntime | openvino | torch (auto on a CPU: the faster of onnxruntime and
            OpenVINO by a timed probe). device: auto | cpu | cuda; with openvino also an OpenVINO device string
            (GPU, NPU, AUTO, ...). backend_kwargs: see open_backend (threads, openvino_hint, ...).
        expect_classes: refuse the artifact unless it has this many classes (a deployment's guard).
        max_pixels: refuse images larger than this many pixels.

    `predict` may be called from several threads at once; results equal sequential calls.
    """

    def __init__(self, artifact: str | Path, backend: str = "auto", device: str = "auto", precision: str = "auto",
                 expect_classes: int | None = None, max_pixels: int | None = None, **backend_kwargs: Any):
        opened = open_backend(artifact, backend, device, precision, **backend_kwargs)
        note_missing_parity(Path(artifact), opened.name)
        note_refused_runtime(opened)
        self._attach(opened, expect_classes, max_pixels)

    @classmethod
    def from_backend(cls, backend: Backend, expect_classes: int | None = None,
                     max_pixels: int | None = None) -> "Segmenter":
        """A Segmenter over an already opened backend (the trainer's in-memory model, a custom runtime)."""
        seg = cls.__new__(cls)
        seg._attach(backend, expect_classes, max_pixels)
        return seg

    def _attach(self, backend: Backend, expect_classes: int | None, max_pixels: int | None) -> None:
        self.backend: Backend = backend
        m = backend.manifest
        if expect_classes is not None and m.num_classes != expect_classes:
            raise ArtifactError(f"{backend.path} predicts {m.num_classes} classes, this deployment expects "
                                f"{expect_classes}", seen=", ".join(m.classes.names[:10]),
                                fix="pass the artifact trained for your classes")
        self.manifest: Manifest = m
        self.limits = ImageLimits(max_pixels=max_pixels) if max_pixels else ImageLimits()
        self.normalize_in_graph = bool(m.onnx and m.onnx.normalize_in_graph)
        self.output_kind = m.output_kind

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.manifest.classes.names

    @property
    def palette(self) -> tuple[tuple[int, int, int], ...]:
        return self.manifest.classes.palette

    def describe(self) -> dict[str, Any]:
        return {**self.backend.describe(), "architecture": self.manifest.architecture,
                "classes": self.manifest.num_classes, "input_size": list(self.manifest.preprocess.input_size),
                "output_kind": self.output_kind}

    def decode(self, images: Any, bgr: bool = False) -> list[np.ndarray]:
        """Decode one image or a sequence of them into RGB uint8 arrays (raises InputError naming the bad one)."""
        items = [images] if _is_single(images) else list(images)
        if not items:
            raise InputError("no images given", fix="pass at least one image")
        return [load_image(im, bgr=bgr, limits=self.limits, name=None if not isinstance(im, np.ndarray) else f"image {i}")
                for i, im in enumerate(items)]

    def infer_arrays(self, rgb: Sequence[np.ndarray], labels_only: bool = False) -> np.ndarray:
        """Run the model on decoded RGB images; returns the raw graph output for the whole batch, or
        (labels_only) the (N, H, W) uint8 label maps, which a GPU backend computes on the GPU."""
        x = prepare_batch(rgb, self.manifest.preprocess, self.normalize_in_graph)
        return self.backend_infer_batch(x, labels_only)

    def backend_infer_batch(self, x: np.ndarray, labels_only: bool = False) -> np.ndarray:
        """One preprocessed batch through the backend, split into chunks of the backend's max batch
        (an engine profile), so a larger batch is served rather than refused. Safe to call from several
        threads at once (each backend guards what its calls share)."""
        run = self.backend.infer
        if labels_only:  # a duck-typed custom backend without infer_labels gets the argmax done here
            run = getattr(self.backend, "infer_labels", None) or (lambda b: _labels_of(self.backend.infer(b)))
        step = self.backend.max_batch or len(x)
        if len(x) <= step:
            return run(x)
        return np.concatenate([run(x[i:i + step]) for i in range(0, len(x), step)], 0)

    def postprocess(self, out: np.ndarray, sizes: Sequence[tuple[int, int]], with_probs: bool = False) -> list[Prediction]:
        preds = []
        for o, (h, w) in zip(out, sizes):
            if self.output_kind == "labels" or o.ndim == 2:  # a label-map graph, or labels_only inference
                labels, probs = o.astype(np.uint8), None
            else:
                labels = o.argmax(0).astype(np.uint8)
                probs = _softmax(o) if (with_probs and self.output_kind == "logits") else (o if with_probs else None)
            labels = resize_labels(labels, (h, w))
            if probs is not None:
                probs = _resize_probs(probs, (h, w))
            preds.append(Prediction(labels, probs))
        return preds

    def predict(self, images: Any, bgr: bool = False, with_probs: bool = False) -> list[Prediction] | Prediction:
        """Segment one image (returns a Prediction) or a list (returns a list), at each input's own size."""
        single = _is_single(images)
        t0 = time.perf_counter()
        rgb = self.decode(images, bgr)
        t1 = time.perf_counter()
        out = self.infer_arrays(rgb, labels_only=not with_probs)
        t2 = time.perf_counter()
        preds = self.postprocess(out, [im.shape[:2] for im in rgb], with_probs)
        t3 = time.perf_counter()
        timing = {"decode_pre_ms": (t1 - t0) * 1e3, "infer_ms": (t2 - t1) * 1e3, "post_ms": (t3 - t2) * 1e3}
        for p in preds:
            p.timings_ms = timing
        return preds[0] if single else preds

    def stream(self, frames: Any, **kwargs: Any) -> FrameStream:
        """Segment a stream in frame order with decoding, preprocessing and inference overlapped: `frames` is a
        video path, a camera index, a stream URL, a folder of images or an iterable of RGB arrays; iterate the
        returned FrameStream for StreamResults (see serve/stream.py for the options and the drop policy)."""
        return FrameStream(self, frames, **kwargs)

    def close(self) -> None:
        self.backend.close()


def _labels_of(out: np.ndarray) -> np.ndarray:
    return out.astype(np.uint8, copy=False) if out.ndim == 3 else out.argmax(1).astype(np.uint8)


def _is_single(images: Any) -> bool:
    if isinstance(images, np.ndarray):
        return images.ndim in (2, 3)
    return not isinstance(images, (list, tuple))


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(0, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(0, keepdims=True)).astype(np.float32)


def _resize_probs(probs: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    h, w = size
    if probs.shape[1:] == (h, w):
        return probs
    return np.stack([np.asarray(Image.fromarray(c.astype(np.float32), mode="F").resize((w, h), Image.BILINEAR))
                     for c in probs])
