"""A procedurally generated street-like scene dataset: the built-in default, deterministic from a seed.

Eight classes (background + 7). Classes are told apart by shape and texture more than colour:
each class's colour is drawn from a wide, overlapping range, so a model must learn structure.
The scenes have scale variation, occlusion (objects drawn in depth order), thin structures
(poles, 1-2 px), small objects (signs, people), background clutter, colour jitter and noise.
"""

from __future__ import annotations

import numpy as np

from nfdseg.manifest import IGNORE_INDEX, ClassSpec

from .config import DEFAULT_SIZE

CLASS_NAMES = ("background", "road", "building", "vegetation", "pole", "person", "car", "sign")
PALETTE = (
    (0, 0, 0), (128, 64, 128), (70, 70, 70), (107, 142, 35),
    (153, 153, 153), (220, 20, 60), (0, 0, 142), (220, 220, 0),
)
SYNTHETIC_CLASSES = ClassSpec(names=CLASS_NAMES, palette=PALETTE, ignore_index=IGNORE_INDEX)

# Base hue ranges overlap on purpose (e.g. cars and buildings share greys and blues).
_BASE_RGB = {
    0: ((60, 60, 60), 90), 1: ((110, 100, 110), 60), 2: ((120, 110, 100), 80), 3: ((90, 130, 60), 70),
    4: ((130, 130, 130), 80), 5: ((160, 90, 90), 90), 6: ((90, 100, 140), 100), 7: ((190, 170, 60), 80),
}


def _color(rng: np.random.Generator, cls: int) -> np.ndarray:
    base, spread = _BASE_RGB[cls]
    if rng.random() < 0.15:  # occasionally any colour at all
        return rng.uniform(20, 235, 3)
    return np.clip(np.asarray(base, np.float64) + rng.uniform(-spread, spread, 3), 0, 255)


