"""Test helpers that write image files the way cameras and phones do."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

# EXIF orientation -> the np.rot90 turn that stores an upright picture so that a viewer shows it upright:
# 6 means "rotate the stored pixels 90° clockwise to display", so the stored pixels are the upright ones
# turned 90° counter-clockwise (k=1); 8 is the opposite.
_STORE_TURN = {6: 1, 8: -1, 3: 2}


def quadrants(h: int = 32, w: int = 16) -> np.ndarray:
    """An upright HxWx3 picture with four flat colour quadrants (red, green / blue, yellow), so that any
    rotation or flip shows up at the quadrant centres even after JPEG compression."""
    up = np.zeros((h, w, 3), np.uint8)
    up[: h // 2, : w // 2] = (255, 0, 0)
    up[: h // 2, w // 2:] = (0, 255, 0)
    up[h // 2:, : w // 2] = (0, 0, 255)
    up[h // 2:, w // 2:] = (255, 255, 0)
    return up


def quadrant_colours(img: np.ndarray) -> list[list[int]]:
    """The colours at the four quadrant centres of an HxWx3 image: top-left, top-right, bottom-left, bottom-right."""
    h, w = img.shape[:2]
    return [img[y, x].tolist() for y, x in ((h // 4, w // 4), (h // 4, 3 * w // 4), (3 * h // 4, w // 4),
                                            (3 * h // 4, 3 * w // 4))]


def rotated_jpeg(upright: np.ndarray, orientation: int = 6, path: Path | None = None) -> bytes:
    """JPEG bytes (also written to `path` when given) whose stored pixels are turned and whose EXIF orientation
    tag says how to turn them back, as a phone writes a portrait photo."""
    stored = np.ascontiguousarray(np.rot90(upright, k=_STORE_TURN[orientation]))
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(stored).save(buf, format="JPEG", quality=95, exif=exif)
    data = buf.getvalue()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return data
