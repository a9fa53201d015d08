"""The data layer: dataset sources (synthetic or on-disk formats) and their config; numpy only, no torch.

The torch view of a source, `SegDataset`, belongs to training: nfdseg.distill.dataset."""

from __future__ import annotations

from nfdseg.errors import DataError
from nfdseg.manifest import ClassSpec, PreprocessSpec

from .check import CheckReport, check_dataset, require_clean_data
from .classes import class_file
from .config import DataConfig
from .sources import FORMATS, FileSource, check_mask_ids, folder_source
from .synthetic import SYNTHETIC_CLASSES, SyntheticScenes


def build_source(cfg, split: str):
    """cfg is a DataConfig; split is 'train' or 'val' (mapped to the configured split names)."""
    if cfg.format == "synthetic":
        n = cfg.synthetic_train if split == "train" else cfg.synthetic_val
        name = cfg.train_split if split == "train" else cfg.val_split
        source = SyntheticScenes(name, n, tuple(cfg.synthetic_size), cfg.seed)
    else:
        name = cfg.train_split if split == "train" else cfg.val_split
        classes_at = class_file(cfg)
        source = folder_source(cfg.root, name, classes_at) if cfg.format == "folder" else \
            FORMATS[cfg.format](cfg.root, name)
    classes = source.classes
    if cfg.num_classes and cfg.num_classes != classes.num_classes:
        raise DataError(
            f"data.num_classes is {cfg.num_classes} but the {cfg.format} dataset declares {classes.num_classes} classes",
            seen=f"classes: {', '.join(classes.names[:8])}{'...' if classes.num_classes > 8 else ''}",
            fix="remove data.num_classes or correct it",
        )
    return source


def preprocess_spec(cfg) -> PreprocessSpec:
    return PreprocessSpec(mean=tuple(cfg.mean), std=tuple(cfg.std), color_order="RGB",
                          input_size=tuple(cfg.input_size), size_policy="resize")


__all__ = ["build_source", "check_dataset", "require_clean_data", "CheckReport", "preprocess_spec", "DataConfig", "FileSource", "SyntheticScenes", "SYNTHETIC_CLASSES",
           "ClassSpec", "check_mask_ids"]
