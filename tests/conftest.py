"""Shared fixtures: a tiny config and one tiny trained teacher + student, built once per test session."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")
# per-machine measurements (the CPU amp choice) go to a fresh folder per test session, never the user's cache
os.environ["NFDSEG_CACHE_DIR"] = tempfile.mkdtemp(prefix="nfdseg-cache-")

TINY_OVERRIDES = {
    "data": {"synthetic_train": 64, "synthetic_val": 12, "synthetic_size": [48, 48], "crop_size": [48, 48],
             "input_size": [48, 48]},
    "teacher": {"model": {"arch": "deeplabv3_resnet_tiny"}, "train": {"iters": 8, "batch_size": 4, "eval_every": 4,
                                                                        "ckpt_every": 4, "log_every": 2}},
    "student": {"model": {"arch": "deeplabv3_resnet_tiny"}, "train": {"iters": 6, "batch_size": 4, "eval_every": 3,
                                                                        "ckpt_every": 2, "log_every": 2}},
}


@pytest.fixture(scope="session")
def tiny_cfg():
    from nfdseg.distill.config import load_run_config

    return load_run_config("quick", TINY_OVERRIDES)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, tiny_cfg) -> Path:
    """A tiny teacher and NFD student trained on synthetic 48 px scenes: <run>/teacher, <run>/student."""
    from nfdseg.distill.trainer import train_stage

    run = tmp_path_factory.mktemp("run")
    train_stage(tiny_cfg, "teacher", run / "teacher", progress=False)
    train_stage(tiny_cfg, "student", run / "student", teacher_dir=run / "teacher", progress=False)
    return run


@pytest.fixture(scope="session")
def exported(trained_run) -> Path:
    """The tiny student exported (fp32 + fp16 ONNX, parity, Triton repo; no engine): <run>/export."""
    from nfdseg.export.run import ExportConfig, run_export

    cfg = ExportConfig(engine="off", triton_dir=str(trained_run / "triton"))
    summary = run_export(trained_run / "student", trained_run / "export", cfg)
    assert summary["parity"]["passed"], summary["parity"]["text"]
    return trained_run / "export"


def tensorrt_like():
    """An importable TensorRT (or TensorRT-RTX) module, or None."""
    from nfdseg.errors import MissingDependencyError
    from nfdseg.serve.backends.trt_compat import import_tensorrt

    try:
        return import_tensorrt(allow_rtx=True)
    except MissingDependencyError:
        return None


def auto_cpu_backend(export_dir: Path, onnx: str = "model.onnx", threads: int = 0) -> str:
    """What `backend="auto"` picked on this CPU for `onnx`: OpenVINO's timed probe against onnxruntime is cached in
    the export's backend_choice.json (serve/backends/cpu_choice.py); no entry (OpenVINO absent, or not probed)
    means onnxruntime. The pick depends on the machine's timing, so a test compares with it, never with a name."""
    import json

    choice = Path(export_dir) / "backend_choice.json"
    entries = json.loads(choice.read_text()) if choice.is_file() else {}
    picks = {v["backend"] for k, v in entries.items() if f"|{onnx}|" in k and k.endswith(f"|threads {threads}")}
    assert len(picks) <= 1, f"{choice} holds conflicting picks for {onnx}: {entries}"
    return picks.pop() if picks else "onnxruntime"


def block_openvino(monkeypatch) -> None:
    """Make `import openvino` fail for the rest of a test, as on a machine without it."""
    import builtins

    real_import = builtins.__import__

    def no_openvino(name, *args, **kwargs):
        if name == "openvino" or name.startswith("openvino."):
            raise ImportError("No module named 'openvino'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_openvino)
