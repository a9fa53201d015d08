"""Class balance of a training split: per-class pixel frequencies and median-frequency weights (numpy only).

Median-frequency balancing (Eigen & Fergus 2015; how the SegNet authors trained CamVid): freq(c) is the number of
pixels of class c divided by the labelled pixels of the images in which c appears, and weight(c) = median(freq) /
freq(c). Frequent classes (road, sky) get weights below 1, rare small ones (pole, sign, pedestrian) above 1.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from nfdseg.errors import DataError

CLASS_WEIGHTINGS = ("none", "median_frequency")


def class_pixel_stats(masks: Iterable[np.ndarray], num_classes: int, ignore_index: int) -> tuple[np.ndarray, np.ndarray]:
    """(pixels of each class, labelled pixels of the images where each class appears), int64 [num_classes] each.
    Pixels equal to `ignore_index` count for neither."""
    pixels = np.zeros(num_classes, np.int64)
    present_total = np.zeros(num_classes, np.int64)
    for mask in masks:
        counts = np.bincount(mask.ravel(), minlength=256)[:256].astype(np.int64)
        if 0 <= ignore_index < 256:
            counts[ignore_index] = 0
        counts = counts[:num_classes]
        labelled = int(counts.sum())
        pixels += counts
        present_total[counts > 0] += labelled
    return pixels, present_total


def median_frequency_weights(pixels: np.ndarray, present_total: np.ndarray, names=()) -> np.ndarray:
    """weight(c) = median(freq) / freq(c) over the classes that occur; a class that never occurs gets 1.0 (it has
    no pixel to weigh). Raises DataError when no class occurs at all."""
    seen = pixels > 0
    if not seen.any():
        raise DataError("no labelled pixel in the training split: class weights cannot be computed",
                        seen="every mask pixel is the ignore index", fix="check the masks and the ignore index")
    freq = np.zeros(len(pixels), np.float64)
    freq[seen] = pixels[seen] / present_total[seen]
    weights = np.ones(len(pixels), np.float64)
    weights[seen] = np.median(freq[seen]) / freq[seen]
    return weights.astype(np.float32)


def class_weights(kind: str, masks: Iterable[np.ndarray], num_classes: int, ignore_index: int) -> np.ndarray | None:
    """The cross-entropy class weights of `kind` (CLASS_WEIGHTINGS) from the training masks; None for 'none'."""
    if kind == "none":
        return None
    if kind == "median_frequency":
        return median_frequency_weights(*class_pixel_stats(masks, num_classes, ignore_index))
    raise DataError(f"unknown class weighting '{kind}'", fix=f"choose one of {', '.join(CLASS_WEIGHTINGS)}")
