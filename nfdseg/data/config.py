"""Where the data comes from and how it is shaped: the data layer's config (no torch)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from nfdseg.manifest import IMAGENET_MEAN, IMAGENET_STD

from .sources import FORMATS

# The formats data.format accepts: the generated scenes and every on-disk loader (sources.FORMATS).
DATA_FORMATS = ("synthetic", *FORMATS)
# The quick default's image size, (height, width) in pixels: scenes, crops and the network input.
DEFAULT_SIZE = (96, 96)


@dataclass(frozen=True)
class DataConfig:
    """format: synthetic | folder | cityscapes | voc | ade20k | camvid. Sizes are (height, width) in pixels.
    cache_mb: keep the decoded training images in memory when the split fits in this many MiB (0: decode at
    every step)."""

    format: Literal[DATA_FORMATS] = "synthetic"
    root: str = ""
    classes: str = ""  # folder format: the class list file; "" is ROOT/classes.yaml (see nfdseg/data/classes.py)
    train_split: str = "train"
    val_split: str = "val"
    synthetic_train: int = 2000
    synthetic_val: int = 200
    synthetic_size: tuple[int, int] = DEFAULT_SIZE
    seed: int = 0
    crop_size: tuple[int, int] = DEFAULT_SIZE
    input_size: tuple[int, int] = DEFAULT_SIZE
    scale_range: tuple[float, float] = (0.75, 1.5)
    hflip: bool = True
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    num_classes: int = 0  # 0: take it from the dataset; otherwise it must agree with the dataset
    max_val_images: int = 0  # 0: all
    cache_mb: int = 4096

