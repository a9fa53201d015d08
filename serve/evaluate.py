"""mIoU and per-class IoU of a Segmenter on a dataset, at each mask's own resolution."""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np

from tqdm.auto import tqdm

from nfdseg.errors import DataError
from nfdseg.metrics import ConfusionMatrix

from .bench import percentiles
from .segmenter import Segmenter


def load_eval_source(seg: Segmenter, data: str, fmt: str, split: str):
    """`data='default'`: the validation split recorded in the artifact's manifest (synthetic by default).
    Otherwise a dataset root in format `fmt` (folder | cityscapes | voc | ade20k | camvid)."""
    from nfdseg.config import from_dict
    from nfdseg.data.config import DataConfig
    from nfdseg.data import build_source

    if data == "default":
        cfg = from_dict(DataConfig, seg.manifest.config.get("data", {}))
    else:
        cfg = DataConfig(format=fmt, root=data, val_split=split)
    src = build_source(cfg, "val")
    if src.classes.num_classes != seg.manifest.num_classes:
        raise DataError(f"the dataset has {src.classes.num_classes} classes, the model predicts {seg.manifest.num_classes}",
                        seen=f"dataset {', '.join(src.classes.names[:6])}...; model {', '.join(seg.class_names[:6])}...",
                        fix="evaluate on the dataset the model was trained for, or pass --format/--split correctly")
    return src


def evaluate(seg: Segmenter, source, batch: int = 8, limit: int = 0, progress: bool = True,
             on_batch: Callable[[int, np.ndarray, list], None] | None = None) -> dict[str, Any]:
    """mIoU (%), pixel accuracy (%) and per-class IoU (%) of `seg` on `source`, scored at each label's own size.

    The one evaluation of the project: the trainer (through a Segmenter over its in-memory model), export
    parity, `nfdseg eval` and the pipeline all call it, so the figures they report are measured the same way:
    the shared preprocessing to the model's input size, the model, then the label map resized (nearest) to
    the mask's resolution. `limit` > 0 scores the first `limit` images. `on_batch(first_index, raw_output,
    predictions)` sees every batch's graph output (parity compares them). latency_per_image is in ms.
    """
    n = min(len(source), limit) if limit else len(source)
    cm = ConfusionMatrix(seg.manifest.num_classes, source.classes.ignore_index)
    lat = []
    for start in tqdm(range(0, n, batch), desc="eval", disable=not progress, unit="batch"):
        items = [source.load(i) for i in range(start, min(start + batch, n))]
        t = time.perf_counter()
        rgb = [im for im, _ in items]
        out = seg.infer_arrays(rgb)
        preds = seg.postprocess(out, [im.shape[:2] for im in rgb])
        lat.append((time.perf_counter() - t) * 1e3 / len(items))
        for p, (_, mask) in zip(preds, items):
            cm.update(p.labels, mask)
        if on_batch is not None:
            on_batch(start, out, preds)
    return {"images": n, **cm.summary(seg.class_names), "latency_per_image": percentiles(lat or [0.0]),
            "segmenter": seg.describe()}
