"""The synthetic dataset and each on-disk format, on fixture trees the test writes, plus bad-data errors."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nfdseg.data import build_source, preprocess_spec
from nfdseg.distill.dataset import SegDataset
from nfdseg.data.sources import ade20k_source, cityscapes_source, folder_source, voc_source
from nfdseg.data.synthetic import SyntheticScenes, generate_scene
from nfdseg.distill.config import load_run_config
from nfdseg.errors import DataError
from nfdseg.manifest import default_palette


def _img(path: Path, h=12, w=16, seed=0, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, format=fmt)


def _mask(path: Path, values, h=12, w=16, palette=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.resize(np.asarray(values, np.uint8), (h, w))
    im = Image.fromarray(arr, mode="L")
    if palette:
        im = im.convert("P")
        im.putpalette([c for rgb in default_palette(256) for c in rgb])
    im.save(path)


def test_synthetic_is_deterministic_and_covers_classes():
    a, b = generate_scene(7), generate_scene(7)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(generate_scene(8)[0], a[0])
    src = SyntheticScenes("train", 40, (64, 64), seed=0)
    counts = np.zeros(8, np.int64)
    for i in range(40):
        counts += np.bincount(src.load(i)[1].ravel(), minlength=8)
    assert (counts > 0).all(), f"every class appears: {counts}"
    assert counts[4] < counts[0] / 5 and counts[7] < counts[0] / 5, "poles and signs are thin and small"
    val = SyntheticScenes("val", 5, (64, 64), seed=0)
    assert not np.array_equal(val.load(0)[0], src.load(0)[0]), "splits differ"


def _folder_tree(root: Path, bad_id=False):
    (root / "classes.yaml").write_text("names: [bg, thing, stuff]\n")
    for i in range(3):
        _img(root / "images/train" / f"{i}.jpg", seed=i, fmt="JPEG")
        _mask(root / "masks/train" / f"{i}.png", [0, 1, 2, 255] if not (bad_id and i == 2) else [0, 7])


def test_folder_format(tmp_path):
    _folder_tree(tmp_path)
    src = folder_source(tmp_path, "train")
    assert len(src) == 3 and src.classes.names == ("bg", "thing", "stuff")
    img, mask = src.load(0)
    assert img.shape == (12, 16, 3) and set(np.unique(mask)) == {0, 1, 2, 255}


def test_cityscapes_format_maps_label_ids(tmp_path):
    for city, n in (("aachen", 2), ("bonn", 1)):
        for i in range(n):
            stem = f"{city}_000000_{i:06d}"
            _img(tmp_path / "leftImg8bit/train" / city / f"{stem}_leftImg8bit.png", seed=i)
            _mask(tmp_path / "gtFine/train" / city / f"{stem}_gtFine_labelIds.png", [7, 26, 0, 33, 4])
    src = cityscapes_source(tmp_path, "train")
    assert len(src) == 3 and src.classes.num_classes == 19
    _, mask = src.load(0)
    assert set(np.unique(mask)) == {0, 13, 18, 255}  # road, car, bicycle, ignore


def test_voc_format_with_palette_masks_and_aug_list(tmp_path):
    seg = tmp_path / "ImageSets/Segmentation"
    seg.mkdir(parents=True)
    (seg / "train.txt").write_text("2007_000032\n2007_000039\n")
    (seg / "train_aug.txt").write_text("2007_000032\n")
    for i in ("2007_000032", "2007_000039"):
        _img(tmp_path / "JPEGImages" / f"{i}.jpg", fmt="JPEG")
        _mask(tmp_path / "SegmentationClass" / f"{i}.png", [0, 15, 255], palette=True)
    _mask(tmp_path / "SegmentationClassAug/2007_000032.png", [0, 20])
    src = voc_source(tmp_path, "train")
    assert len(src) == 2 and src.classes.num_classes == 21
    assert set(np.unique(src.load(1)[1])) == {0, 15, 255}
    aug = voc_source(tmp_path, "train_aug")
    assert set(np.unique(aug.load(0)[1])) == {0, 20}


def test_ade20k_format_shifts_ids_and_ignores_zero(tmp_path):
    _img(tmp_path / "images/validation/ADE_val_00000001.jpg", fmt="JPEG")
    _mask(tmp_path / "annotations/validation/ADE_val_00000001.png", [0, 1, 150])
    src = ade20k_source(tmp_path, "val")
    assert src.classes.num_classes == 150
    assert set(np.unique(src.load(0)[1])) == {255, 0, 149}


def test_bad_data_names_the_file(tmp_path):
    _folder_tree(tmp_path, bad_id=True)
    src = folder_source(tmp_path, "train")
    with pytest.raises(DataError, match=r"2\.png has class id 7 but the dataset declares 3 classes"):
        src.load(2)
    (tmp_path / "images/train/0.jpg").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"unreadable image .*0\.jpg"):
        src.load(0)
    _mask(tmp_path / "masks/train/1.png", [0], h=5, w=5)
    with pytest.raises(DataError, match="sizes differ"):
        src.load(1)
    _img(tmp_path / "images/train/9.png")
    with pytest.raises(DataError, match=r"image without mask: .*9\.png"):
        folder_source(tmp_path, "train")
    (tmp_path / "images/val").mkdir()
    (tmp_path / "masks/val").mkdir()
    with pytest.raises(DataError, match="empty"):
        folder_source(tmp_path, "val")
    with pytest.raises(DataError, match="class list not found"):
        folder_source(tmp_path / "nowhere", "train")


def test_num_classes_mismatch_and_augmented_views(tmp_path):
    cfg = load_run_config("quick", {"data": {"num_classes": 19, "synthetic_train": 4}})
    with pytest.raises(DataError, match="declares 8 classes"):
        build_source(cfg.data, "train")
    cfg = load_run_config("quick", {"data": {"synthetic_train": 4, "synthetic_size": [40, 40], "crop_size": [32, 32],
                                             "input_size": [24, 24]}})
    src = build_source(cfg.data, "train")
    spec = preprocess_spec(cfg.data)
    train = SegDataset(src, spec, (32, 32), (0.5, 2.0))
    x, y = train[0]
    assert x.shape == (3, 32, 32) and y.shape == (32, 32)
