"""Segmentation metrics from a confusion matrix (numpy only, shared by training, export parity and serve eval)."""

from __future__ import annotations

import numpy as np

from .manifest import IGNORE_INDEX


class ConfusionMatrix:
    """Accumulates a num_classes x num_classes confusion matrix (rows: ground truth, columns: prediction)."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, pred: np.ndarray, target: np.ndarray) -> None:
        pred = np.asarray(pred).reshape(-1).astype(np.int64)
        target = np.asarray(target).reshape(-1).astype(np.int64)
        if pred.shape != target.shape:
            raise ValueError(f"prediction and target sizes differ: {pred.shape} vs {target.shape}")
        keep = (target != self.ignore_index) & (target >= 0) & (target < self.num_classes)
        pred, target = pred[keep], target[keep]
        pred = np.clip(pred, 0, self.num_classes - 1)
        self.matrix += np.bincount(
            target * self.num_classes + pred, minlength=self.num_classes**2
        ).reshape(self.num_classes, self.num_classes)

    def iou(self) -> np.ndarray:
        """Per-class IoU in [0, 1]; NaN for a class absent from both prediction and ground truth."""
        tp = np.diag(self.matrix).astype(np.float64)
        denom = self.matrix.sum(0) + self.matrix.sum(1) - tp
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(denom > 0, tp / np.maximum(denom, 1), np.nan)

    def miou(self) -> float:
        """Mean IoU over classes that occur, in percent."""
        iou = self.iou()
        return float(np.nanmean(iou) * 100.0) if np.isfinite(iou).any() else 0.0

    def pixel_accuracy(self) -> float:
        total = self.matrix.sum()
        return float(np.diag(self.matrix).sum() / total * 100.0) if total else 0.0

    def summary(self, class_names: list[str] | tuple[str, ...] | None = None) -> dict:
        iou = self.iou()
        names = list(class_names) if class_names else [str(i) for i in range(self.num_classes)]
        return {
            "miou": round(self.miou(), 4),
            "pixel_accuracy": round(self.pixel_accuracy(), 4),
            "per_class_iou": {n: (None if np.isnan(v) else round(float(v) * 100.0, 4)) for n, v in zip(names, iou)},
            # ground-truth pixels per class: an IoU of 0 means "never found" only where this is above 0
            "gt_pixels": {n: int(v) for n, v in zip(names, self.matrix.sum(1))},
        }
