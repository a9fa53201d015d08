"""Where the data comes from and how it is shaped: the data layer's config (no torch)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DataConfig:
    """format: synthetic | folder | cityscapes | voc | ade20k. Sizes are (height, width) in pixels."""

    format: str = "synthetic"
    root: str = ""
    classes: str = ""  # folder format: the class list file; "" is ROOT/classes.yaml (see distill/data/classes.py)
    train_split: str = "train"
    val_split: str = "val"
    synthetic_train: int = 2000
    synthetic_val: int = 200
    synthetic_size: tuple[int, int] = (96, 96)
    seed: int = 0
    crop_size: tuple[int, int] = (96, 96)
    input_size: tuple[int, int] = (96, 96)
    scale_range: tuple[float, float] = (0.75, 1.5)
    hflip: bool = True
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    num_classes: int = 0  # 0: take it from the dataset; otherwise it must agree with the dataset
    max_val_images: int = 0  # 0: all
