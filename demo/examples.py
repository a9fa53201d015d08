"""The demo's examples come from the model's own world: the validation split recorded in its manifest.

A model trained on a folder (or Cityscapes, VOC, ADE20K) dataset shows images of that dataset's validation split
when the files are reachable from where the demo runs; a model trained on the built-in synthetic scenes shows
those scenes. When the recorded data is not reachable, the demo has no examples (and says so in the log) rather
than showing another world's pictures.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from nfdseg.errors import NfdsegError

log = logging.getLogger(__name__)

MIN_SIDE = 192  # synthetic scenes are small (96 px); shown enlarged so that a visitor can see them


def example_images(manifest, out_dir: Path, n: int = 4) -> tuple[list[str], str]:
    """(up to n example image paths, a phrase saying where they come from); ([], reason) when there are none.

    Synthetic scenes are written as PNGs into out_dir (the caller removes it); dataset images are used in place."""
    from nfdseg.config import from_dict
    from nfdseg.data import DataConfig, build_source

    data = (manifest.config or {}).get("data") if isinstance(manifest.config, dict) else None
    if not data:
        log.warning("the artifact's manifest records no data config: the demo shows no examples")
        return [], "no data config in the manifest"
    try:
        cfg = from_dict(DataConfig, data, where="data")
        source = build_source(cfg, "val")
    except NfdsegError as e:
        where = data.get("root") or data.get("format")
        log.warning("the artifact's validation data (%s) is not reachable here, so the demo shows no examples: %s",
                    where, e.what)
        return [], f"validation data {where} not reachable"
    if tuple(source.classes.names) != tuple(manifest.classes.names):
        log.warning("the recorded validation data has other classes than the model (%s vs %s): no examples",
                    ", ".join(source.classes.names[:5]), ", ".join(manifest.classes.names[:5]))
        return [], "recorded validation data has other classes"
    picks = sorted({int(round(i)) for i in np.linspace(0, len(source) - 1, min(n, len(source)))})
    if cfg.format != "synthetic":
        return [str(source.pairs[i][0]) for i in picks], f"validation images of {cfg.root}"
    from PIL import Image

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in picks:
        img = source.load(i)[0]
        k = max(1, -(-MIN_SIDE // min(img.shape[:2])))  # integer enlargement: crisp, and resizes back exactly
        p = out_dir / f"val_{i:04d}.png"
        Image.fromarray(np.kron(img, np.ones((k, k, 1), np.uint8))).save(p)
        paths.append(str(p))
    return paths, f"synthetic validation scenes ({cfg.val_split} split, seed {cfg.seed})"
