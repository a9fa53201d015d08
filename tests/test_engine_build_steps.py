"""onnx2engine's steps against a stand-in TensorRT (the real one needs an NVIDIA GPU or tensorrt-rtx): which
network source, builder flags and precision each TensorRT generation gets, and what lands on disk (the engine,
its build log, its manifest, the timing cache) under the names nfdseg/artifacts.py gives them."""

from __future__ import annotations

import enum
import json
import types

import pytest

from nfdseg.artifacts import ENGINE_LOG_SUFFIX, ENGINE_SUFFIX, TIMING_CACHE, manifest_path


class _Severity(enum.IntEnum):
    INTERNAL_ERROR = 0
    ERROR = 1
    WARNING = 2
    INFO = 3
    VERBOSE = 4


def _fake_trt(calls: list):
    """The slice of the TensorRT Python API onnx2engine uses; every call that shapes the build is noted."""

    class ILogger:
        Severity = _Severity

        def __init__(self):
            pass

    class Cache:
        def __init__(self, blob):
            self.blob = blob

        def serialize(self):
            return b"timing-cache-bytes"

    class Config:
        def set_memory_pool_limit(self, pool, size):
            calls.append(("workspace", size))

        def set_flag(self, flag):
            calls.append(("flag", flag))

        def add_optimization_profile(self, profile):
            calls.append(("profile", dict(profile.shapes)))

        def create_timing_cache(self, blob):
            calls.append(("cache_in", bytes(blob)))
            return Cache(blob)

        def set_timing_cache(self, cache, ignore_mismatch):
            self.cache = cache
            return True

        def get_timing_cache(self):
            return self.cache

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, lo, mid, hi):
            self.shapes[name] = (lo, mid, hi)

    class Builder:
        platform_has_fast_fp16 = True

        def __init__(self, logger):
            self.logger = logger

        def create_builder_config(self):
            return Config()

        def create_network(self, flags):
            calls.append(("network_flags", flags))
            return object()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            self.logger.log(_Severity.VERBOSE, "tactic timing")
            self.logger.log(_Severity.INFO, "engine built")
            return b"ENGINE-BYTES"

    class OnnxParser:
        def __init__(self, network, logger):
            pass

        def parse(self, data):
            calls.append(("parsed", data))
            return True

    return types.SimpleNamespace(
        ILogger=ILogger, Builder=Builder, OnnxParser=OnnxParser,
        BuilderFlag=types.SimpleNamespace(FP16="FP16", INT8="INT8"),
        MemoryPoolType=types.SimpleNamespace(WORKSPACE="WORKSPACE"),
        NetworkDefinitionCreationFlag=types.SimpleNamespace(STRONGLY_TYPED=0))


@pytest.mark.parametrize("version, precision, source, flags, built, fp16_path, strongly_typed", [
    ("10.13.0.35", "fp16", "model.fp16.onnx", [], "fp16", "strongly_typed", True),
    ("10.8.0.43", "fp16", "model.onnx", ["FP16"], "fp16", "builder_flag", False),
    ("10.8.0.43", "fp32", "model.onnx", [], "fp32", "", False),
    ("10.8.0.43", "int8", "model.int8.onnx", ["INT8", "FP16"], "int8", "int8_builder_flag", False),
    ("11.0.0.1", "int8", "model.int8.onnx", [], "int8", "int8_strongly_typed", True),
])
def test_onnx2engine_steps_and_files(exported, tmp_path, monkeypatch, version, precision, source, flags, built,
                                     fp16_path, strongly_typed):
    import nfdseg.export.onnx2engine as o2e
    from nfdseg.manifest import read_manifest
    from nfdseg.serve.backends.trt_compat import GpuInfo, TrtModule

    calls: list = []
    monkeypatch.setattr(o2e, "import_tensorrt", lambda allow_rtx=True: TrtModule(_fake_trt(calls), "tensorrt", version))
    monkeypatch.setattr(o2e, "current_gpu", lambda: GpuInfo("Stand-in GPU", "9.0"))
    int8 = tmp_path / "model.int8.onnx"
    int8.write_bytes(b"qdq-onnx")  # the stand-in parser reads bytes; only which file it reads matters here
    out = tmp_path / "engine"
    cache = out / TIMING_CACHE
    fp32_m = read_manifest(exported / "model.json")

    m = o2e.onnx2engine(exported / "model.onnx", fp32_m, out, precision, exported / "model.fp16.onnx",
                        o2e.EngineProfile(1, 2, 4), timing_cache=cache, workspace_mb=64, int8_onnx=int8)

    source_path = int8 if source == "model.int8.onnx" else exported / source
    assert ("parsed", source_path.read_bytes()) in calls and ("workspace", 64 << 20) in calls
    assert [c[1] for c in calls if c[0] == "flag"] == flags
    assert ("network_flags", 1 if strongly_typed else 0) in calls
    h, w = fp32_m.preprocess.input_size
    assert [c for c in calls if c[0] == "profile"] == [("profile", {"input": ((1, 3, h, w), (2, 3, h, w), (4, 3, h, w))})]
    assert m.artifact == f"{fp32_m.architecture}_{built}_trt{'.'.join(version.split('.')[:2])}_sm90{ENGINE_SUFFIX}"
    assert (m.precision, m.engine.precision_built, m.engine.strongly_typed) == (built, built, strongly_typed)
    assert m.config["engine_build"] == {"fp16_path": fp16_path, "timing_cache": "new", "log_lines_dropped": 0}
    assert m.parent == source_path.name and m.engine.gpu_name == "Stand-in GPU"
    engine = out / m.artifact
    assert engine.read_bytes() == b"ENGINE-BYTES"
    assert engine.with_suffix(ENGINE_LOG_SUFFIX).read_text() == "[INFO] engine built\n"
    assert json.loads(manifest_path(engine).read_text())["artifact"] == m.artifact
    assert cache.read_bytes() == b"timing-cache-bytes" and m.engine.timing_cache == str(cache)

    again = o2e.onnx2engine(exported / "model.onnx", fp32_m, out, precision, exported / "model.fp16.onnx",
                            o2e.EngineProfile(1, 2, 4), timing_cache=cache, workspace_mb=64, int8_onnx=int8)
    assert again.engine.timing_cache_reused and ("cache_in", b"timing-cache-bytes") in calls


def test_export_folder_patterns_cover_the_engine_files():
    from fnmatch import fnmatch

    from nfdseg.export.stage import EXPORT_PATTERNS

    for name in (TIMING_CACHE, "x" + ENGINE_SUFFIX, "x" + ENGINE_LOG_SUFFIX):
        assert any(fnmatch(name, p) for p in EXPORT_PATTERNS), name
