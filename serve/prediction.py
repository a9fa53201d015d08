"""A Prediction (one image's result) and the two things that make one from a preprocessed image: a model that runs
a batch (Segmenter) and a queue that batches images from many callers (MicroBatcher).

FrameStream (stream.py) is written against the two interfaces here, not against Segmenter or MicroBatcher, so the
runtime's modules import in one direction: batcher -> segmenter -> stream -> prediction (tests/test_layers.py
fails on an import circle inside a folder).
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Protocol, Sequence

import numpy as np

from nfdseg.manifest import Manifest


@dataclass
class Prediction:
    """One image's result at the input image's size: labels (HxW uint8), optional probs (CxHxW float32)."""

    labels: np.ndarray
    probs: np.ndarray | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)


class BatchModel(Protocol):
    """Runs preprocessed batches: what a stream needs of its model (a Segmenter is one)."""

    manifest: Manifest  # its preprocess spec says how frames are prepared
    normalize_in_graph: bool

    def backend_infer_batch(self, x: np.ndarray, labels_only: bool = False) -> np.ndarray: ...

    def postprocess(self, out: np.ndarray, sizes: Sequence[tuple[int, int]],
                    with_probs: bool = False) -> list[Prediction]: ...


class PreparedQueue(Protocol):
    """Takes one preprocessed image and answers with a Future of its Prediction: what a stream needs of a shared
    batcher (a MicroBatcher is one)."""

    def submit_prepared(self, x: np.ndarray, size: tuple[int, int], with_probs: bool = False,
                        timeout_s: float | None = None) -> Future: ...
