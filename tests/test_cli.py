"""The command line: help texts, distill/bench/eval/predict runs, exit codes, clean errors."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import auto_cpu_backend
from nfdseg.app.cli import build_parser


def run(*args):
    return subprocess.run([sys.executable, "-m", "nfdseg.app.cli", *map(str, args)], capture_output=True, text=True)


def test_every_command_has_help():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert {"distill", "export", "check", "bench", "eval", "predict"} <= set(sub.choices)
    for name, p in sub.choices.items():
        for action in p._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"{name} {action.option_strings} has no help"


def test_value_sets_have_one_home(tmp_path):
    """Engine modes, engine precisions and serving precisions are each defined once; the CLIs, ExportConfig's
    Literal fields and the backends take them from there, and a value outside the set is a ConfigError."""
    import types

    from nfdseg.config import choices
    from nfdseg.errors import ConfigError
    from nfdseg.export.onnx2engine import ENGINE_MODES, ENGINE_PRECISIONS
    from nfdseg.export.run import ExportConfig, run_export
    from nfdseg.serve.backends import PRECISIONS
    from nfdseg.serve.backends.torch_backend import TorchBackend

    sub = next(a for a in build_parser()._actions if a.dest == "command")

    def option(command, flag):
        return next(a for a in sub.choices[command]._actions if flag in a.option_strings).choices

    assert option("export", "--engine") is ENGINE_MODES and option("pipeline", "--engine") is ENGINE_MODES
    assert option("export", "--engine-precision") is ENGINE_PRECISIONS
    assert option("predict", "--precision") is PRECISIONS
    assert choices(ExportConfig, "engine") == ENGINE_MODES == ("auto", "on", "off")
    assert choices(ExportConfig, "engine_precision") == ENGINE_PRECISIONS == ("fp16", "fp32", "int8")
    # an ExportConfig built in code is checked before any work: no checkpoint needed to refuse it
    with pytest.raises(ConfigError, match="auto, on, off"):
        run_export(tmp_path / "no-checkpoint", tmp_path / "out", ExportConfig(engine="yes"))
    with pytest.raises(ConfigError, match="fp16, fp32, int8"):
        run_export(tmp_path / "no-checkpoint", tmp_path / "out", ExportConfig(engine_precision="int4"))
    with pytest.raises(ConfigError, match="use one of auto, fp32, fp16, bf16"):
        TorchBackend(tmp_path / "best.pt", types.SimpleNamespace(precision="fp32"), device="cpu", precision="int8")


def test_config_errors_exit_2_without_traceback(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("studnet: {}\n")
    r = run("distill", "--config", bad, "--out", tmp_path / "o")
    assert r.returncode == 2 and "did you mean 'student'" in r.stderr and "Traceback" not in r.stderr
    r = run("distill", "--config", tmp_path / "missing.yaml")
    assert r.returncode == 2 and "config file not found" in r.stderr


def _reference_iou(exported, n):
    """Per-class IoU (%) of the exported model on the first n validation images, counted here pixel by pixel
    (not through ConfusionMatrix or nfdseg.serve.evaluate): NaN where a class is in neither map."""
    from nfdseg.serve import Segmenter
    from nfdseg.serve.evaluate import load_eval_source

    seg = Segmenter(exported, backend="onnxruntime", device="cpu")
    src = load_eval_source(seg, "default", "folder", "val")
    inter, union = np.zeros(seg.manifest.num_classes), np.zeros(seg.manifest.num_classes)
    items = [src.load(i) for i in range(n)]
    preds = seg.predict([image for image, _ in items])  # one batch, as `nfdseg eval --batch 8` runs them
    for (_, mask), pred in zip(items, (p.labels for p in preds)):
        valid = mask != src.classes.ignore_index
        for c in range(seg.manifest.num_classes):
            inter[c] += np.sum((pred == c) & (mask == c) & valid)
            union[c] += np.sum(((pred == c) | (mask == c)) & valid)
    with np.errstate(invalid="ignore"):
        return np.where(union > 0, inter / np.maximum(union, 1) * 100, np.nan), seg.class_names


def test_eval_reports_the_models_miou_and_thresholds_gate_the_exit_code(exported, tmp_path):
    iou, names = _reference_iou(exported, 8)
    ref = float(np.nanmean(iou))
    ok = run("eval", exported, "--quiet", "--limit", "8", "--min-miou", f"{ref - 0.01:.4f}", "--json", tmp_path / "e.json")
    assert ok.returncode == 0, ok.stderr
    report = json.loads((tmp_path / "e.json").read_text())
    assert report["images"] == 8 and report["checks"]["passed"]
    assert report["miou"] == pytest.approx(ref, abs=1e-3)
    got = [np.nan if report["per_class_iou"][n] is None else report["per_class_iou"][n] for n in names]
    np.testing.assert_allclose(got, iou, atol=1e-3)  # NaN where NaN (a class in neither map)
    # auto on a CPU: onnxruntime, or OpenVINO where its timed probe (cached in the export) found it faster
    assert report["segmenter"]["backend"] == auto_cpu_backend(exported) and report["segmenter"]["device"] == "cpu"
    fail = run("eval", exported, "--quiet", "--limit", "8", "--min-miou", f"{ref + 0.01:.4f}")
    assert fail.returncode == 1 and "CHECK FAILED: mIoU" in fail.stdout
    slow = run("eval", exported, "--quiet", "--limit", "8", "--max-p95-ms", "0.0001")
    assert slow.returncode == 1 and "p95 latency" in slow.stdout


def test_bench_writes_report(exported, tmp_path):
    r = run("bench", exported, "--batch", "1,2", "--concurrency", "2", "--iters", "3", "--requests", "12",
            "--duration", "0", "--json", tmp_path / "b.json")
    assert r.returncode == 0, r.stderr
    rep = json.loads((tmp_path / "b.json").read_text())
    assert [row["batch"] for row in rep["batches"]] == [1, 2]
    for row in rep["batches"]:  # throughput is the batch over the median latency of the same calls
        for kind in ("infer", "end_to_end"):
            p50, ips = row[kind]["p50_ms"], row[f"{kind}_images_per_s"]
            assert p50 > 0  # p50 is rounded to 0.001 ms, images/s to 0.01
            assert row["batch"] * 1e3 / (p50 + 5e-4) - 0.005 <= ips <= row["batch"] * 1e3 / (p50 - 5e-4) + 0.005, kind
    assert rep["concurrency"][0]["batcher"]["errors"] == 0 and rep["concurrency"][0]["batcher"]["requests"] == 12
    assert rep["segmenter"]["device"] == "cpu" and rep["segmenter"]["backend"] == auto_cpu_backend(exported)
    assert "onnxruntime" in rep["versions"]
    assert rep["budget"]["batches"]["min_iters"] == 3 and rep["budget"]["batches"]["duration_s"] == 0
    assert all(row["infer"]["n"] == 3 for row in rep["batches"]), "--duration 0: exactly the minimum count"
    assert "concurrency   2" in r.stdout


def test_predict_writes_pngs_and_skips_bad_files(exported, tmp_path):
    good = tmp_path / "a.png"
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(good)
    bad = tmp_path / "b.png"
    bad.write_bytes(b"nope")
    r = run("predict", exported, good, bad, "--out", tmp_path / "pred")
    assert r.returncode == 1 and "skipped" in r.stdout
    assert np.asarray(Image.open(tmp_path / "pred/a_labels.png")).shape == (20, 30)
    assert (tmp_path / "pred/a_overlay.png").is_file()


def test_camera_loop_example_on_an_image_folder(exported, tmp_path):
    from pathlib import Path

    for i in range(2):
        Image.fromarray(np.full((30, 40, 3), 60 * i, np.uint8)).save(tmp_path / f"f{i}.png")
    script = Path(__file__).resolve().parents[1] / "examples/camera_loop.py"
    r = subprocess.run([sys.executable, str(script), str(exported), "--source", str(tmp_path), "--save",
                        str(tmp_path / "out")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "f0:" in r.stdout and "2 frames: p50" in r.stdout
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == ["f0_labels.png", "f0_overlay.png", "f1_labels.png", "f1_overlay.png"], written
    from nfdseg.serve import Segmenter

    seg = Segmenter(exported, backend="onnxruntime", device="cpu")
    for i in range(2):
        labels = np.asarray(Image.open(tmp_path / f"out/f{i}_labels.png"))
        assert np.array_equal(labels, seg.predict(np.full((30, 40, 3), 60 * i, np.uint8)).labels)
        assert np.asarray(Image.open(tmp_path / f"out/f{i}_overlay.png")).shape == (30, 40, 3)
