"""The command line: help texts, distill/bench/eval/predict runs, exit codes, clean errors."""

import json
import subprocess
import sys

import numpy as np
from PIL import Image

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


def test_config_errors_exit_2_without_traceback(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("studnet: {}\n")
    r = run("distill", "--config", bad, "--out", tmp_path / "o")
    assert r.returncode == 2 and "did you mean 'student'" in r.stderr and "Traceback" not in r.stderr
    r = run("distill", "--config", tmp_path / "missing.yaml")
    assert r.returncode == 2 and "config file not found" in r.stderr


def test_eval_thresholds_gate_the_exit_code(exported, tmp_path):
    ok = run("eval", exported, "--quiet", "--limit", "8", "--min-miou", "0", "--json", tmp_path / "e.json")
    assert ok.returncode == 0, ok.stderr
    report = json.loads((tmp_path / "e.json").read_text())
    assert report["images"] == 8 and 0 <= report["miou"] <= 100 and report["checks"]["passed"]
    assert report["segmenter"]["backend"] == "onnxruntime"
    fail = run("eval", exported, "--quiet", "--limit", "8", "--min-miou", "101")
    assert fail.returncode == 1 and "CHECK FAILED: mIoU" in fail.stdout
    slow = run("eval", exported, "--quiet", "--limit", "8", "--max-p95-ms", "0.0001")
    assert slow.returncode == 1 and "p95 latency" in slow.stdout


def test_bench_writes_report(exported, tmp_path):
    r = run("bench", exported, "--batch", "1,2", "--concurrency", "2", "--iters", "3", "--requests", "12",
            "--duration", "0", "--json", tmp_path / "b.json")
    assert r.returncode == 0, r.stderr
    rep = json.loads((tmp_path / "b.json").read_text())
    assert [row["batch"] for row in rep["batches"]] == [1, 2]
    for row in rep["batches"]:
        assert 0 < row["infer"]["p50_ms"] <= row["infer"]["p99_ms"]
    assert rep["concurrency"][0]["batcher"]["errors"] == 0 and rep["concurrency"][0]["batcher"]["requests"] == 12
    assert rep["segmenter"]["device"] == "cpu" and "onnxruntime" in rep["versions"]
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
    assert "f0.png:" in r.stdout and "2 frames: p50" in r.stdout
    assert (tmp_path / "out/f1.png.png").is_file()
