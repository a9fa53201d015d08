"""The onnxruntime backend on a GPU machine whose CUDA provider does not load, with a stand-in onnxruntime
(there is no GPU here): NVIDIA's pip CUDA/cuDNN libraries are preloaded only when a GPU provider is asked for,
and the FALLBACK names what onnxruntime itself wrote (from C++, to file descriptor 2) instead of hiding it.
Also the GPU probe that decides whether a CPU run deserves a warning, on stand-in file systems."""

from __future__ import annotations

import logging
import os
import sys
import types
from pathlib import Path

import pytest

from nfdseg.serve.backends.gpu_probe import probe_gpu
from nfdseg.serve.backends.onnxruntime_backend import OnnxRuntimeBackend
from nfdseg.serve.backends.ort_providers import captured_output, telling_lines

# What onnxruntime-gpu prints when cuDNN is missing (text as onnxruntime writes it, shortened).
NATIVE = ("[E:onnxruntime:Default, provider_bridge_ort.cc:2195 TryGetProviderInfo_CUDA] Failed to load library "
          "libonnxruntime_providers_cuda.so with error: libcudnn.so.9: cannot open shared object file: No such file "
          "or directory\n[W:onnxruntime:Default, onnxruntime_pybind_state.cc:1033 CreateExecutionProviderInstance] "
          "Failed to create CUDAExecutionProvider. Require cuDNN 9.* and CUDA 13.*.\n")


def fake_ort(cuda_loads: bool, with_preload: bool = True) -> types.ModuleType:
    ort = types.ModuleType("onnxruntime")
    ort.__version__ = "1.31.1"
    ort.calls = {"preload": 0, "severity": []}
    ort.get_available_providers = lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]

    class SessionOptions:
        log_severity_level = 2
        intra_op_num_threads = 0

        def add_session_config_entry(self, key, value):
            pass

    class InferenceSession:
        def __init__(self, path, sess_options=None, providers=()):
            ort.calls["severity"].append(sess_options.log_severity_level)
            names = [p[0] if isinstance(p, tuple) else p for p in providers]
            if "CUDAExecutionProvider" in names and not cuda_loads:
                os.write(2, NATIVE.encode())  # where onnxruntime's C++ logger writes
                self.providers = ["CPUExecutionProvider"]
            else:
                self.providers = names

        def get_providers(self):
            return self.providers

        def get_inputs(self):
            return [types.SimpleNamespace(name="input")]

        def get_outputs(self):
            return [types.SimpleNamespace(name="logits")]

    def preload_dlls(cuda=True, cudnn=True, msvc=True, directory=None):
        ort.calls["preload"] += 1

    ort.SessionOptions, ort.InferenceSession = SessionOptions, InferenceSession
    if with_preload:
        ort.preload_dlls = preload_dlls
    return ort


def _open(monkeypatch, ort, device):
    monkeypatch.setitem(sys.modules, "onnxruntime", ort)
    return OnnxRuntimeBackend(Path("model.fp16.onnx"), types.SimpleNamespace(precision="fp16"), device=device)


def test_cuda_that_does_not_load_is_reported_with_onnxruntimes_own_words(monkeypatch, caplog):
    ort = fake_ort(cuda_loads=False)
    with caplog.at_level(logging.WARNING):
        b = _open(monkeypatch, ort, "cuda")
    assert b.device == "cpu" and b.provider == "CPUExecutionProvider"
    assert ort.calls["preload"] == 1, "NVIDIA's pip CUDA/cuDNN libraries are preloaded before a CUDA session"
    assert ort.calls["severity"] == [2], "a GPU session keeps onnxruntime's warnings (the provider's failure is one)"
    assert "libcudnn.so.9: cannot open shared object file" in b.fallback
    assert "Require cuDNN 9.* and CUDA 13.*" in b.fallback
    assert "libcudnn.so.9" in b.describe()["onnxruntime_said"]
    assert any("FALLBACK" in r.message and "libcudnn.so.9" in r.message for r in caplog.records)


