"""`nfdseg data check` and the same check before training; class lists as people write them; EXIF in datasets."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imagefiles import quadrants, rotated_jpeg
from nfdseg.data import DataConfig, build_source, check_dataset, require_clean_data
from nfdseg.data.classes import parse_class_list
from nfdseg.data.sources import folder_source
from nfdseg.errors import DataError


def _img(path: Path, h=12, w=16, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)


def _mask(path: Path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(arr, np.uint8), mode="L").save(path)


# every mask of the clean tree: 96 pixels of class 0, 64 of class 1, 32 ignore; class 2 never appears
MASK = np.array([0] * 96 + [1] * 64 + [255] * 32, np.uint8).reshape(12, 16)


def _tree(root: Path, n=(4, 2), classes="classes: [bg, thing, stuff]\n"):
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.yaml").write_text(classes)
    for split, count in zip(("train", "val"), n):
        for i in range(count):
            _img(root / "images" / split / f"{i}.png", seed=i)
            _mask(root / "masks" / split / f"{i}.png", MASK)
    return root


def _plant_faults(root: Path):
    """The issue's four faults, plus a stray mask and an unreadable image, all in the train split."""
    _mask(root / "masks/train/0.png", np.where(MASK == 1, 9, MASK))  # out-of-range id 9
    _mask(root / "masks/train/1.png", MASK[:10])  # 16x10 mask for a 16x12 image
    data = (root / "masks/train/2.png").read_bytes()
    (root / "masks/train/2.png").write_bytes(data[: len(data) // 2])  # truncated mask
    _img(root / "images/train/extra.png")  # image without a mask
    _mask(root / "masks/train/stray.png", MASK)  # mask without an image
    data = (root / "images/train/3.png").read_bytes()
    (root / "images/train/3.png").write_bytes(data[: len(data) // 2])  # cut-off image: header fine, pixels short
    rgb = np.random.default_rng(5).integers(0, 255, (12, 16, 3), dtype=np.uint8)
    for name, cut in (("cut.jpg", True), ("tail.jpg", False)):  # a cut-off JPEG; one with data after its end
        _img(root / "images/train" / name)
        Image.fromarray(rgb).save(root / "images/train" / name, quality=90)
        data = (root / "images/train" / name).read_bytes()
        (root / "images/train" / name).write_bytes(data[: len(data) * 2 // 3] if cut else data + b"MOTION" * 50)
        _mask(root / "masks/train" / name.replace(".jpg", ".png"), MASK)


def test_clean_dataset_summary_numbers(tmp_path):
    report = check_dataset(DataConfig(format="folder", root=str(_tree(tmp_path))))
    assert report.ok and report.problems == []
    train, val = report.splits
    assert (train.split, train.images, val.images) == ("train", 4, 2)
    assert train.sizes == {"16x12": 4}
    assert train.pixel_share == {"bg": pytest.approx(60.0), "thing": pytest.approx(40.0), "stuff": 0.0}
    assert train.ignore_share == pytest.approx(100 * 32 / 192, abs=1e-3)
    assert train.never_present == ["stuff"]


def test_hidden_files_are_not_dataset_files(tmp_path):
    root = _tree(tmp_path)
    (root / "images/train/._0.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")  # what macOS copies leave
    _img(root / "images/train/.thumbnails/0.png")
    _mask(root / "masks/train/.backup/9.png", MASK)
    report = check_dataset(DataConfig(format="folder", root=str(root)))
    assert report.ok, report.format_text()
    assert report.splits[0].images == 4


def test_every_problem_listed_in_one_pass(tmp_path):
    root = _tree(tmp_path)
    _plant_faults(root)
    (root / "images/val/0.png").unlink()
    (root / "masks/val/0.png").unlink()
    (root / "images/val/1.png").unlink()
    (root / "masks/val/1.png").unlink()  # val is now empty
    report = check_dataset(DataConfig(format="folder", root=str(root)))
    found = {(p.kind, Path(p.file).name) for p in report.problems}
    assert found == {("ids out of range", "0.png"), ("size mismatch", "1.png"), ("unreadable mask", "2.png"),
                     ("unreadable image", "3.png"), ("unreadable image", "cut.jpg"), ("image without mask", "extra.png"),
                     ("mask without image", "stray.png"), ("empty split", root.name)}, found
    ids = next(p for p in report.problems if p.kind == "ids out of range")
    assert "[9]" in ids.detail and "ids seen: [0, 9, 255]" in ids.detail
    size = next(p for p in report.problems if p.kind == "size mismatch")
    assert "mask 16x10" in size.detail and "16x12" in size.detail
    assert not report.ok and report.to_dict()["problem_counts"]["empty split"] == 1


def test_cli_exit_status_text_and_json(tmp_path):
    root = _tree(tmp_path / "ds")
    cli = [sys.executable, "-m", "nfdseg.app.cli", "data", "check"]
    ok = subprocess.run(cli + [str(root), "--json", str(tmp_path / "ok.json")], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "no problems found" in ok.stdout and "classes never present: stuff" in ok.stdout
    assert json.loads((tmp_path / "ok.json").read_text())["ok"] is True
    _plant_faults(root)
    bad = subprocess.run(cli + [str(root), "--json", "-"], capture_output=True, text=True)
    assert bad.returncode == 1, bad.stderr
    rep = json.loads(bad.stdout)
    assert len(rep["problems"]) == 7 and {p["split"] for p in rep["problems"]} == {"train"}
    cfg = tmp_path / "run.yaml"  # the run config's data section names the same dataset
    cfg.write_text(f"data: {{format: folder, root: {root}}}\n")
    via_cfg = subprocess.run(cli + ["--config", str(cfg), "--split", "val"], capture_output=True, text=True)
    assert via_cfg.returncode == 0 and "val: 2 images" in via_cfg.stdout, via_cfg.stdout + via_cfg.stderr
    usage = subprocess.run(cli, capture_output=True, text=True)
    assert usage.returncode == 2 and "no dataset to check" in usage.stderr and "Traceback" not in usage.stderr


def test_missing_dataset_root_is_named_as_such(tmp_path):
    """A typo in the root is not a missing class list: the check says the root does not exist (what, seen, fix)."""
    typo = tmp_path / "typo"
    r = subprocess.run([sys.executable, "-m", "nfdseg.app.cli", "data", "check", str(typo)], capture_output=True,
                       text=True)
    assert r.returncode == 2 and r.stdout == "", r.stdout + r.stderr
    assert f"the dataset root does not exist: {typo}" in r.stderr and "seen: data.root" in r.stderr
    assert "fix: pass the folder that holds the dataset" in r.stderr
    assert "class list" not in r.stderr and "Traceback" not in r.stderr
    for fmt in ("folder", "cityscapes", "voc", "ade20k"):  # before training too, in every on-disk format
        with pytest.raises(DataError, match="dataset root does not exist") as e:
            require_clean_data(DataConfig(format=fmt, root=str(typo)))
        assert e.value.seen and e.value.fix
    (tmp_path / "file.txt").write_text("not a folder")
    with pytest.raises(DataError, match="dataset root is not a folder"):
        check_dataset(DataConfig(format="folder", root=str(tmp_path / "file.txt")))


def test_training_stops_before_it_starts_with_every_problem(tmp_path):
    root = _tree(tmp_path)
    _plant_faults(root)
    cfg = DataConfig(format="folder", root=str(root))
    with pytest.raises(DataError) as e:
        require_clean_data(cfg)
    msg = str(e.value)
    assert msg.startswith("7 problems") and all(n in msg for n in ("0.png", "1.png", "2.png", "3.png", "cut.jpg",
                                                                    "extra.png", "stray.png"))
    pytest.importorskip("torch", reason="the trainer needs torch (pip install 'nfdseg[train]')")
    from nfdseg.distill.config import load_run_config
    from nfdseg.distill.trainer import train_stage

    run_cfg = load_run_config("quick", {"data": {"format": "folder", "root": str(root), "crop_size": [12, 16],
                                                 "input_size": [12, 16]}})
    with pytest.raises(DataError, match="7 problems"):
        train_stage(run_cfg, "teacher", tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "last.pt").exists()


def test_class_lists_as_people_write_them(tmp_path):
    for text in ("names: [bg, thing, stuff]", "classes: [bg, thing, stuff]", "classes: {0: bg, 1: thing, 2: stuff}",
                 "[bg, thing, stuff]"):
        import yaml

        classes, lut = parse_class_list(yaml.safe_load(text))
        assert classes.names == ("bg", "thing", "stuff") and classes.ignore_index == 255 and lut is None, text
    classes, _ = parse_class_list({"classes": ["a", "b"], "palette": ["#ff0080", [1, 2, 3]], "ignore_index": 254})
    assert classes.palette == ((255, 0, 128), (1, 2, 3)) and classes.ignore_index == 254
    for bad, words in (({"clases": ["a"]}, "did you mean 'classes'"), ({"names": ["a"], "classes": ["a"]}, "both"),
                       ({"classes": ["a", "b"], "palette": [[0, 0, 0]]}, "one colour per class"),
                       ({"classes": ["a", "a"]}, "repeat"), ({"classes": {0: "a", 2: "b"}}, "without gaps"),
                       ({"classes": ["a"], "label_map": {3: "zebra"}}, "no class"),
                       ({"classes": ["a", "b"], "ignore_index": 1}, "also the id")):
        with pytest.raises(DataError, match=words):
            parse_class_list(bad)


def test_label_map_translates_raw_values_and_ignores_the_rest(tmp_path):
    raw = np.array([[0, 7, 7, 26], [0, 3, 255, 0]], np.uint8)  # 3 is in no map entry
    (tmp_path / "classes.yaml").write_text("classes: [background, person, car]\n"
                                           "label_map: {0: background, 7: 1, 26: car, 255: ignore}\n")
    _img(tmp_path / "images/train/a.png", 2, 4)
    _mask(tmp_path / "masks/train/a.png", raw)
    _, mask = folder_source(tmp_path, "train").load(0)
    assert mask.tolist() == [[0, 1, 1, 2], [0, 255, 255, 0]]
    report = check_dataset(DataConfig(format="folder", root=str(tmp_path)), splits=["train"])
    assert report.ok, report.format_text()  # raw 26 and 3 are not out of range: the map translates them
    assert report.splits[0].pixel_share == pytest.approx({"background": 50.0, "person": 100 / 3, "car": 100 / 6}, abs=1e-3)
    # data.classes points at a class list elsewhere (relative to the data root)
    (tmp_path / "other.yaml").write_text("names: [a, b, c, d, e, f, g, h, i, j, k, l, m, n, o, p, q, r, s, t, u, v, w, x, "
                                          "y, z, aa]\n")
    src = build_source(DataConfig(format="folder", root=str(tmp_path), classes="other.yaml", val_split="train"), "val")
    assert src.classes.num_classes == 27 and src.lut is None
    with pytest.raises(DataError, match="applies to the folder format"):  # fixed class lists are not replaced
        build_source(DataConfig(format="voc", root=str(tmp_path), classes="other.yaml"), "val")


@pytest.mark.parametrize("orientation", [6, 8])
def test_exif_rotated_photos_in_a_dataset(tmp_path, orientation):
    (tmp_path / "classes.yaml").write_text("classes: [top, bottom]\n")
    up = quadrants(32, 16)  # a portrait photo as the annotator saw it
    rotated_jpeg(up, orientation, tmp_path / "images/train/phone.jpg")
    portrait = np.zeros((32, 16), np.uint8)
    portrait[16:] = 1  # the annotator's mask: top half 0, bottom half 1
    _mask(tmp_path / "masks/train/phone.png", portrait)
    img, mask = folder_source(tmp_path, "train").load(0)
    assert img.shape == (32, 16, 3) and mask.shape == (32, 16)
    assert img[4, 4, 0] > 200 and img[4, 4, 2] < 60 and img[28, 4, 2] > 200, "the photo is upright, as annotated"
    assert check_dataset(DataConfig(format="folder", root=str(tmp_path)), splits=["train"]).ok
    _mask(tmp_path / "masks/train/phone.png", np.rot90(portrait))  # a mask drawn on the stored, unturned pixels
    report = check_dataset(DataConfig(format="folder", root=str(tmp_path)), splits=["train"])
    (p,) = report.problems
    assert p.kind == "size mismatch" and "EXIF orientation" in p.detail


def test_config_data_section_resolves_through_the_training_resolver(tmp_path, monkeypatch):
    """`data check --config` reads the data section below the training layer through the one resolver the training
    loader uses (run_config_layers over PRESET_DIR): same section on every base chain, same refusals word for word,
    and a preset folder moved in one place moves for both."""
    pytest.importorskip("torch", reason="the training loader validates architectures with torch")
    from nfdseg.config import from_dict
    from nfdseg.distill.config import load_run_config
    from nfdseg import config as data_config
    from nfdseg.data.cli import run_config_data
    from nfdseg.errors import ConfigError

    (tmp_path / "cs.yaml").write_text(f"base: cityscapes_r101_r18\ndata: {{root: {tmp_path / 'cityscapes'}}}\n")
    (tmp_path / "plain.yaml").write_text(f"data: {{format: folder, root: {tmp_path}, crop_size: [32, 48]}}\n")
    (tmp_path / "team").mkdir()
    (tmp_path / "team/team.yaml").write_text("base: voc_r101_r18\ndata: {val_split: trainval, input_size: [64, 64]}\n")
    (tmp_path / "mine.yaml").write_text(f"base: team/team.yaml\ndata: {{root: {tmp_path / 'voc'}}}\n")
    for name in ("cs.yaml", "plain.yaml", "mine.yaml"):
        path = str(tmp_path / name)
        assert from_dict(DataConfig, run_config_data(path)) == load_run_config(path).data, name
    assert from_dict(DataConfig, run_config_data("quick")) == load_run_config("quick").data
    # the refusals are the same error, not two copies that drift (the data CLI once took `base: 5` as a preset name)
    (tmp_path / "five.yaml").write_text("base: 5\n")
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    (tmp_path / "flat.yaml").write_text("data: [1, 2]\n")
    for name, words in (("five.yaml", "must be a preset name or a YAML path"), ("a.yaml", "config bases form a loop"),
                        ("flat.yaml", "'data' must be a mapping")):
        with pytest.raises(ConfigError) as ours:
            run_config_data(str(tmp_path / name))
        with pytest.raises(ConfigError) as training:
            load_run_config(tmp_path / name)
        assert words in str(ours.value) and str(ours.value) == str(training.value), name
    # one preset folder: pointing PRESET_DIR elsewhere changes what both readers call `quick`
    presets = tmp_path / "presets"
    presets.mkdir()
    (presets / "quick.yaml").write_text("data: {synthetic_size: [40, 56], seed: 3}\n")
    monkeypatch.setattr(data_config, "PRESET_DIR", presets)
    assert run_config_data("quick") == {"synthetic_size": [40, 56], "seed": 3}
    assert load_run_config("quick").data == from_dict(DataConfig, run_config_data("quick"))
    assert load_run_config(tmp_path / "plain.yaml").data.seed == 3, "a user file builds on the moved quick"
    (tmp_path / "cityscapes").mkdir()  # the root is there, its folders are not
    cli = [sys.executable, "-m", "nfdseg.app.cli", "data", "check", "--config", str(tmp_path / "cs.yaml")]
    r = subprocess.run(cli, capture_output=True, text=True)
    assert r.returncode == 1 and "cityscapes dataset" in r.stdout and "missing folder" in r.stdout, r.stdout + r.stderr


def test_other_layouts_list_every_pairing_problem(tmp_path):
    cs = tmp_path / "cs"
    for stem, img, gt in (("a_000000_000001", True, True), ("a_000000_000002", True, False),
                          ("a_000000_000003", False, True)):
        if img:
            _img(cs / "leftImg8bit/val/a" / f"{stem}_leftImg8bit.png")
        if gt:
            _mask(cs / "gtFine/val/a" / f"{stem}_gtFine_labelIds.png", np.full((12, 16), 7, np.uint8))
    report = check_dataset(DataConfig(format="cityscapes", root=str(cs)), splits=["val"])
    assert sorted((p.kind, Path(p.file).name) for p in report.problems) == [
        ("image without mask", "a_000000_000002_leftImg8bit.png"),
        ("mask without image", "a_000000_000003_gtFine_labelIds.png")]
    assert report.splits[0].pixel_share["road"] == 100.0  # labelId 7 is trainId 0 (road)
    voc = tmp_path / "voc"
    (voc / "ImageSets/Segmentation").mkdir(parents=True)
    (voc / "ImageSets/Segmentation/val.txt").write_text("x1\nx2\nx3\n")
    _img(voc / "JPEGImages/x1.jpg")
    _mask(voc / "SegmentationClass/x1.png", np.full((12, 16), 21, np.uint8))  # 21 is no VOC class
    _img(voc / "JPEGImages/x2.jpg")
    report = check_dataset(DataConfig(format="voc", root=str(voc)), splits=["val"])
    assert sorted((p.kind, Path(p.file).name) for p in report.problems) == [
        ("ids out of range", "x1.png"), ("image without mask", "x2.jpg"), ("missing image", "x3.jpg")]
