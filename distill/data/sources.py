"""On-disk dataset formats: generic folder, Cityscapes, Pascal VOC 2012 (+SBD aug), ADE20K.

A source is a list of (image, mask) file pairs plus a ClassSpec and an optional label lookup
table that maps raw mask values to train ids. Every read is validated and a bad file is named.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from nfdseg.errors import DataError, InputError
from nfdseg.manifest import ClassSpec, default_palette
from nfdseg.preprocess import load_image

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

CITYSCAPES_NAMES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)
# labelIds -> trainIds for the 19 evaluated classes; everything else is ignored (255).
CITYSCAPES_ID_TO_TRAIN = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
                          24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
CITYSCAPES_PALETTE = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
    (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
    (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
)
VOC_NAMES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)


@dataclass
class FileSource:
    """Image/mask file pairs of one split with their classes and an optional raw-value -> train-id table."""

    pairs: list[tuple[Path, Path]]
    classes: ClassSpec
    split: str
    lut: np.ndarray | None = None  # uint8[256]

    def __len__(self) -> int:
        return len(self.pairs)

    def name(self, index: int) -> str:
        return str(self.pairs[index][0])

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        img_path, mask_path = self.pairs[index]
        try:
            img = load_image(img_path)
        except InputError as e:
            raise DataError(f"unreadable image {img_path}", seen=e.what, fix="replace or remove this file") from None
        mask = read_mask(mask_path)
        if self.lut is not None:
            mask = self.lut[mask]
        if mask.shape != img.shape[:2]:
            raise DataError(
                f"image and mask sizes differ for {img_path.name}",
                seen=f"image {img.shape[1]}x{img.shape[0]}, mask {mask_path} {mask.shape[1]}x{mask.shape[0]}",
                fix="masks must have exactly the image's width and height",
            )
        check_mask_ids(mask, self.classes, mask_path)
        return img, mask


def read_mask(path: Path) -> np.ndarray:
    """Read a single-channel label PNG (mode L or P: the palette index is the class id) as uint8 HxW."""
    try:
        m = Image.open(path)
        m.load()
    except FileNotFoundError:
        raise DataError(f"mask file not found: {path}", fix="every image needs a mask with the same stem") from None
    except Exception as e:  # PIL raises many types for corrupt files
        raise DataError(f"unreadable mask {path}", seen=f"{type(e).__name__}: {e}", fix="replace this file") from None
    if m.mode not in ("L", "P", "I", "I;16"):
        raise DataError(f"mask {path} is not a single-channel label image", seen=f"mode {m.mode}",
                        fix="save masks as 8-bit grayscale or palette PNGs whose values are class ids")
    arr = np.asarray(m)
    if arr.max(initial=0) > 255:
        raise DataError(f"mask {path} has values above 255", seen=f"max {int(arr.max())}",
                        fix="class ids must fit in 8 bits (ignore index 255)")
    return arr.astype(np.uint8)


def check_mask_ids(mask: np.ndarray, classes: ClassSpec, path: Path | str) -> None:
    """Raise DataError when a mask holds an id that is neither a class nor the ignore index."""
    ids = np.unique(mask)
    bad = [int(i) for i in ids if i >= classes.num_classes and i != classes.ignore_index]
    if bad:
        raise DataError(
            f"mask {path} has class id {bad[0]} but the dataset declares {classes.num_classes} classes "
            f"(ids 0-{classes.num_classes - 1}, ignore {classes.ignore_index})",
            seen=f"ids present: {[int(i) for i in ids]}",
            fix="check the class list / num_classes or the label mapping",
        )


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTS)


def _require_dir(path: Path, what: str) -> None:
    if not path.is_dir():
        raise DataError(f"{what} folder not found: {path}", fix="check the data root and the split name")


def _nonempty(pairs: list, root: Path, split: str) -> None:
    if not pairs:
        raise DataError(f"split '{split}' under {root} is empty", fix="check the data root, split name and file layout")


def folder_source(root: str | Path, split: str) -> FileSource:
    """root/classes.yaml (names, optional palette and ignore_index), root/images/<split>/, root/masks/<split>/.

    A mask has the image's stem and a .png suffix; an image without one (or the reverse) is an error.
    """
    root = Path(root)
    cls_file = root / "classes.yaml"
    if not cls_file.is_file():
        raise DataError(f"class list not found: {cls_file}",
                        fix="write classes.yaml with `names: [background, ...]` (optional palette, ignore_index)")
    meta = yaml.safe_load(cls_file.read_text()) or {}
    names = meta.get("names") if isinstance(meta, dict) else None
    if not names or not isinstance(names, list):
        raise DataError(f"{cls_file} has no `names:` list", seen=repr(meta)[:200])
    palette = meta.get("palette") or default_palette(len(names))
    if len(palette) != len(names):
        raise DataError(f"{cls_file}: palette has {len(palette)} colours for {len(names)} classes")
    classes = ClassSpec(tuple(str(n) for n in names), tuple(tuple(int(v) for v in c) for c in palette),
                        int(meta.get("ignore_index", 255)))
    img_dir, mask_dir = root / "images" / split, root / "masks" / split
    _require_dir(img_dir, "image")
    _require_dir(mask_dir, "mask")
    images = _images_in(img_dir)
    masks = {p.relative_to(mask_dir).with_suffix(""): p for p in mask_dir.rglob("*.png")}
    pairs = []
    for img in images:
        key = img.relative_to(img_dir).with_suffix("")
        if key not in masks:
            raise DataError(f"image {img} has no mask", seen=f"expected {mask_dir / key}.png",
                            fix="add the mask or remove the image")
        pairs.append((img, masks.pop(key)))
    if masks:
        stray = next(iter(masks.values()))
        raise DataError(f"mask {stray} has no image", fix="add the image or remove the mask")
    _nonempty(pairs, root, split)
    return FileSource(pairs, classes, split)


def cityscapes_source(root: str | Path, split: str) -> FileSource:
    """Cityscapes: leftImg8bit/<split>/<city>/*_leftImg8bit.png with gtFine/<split>/<city>/*_gtFine_labelIds.png."""
    root = Path(root)
    img_dir = root / "leftImg8bit" / split
    _require_dir(img_dir, "Cityscapes leftImg8bit")
    pairs = []
    for img in sorted(img_dir.rglob("*_leftImg8bit.png")):
        city = img.parent.name
        stem = img.name[: -len("_leftImg8bit.png")]
        mask = root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png"
        if not mask.is_file():
            raise DataError(f"Cityscapes image {img} has no labelIds mask", seen=f"expected {mask}")
        pairs.append((img, mask))
    _nonempty(pairs, root, split)
    lut = np.full(256, 255, np.uint8)
    for label_id, train_id in CITYSCAPES_ID_TO_TRAIN.items():
        lut[label_id] = train_id
    return FileSource(pairs, ClassSpec(CITYSCAPES_NAMES, CITYSCAPES_PALETTE, 255), split, lut)


def voc_source(root: str | Path, split: str) -> FileSource:
    """Pascal VOC 2012 (VOCdevkit/VOC2012): ImageSets/Segmentation/<split>.txt, JPEGImages, SegmentationClass.

    split 'train_aug' reads the SBD-augmented list and masks from SegmentationClassAug.
    """
    root = Path(root)
    list_file = root / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not list_file.is_file():
        raise DataError(f"VOC split list not found: {list_file}", fix="use split train, val, trainval or train_aug")
    mask_dir = root / ("SegmentationClassAug" if split == "train_aug" else "SegmentationClass")
    ids = [line.strip() for line in list_file.read_text().splitlines() if line.strip()]
    pairs = [(root / "JPEGImages" / f"{i}.jpg", mask_dir / f"{i}.png") for i in ids]
    for img, _ in pairs:
        if not img.is_file():
            raise DataError(f"VOC image listed in {list_file.name} is missing: {img}")
    _nonempty(pairs, root, split)
    return FileSource(pairs, ClassSpec(VOC_NAMES, default_palette(21), 255), split)


def ade20k_source(root: str | Path, split: str) -> FileSource:
    """ADE20K (ADEChallengeData2016): images/<training|validation>/*.jpg, annotations/<...>/*.png.

    Raw 0 ('other') becomes ignore; raw 1..150 become train ids 0..149. Class names are read from
    objectInfo150.csv when present.
    """
    root = Path(root)
    folder = {"train": "training", "val": "validation"}.get(split, split)
    img_dir, ann_dir = root / "images" / folder, root / "annotations" / folder
    _require_dir(img_dir, "ADE20K image")
    pairs = []
    for img in sorted(img_dir.glob("*.jpg")):
        mask = ann_dir / f"{img.stem}.png"
        if not mask.is_file():
            raise DataError(f"ADE20K image {img} has no annotation", seen=f"expected {mask}")
        pairs.append((img, mask))
    _nonempty(pairs, root, split)
    names = [f"class_{i:03d}" for i in range(1, 151)]
    info = root / "objectInfo150.csv"
    if info.is_file():
        rows = list(csv.DictReader(info.open()))
        if len(rows) == 150 and "Name" in rows[0]:
            names = [r["Name"].split(";")[0].strip() for r in rows]
    lut = np.full(256, 255, np.uint8)
    lut[1:151] = np.arange(150, dtype=np.uint8)
    return FileSource(pairs, ClassSpec(tuple(names), default_palette(150), 255), split, lut)


FORMATS = {"folder": folder_source, "cityscapes": cityscapes_source, "voc": voc_source, "ade20k": ade20k_source}