def test_cuda_that_loads_has_no_fallback(monkeypatch):
    ort = fake_ort(cuda_loads=True)
    b = _open(monkeypatch, ort, "cuda:0")
    assert b.device == "cuda:0" and b.provider == "CUDAExecutionProvider" and b.fallback == ""
    assert ort.calls["preload"] == 1


def test_cpu_session_neither_preloads_nor_captures(monkeypatch):
    ort = fake_ort(cuda_loads=False)
    b = _open(monkeypatch, ort, "cpu")
    assert b.device == "cpu" and b.fallback == "" and ort.calls["preload"] == 0 and ort.calls["severity"] == [3]


def test_onnxruntime_without_preload_dlls_still_opens_and_says_so(monkeypatch):
    ort = fake_ort(cuda_loads=False, with_preload=False)
    b = _open(monkeypatch, ort, "cuda")
    assert b.device == "cpu" and "has no preload_dlls" in b.fallback and "libcudnn.so.9" in b.fallback


def test_captured_output_takes_descriptor_and_python_writes_and_restores_them(capfd):
    with captured_output() as cap:
        os.write(2, b"native line\n")
        print("python line")
    os.write(1, b"after\n")
    assert "native line" in cap.text and "python line" in cap.text
    assert "after" in capfd.readouterr().out
    assert telling_lines("ok\n[W:onnxruntime:x] Failed to create CUDAExecutionProvider\n") == (
        "[W:onnxruntime:x] Failed to create CUDAExecutionProvider")


@pytest.mark.parametrize("layout, env, found, evidence", [
    ({"proc/driver/nvidia/gpus/0000:01:00.0/information": ""}, {}, True, "/proc/driver/nvidia/gpus lists 1"),
    ({"dev/nvidia3": "", "dev/nvidiactl": ""}, {}, True, "/dev/nvidia3"),  # a container given its 4th GPU only
    ({"etc/nv_tegra_release": "# R36"}, {}, True, "Jetson"),  # Jetson: no /dev/nvidia* at all
    ({"dev/nvidia0": ""}, {"CUDA_VISIBLE_DEVICES": ""}, False, "hides every GPU"),
    ({"dev/nvidia0": ""}, {"CUDA_VISIBLE_DEVICES": "-1"}, False, "hides every GPU"),
    ({"dev/nvidiactl": ""}, {}, False, "no NVIDIA GPU seen"),
])
def test_gpu_probe_reads_more_than_dev_nvidia0(tmp_path, layout, env, found, evidence):
    for rel, text in layout.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    got = probe_gpu(env={"PATH": "", **env}, root=tmp_path, smi=None, modules={})
    assert got.found is found and evidence in got.evidence


def test_gpu_probe_asks_nvidia_smi_and_imported_torch(tmp_path):
    smi = tmp_path / "bin" / "nvidia-smi"
    smi.parent.mkdir()
    smi.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H200 (UUID: GPU-1234)'\n")
    smi.chmod(0o755)
    got = probe_gpu(env={"PATH": str(smi.parent)}, root=tmp_path, smi="nvidia-smi", modules={})
    assert got.found and "NVIDIA H200" in got.evidence
    cuda = types.SimpleNamespace(is_available=lambda: True, device_count=lambda: 2)
    got = probe_gpu(env={"PATH": ""}, root=tmp_path, smi=None, modules={"torch": types.SimpleNamespace(cuda=cuda)})
    assert got.found and "torch sees 2" in got.evidence


def test_without_any_runtime_extra_the_error_names_one_command_per_target(monkeypatch):
    from nfdseg.errors import MissingDependencyError, missing_extra

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError, as on the bare core
    with pytest.raises(MissingDependencyError) as e:
        OnnxRuntimeBackend(Path("model.onnx"), types.SimpleNamespace(precision="fp32"), device="cpu")
    for extra in ("nfdseg[cpu]", "nfdseg[gpu-cu13]", "nfdseg[gpu-cu12]", "nfdseg[jetson]"):
        assert extra in e.value.fix
    hint = missing_extra(ModuleNotFoundError("No module named 'onnxruntime'", name="onnxruntime"), "predict")
    assert "nfdseg[cpu]" in hint.fix and "needs onnxruntime" in hint.what
