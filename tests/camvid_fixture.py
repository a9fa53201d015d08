"""A tiny CamVid tree in the SegNet layout (train/ trainannot/ val/ valannot/ test/ testannot/), generated."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def camvid_scene(seed: int, h: int = 36, w: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """An RGB street-like picture and its mask (values 0-10 and void 11): sky above, road below, a building
    block, a pole and a pedestrian, each drawn in its CamVid palette colour plus noise."""
    from nfdseg.data.sources import CAMVID_PALETTE

    rng = np.random.default_rng(seed)
    mask = np.full((h, w), 3, np.uint8)  # road
    mask[: h // 3] = 0  # sky
    x0 = int(rng.integers(0, w // 2))
    mask[h // 6: h // 2, x0: x0 + w // 3] = 1  # building
    px = int(rng.integers(2, w - 3))
    mask[h // 4:, px: px + 2] = 2  # pole
    qx = int(rng.integers(0, w - 4))
    mask[h // 2: h - 4, qx: qx + 3] = 9  # pedestrian
    mask[-2:, :4] = 11  # void
    rgb = np.array(CAMVID_PALETTE + ((0, 0, 0),), np.int16)[mask]
    rgb = np.clip(rgb + rng.integers(-20, 21, rgb.shape), 0, 255).astype(np.uint8)
    return rgb, mask


def write_camvid(root: Path, counts=(("train", 6), ("val", 3), ("test", 2))) -> Path:
    for split, n in counts:
        for i in range(n):
            rgb, mask = camvid_scene(zlib.crc32(f"{split}/{i}".encode()))  # the same every run (hash() is salted)
            (root / split).mkdir(parents=True, exist_ok=True)
            (root / f"{split}annot").mkdir(parents=True, exist_ok=True)
            Image.fromarray(rgb).save(root / split / f"0001TP_{i:06d}.png")
            Image.fromarray(mask, mode="L").save(root / f"{split}annot" / f"0001TP_{i:06d}.png")
    return root
