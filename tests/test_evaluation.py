"""One evaluation: the trainer, `nfdseg eval` and parity score the same way, at each label's own resolution."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nfdseg.data.synthetic import CLASS_NAMES, generate_scene

SIZES = [(40, 56), (64, 48), (48, 48), (36, 72), (56, 40), (44, 60)]


def _mixed_size_folder(root: Path) -> None:
    """A folder dataset of synthetic scenes whose images all differ in size (none equals the model's input)."""
    root.mkdir(parents=True)
    (root / "classes.yaml").write_text("names: [" + ", ".join(CLASS_NAMES) + "]\n")
    for split, count, offset in (("train", 24, 0), ("val", 12, 1000)):
        (root / "images" / split).mkdir(parents=True)
        (root / "masks" / split).mkdir(parents=True)
        for i in range(count):
            img, mask = generate_scene(offset + i, SIZES[i % len(SIZES)])
            Image.fromarray(img).save(root / "images" / split / f"{i:03d}.png")
            Image.fromarray(mask).save(root / "masks" / split / f"{i:03d}.png")


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory):
    from nfdseg.distill.config import load_run_config
    from nfdseg.distill.trainer import train_stage
    from nfdseg.export.run import ExportConfig, run_export

    root = tmp_path_factory.mktemp("mixed")
    _mixed_size_folder(root / "data")
    cfg = load_run_config("quick", {
        "data": {"format": "folder", "root": str(root / "data"), "crop_size": [32, 32], "input_size": [32, 32]},
        "teacher": {"model": {"arch": "deeplabv3_resnet_tiny"},
                    "train": {"iters": 6, "batch_size": 4, "eval_every": 3, "ckpt_every": 3, "log_every": 3}},
    })
    ckpt = train_stage(cfg, "teacher", root / "teacher", progress=False)
    summary = run_export(root / "teacher", root / "export", ExportConfig(engine="off", fp16=False))
    return root, ckpt, summary


def test_checkpoint_miou_equals_eval_of_its_onnx_on_mixed_sizes(mixed_run, tmp_path):
    root, ckpt, _ = mixed_run
    out = tmp_path / "eval.json"
    r = subprocess.run([sys.executable, "-m", "nfdseg.app.cli", "eval", str(root / "export"), "--data", "default",
                        "--backend", "onnxruntime", "--json", str(out), "--quiet"], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    evaluated = json.loads(out.read_text())
    assert evaluated["images"] == 12 == ckpt.metrics["images"]
    assert abs(evaluated["miou"] - ckpt.metrics["miou"]) <= 0.01, (evaluated["miou"], ckpt.metrics["miou"])


def test_scores_are_taken_at_the_labels_own_size(mixed_run):
    """Independent reference: predictions at input size, upsampled by nearest to each mask, one confusion matrix."""
    from nfdseg.data import build_source
    from nfdseg.data.config import DataConfig
    from nfdseg.config import from_dict
    from nfdseg.serve import Segmenter
    from nfdseg.serve.evaluate import evaluate

    root, ckpt, _ = mixed_run
    seg = Segmenter(root / "export" / "model.onnx", backend="onnxruntime", device="cpu")
    source = build_source(from_dict(DataConfig, ckpt.config["data"]), "val")
    got = evaluate(seg, source, batch=5, progress=False)

    n = len(CLASS_NAMES)
    inter, union = np.zeros(n), np.zeros(n)
    for i in range(len(source)):
        img, mask = source.load(i)
        labels = seg.predict(img).labels
        assert labels.shape == mask.shape == img.shape[:2]
        for c in range(n):
            inter[c] += np.sum((labels == c) & (mask == c))
            union[c] += np.sum((labels == c) | (mask == c))
    present = union > 0
    expected = float(np.mean(inter[present] / union[present]) * 100)
    assert abs(got["miou"] - expected) < 1e-3


def test_parity_scores_with_the_same_evaluation(mixed_run):
    root, ckpt, summary = mixed_run
    assert summary["parity"]["passed"]
    report = json.loads((root / "export" / "parity.json").read_text())
    assert report["reference"] == "checkpoint"
    assert abs(report["reference_miou"] - ckpt.metrics["miou"]) < 1e-9