def _texture(rng: np.random.Generator, kind: str, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """A pattern in [0, 1] over the grid; each class prefers one kind of texture."""
    h, w = yy.shape
    if kind == "stripes":
        period = rng.uniform(3, 9)
        angle = rng.uniform(-0.4, 0.4)
        return 0.5 + 0.5 * np.sign(np.sin((yy * np.cos(angle) + xx * np.sin(angle)) * 2 * np.pi / period))
    if kind == "grid":
        p = int(rng.integers(4, 9))
        return (((yy.astype(int) // (p // 2 + 1)) % 2) * ((xx.astype(int) // (p // 2 + 1)) % 2)).astype(np.float64)
    if kind == "noise":
        return rng.random((h, w))
    if kind == "blotch":
        small = rng.random((max(h // 4, 2), max(w // 4, 2)))
        return np.kron(small, np.ones((4, 4)))[:h, :w]
    if kind == "gradient":
        return (yy / max(h - 1, 1)) * rng.uniform(0.3, 1.0)
    return np.zeros((h, w))


_CLASS_TEXTURE = {0: "gradient", 1: "stripes", 2: "grid", 3: "noise", 4: "gradient", 5: "blotch", 6: "stripes", 7: "grid"}


def _paint(img, mask, region, cls, rng, yy, xx, label=None):
    kind = _CLASS_TEXTURE[cls] if rng.random() < 0.8 else ("noise", "stripes", "grid", "blotch")[rng.integers(4)]
    tex = _texture(rng, kind, yy, xx)
    col = _color(rng, cls)
    contrast = rng.uniform(0.25, 0.6)
    shade = (1 - contrast) + contrast * tex
    img[region] = col[None, :] * shade[region][:, None]
    mask[region] = cls if label is None else label


def generate_scene(seed: int, size: tuple[int, int] = DEFAULT_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """One scene: (uint8 HxWx3 RGB image, uint8 HxW mask with ids 0..7). Same seed, same scene."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.zeros((h, w, 3), np.float64)
    mask = np.zeros((h, w), np.uint8)
    _paint(img, mask, np.ones((h, w), bool), 0, rng, yy, xx)
    horizon = rng.uniform(0.35, 0.6) * h
    # road: a trapezoid below the horizon
    spread = rng.uniform(0.1, 0.6)
    left = w * (0.5 - spread * (yy - horizon) / max(h - horizon, 1) - 0.1)
    right = w * (0.5 + spread * (yy - horizon) / max(h - horizon, 1) + 0.1)
    _paint(img, mask, (yy > horizon) & (xx > left) & (xx < right), 1, rng, yy, xx)
    # buildings along the horizon, then vegetation blobs, then objects in depth order
    for _ in range(rng.integers(1, 4)):
        x0 = rng.uniform(-0.1, 0.9) * w
        bw, bh = rng.uniform(0.15, 0.4) * w, rng.uniform(0.2, 0.5) * h
        _paint(img, mask, (xx > x0) & (xx < x0 + bw) & (yy > horizon - bh) & (yy < horizon + 0.05 * h), 2, rng, yy, xx)
    for _ in range(rng.integers(1, 4)):
        cy, cx = rng.uniform(0.1, 0.7) * h, rng.uniform(0, 1) * w
        r = rng.uniform(0.05, 0.18) * min(h, w)
        wob = 1 + 0.25 * np.sin(np.arctan2(yy - cy, xx - cx) * rng.integers(3, 7))
        _paint(img, mask, (yy - cy) ** 2 + (xx - cx) ** 2 < (r * wob) ** 2, 3, rng, yy, xx)
    # clutter: background-labelled distractors with random textures
    for _ in range(rng.integers(2, 6)):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(1.5, 0.06 * min(h, w) + 2)
        _paint(img, mask, (yy - cy) ** 2 + (xx - cx) ** 2 < r**2, int(rng.integers(0, 8)), rng, yy, xx, label=0)
    objects = []
    for _ in range(rng.integers(1, 5)):
        objects.append(("pole", rng.uniform(horizon, h)))
    for _ in range(rng.integers(0, 4)):
        objects.append(("car", rng.uniform(horizon, h)))
    for _ in range(rng.integers(0, 5)):
        objects.append(("person", rng.uniform(horizon, h)))
    objects.sort(key=lambda o: o[1])  # far (near horizon) first, near last: near ones occlude
    for kind, base_y in objects:
        depth = (base_y - horizon) / max(h - horizon, 1)  # 0 far .. 1 near: scale variation
        scale = 0.3 + 1.2 * depth
        cx = rng.uniform(0, w)
        if kind == "pole":
            pw = rng.choice([1.0, 1.5, 2.0, 3.0]) * max(scale, 0.5)
            ph = (0.25 + 0.35 * scale) * h
            _paint(img, mask, (np.abs(xx - cx) < pw / 2 + 0.01) & (yy < base_y) & (yy > base_y - ph), 4, rng, yy, xx)
            if rng.random() < 0.7:  # a small sign on top of the pole
                s = (2.0 + 3.0 * scale) * min(h, w) / 96
                sy = base_y - ph
                _paint(img, mask, np.abs(xx - cx) + np.abs(yy - sy) < s, 7, rng, yy, xx)
        elif kind == "car":
            cw, chh = (0.12 + 0.2 * scale) * w, (0.06 + 0.1 * scale) * h
            body = (np.abs(xx - cx) < cw / 2) & (yy < base_y) & (yy > base_y - chh)
            roof = (np.abs(xx - cx) < cw / 3) & (yy <= base_y - chh) & (yy > base_y - 1.6 * chh)
            _paint(img, mask, body | roof, 6, rng, yy, xx)
        else:
            ph = (0.06 + 0.16 * scale) * h
            body = ((xx - cx) / (ph * 0.22 + 0.5)) ** 2 + ((yy - (base_y - ph * 0.4)) / (ph * 0.4)) ** 2 < 1
            head = (xx - cx) ** 2 + (yy - (base_y - ph * 0.9)) ** 2 < (ph * 0.13 + 0.5) ** 2
            _paint(img, mask, body | head, 5, rng, yy, xx)
    # photometric jitter: global gain/bias per channel, then sensor noise
    img = img * rng.uniform(0.7, 1.3, 3)[None, None, :] + rng.uniform(-25, 25, 3)[None, None, :]
    img = img + rng.normal(0, rng.uniform(2, 12), img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), mask


class SyntheticScenes:
    """`length` scenes of `size` (height, width) for one split; item i is scene seed (seed, split, i)."""

    classes = SYNTHETIC_CLASSES

    def __init__(self, split: str, length: int, size: tuple[int, int] = DEFAULT_SIZE, seed: int = 0):
        self.split, self.length, self.size, self.seed = split, length, tuple(size), seed
        # "tune" is a held-out split for choosing hyper-parameters, so "val" figures stay untuned.
        self._split_code = {"train": 1, "val": 2, "test": 3, "tune": 4}.get(split, 9)

    def __len__(self) -> int:
        return self.length

    def name(self, index: int) -> str:
        return f"synthetic/{self.split}/{index:06d}"

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= index < self.length:
            raise IndexError(index)
        scene_seed = (self.seed * 1_000_003 + self._split_code * 10_000_019 + index) & 0x7FFFFFFF
        return generate_scene(scene_seed, self.size)
