"""The TensorRT builder and runtime checks that can run without a GPU: version and profile rules as plain
functions, timing-cache handling against a builder config that refuses the cache, and a real build with
TensorRT-RTX (which builds without a GPU) through a TensorRT-10-like front."""

from __future__ import annotations

import importlib.abc
import importlib.util
import types
from dataclasses import replace
from pathlib import Path

import pytest

from nfdseg.errors import ArtifactError, ConfigError, EngineNotRunnableHere
from nfdseg.manifest import EngineInfo, read_manifest
from nfdseg.serve.backends.trt_compat import (CudaSetupError, GpuInfo, TrtModule, binding_mismatch, cuda_device_index, current_gpu,
                               engine_version_problem, fp16_build_path, version_tuple)

from conftest import tensorrt_like


def test_version_rules_match_tensorrt():
    assert version_tuple("10.13.2.6") == (10, 13, 2, 6) and version_tuple("11.0.0rc1") == (11, 0, 0)
    refuse, warn = engine_version_problem("10.13.0.35", "10.13.2.6")  # another patch: TensorRT refuses it
    assert "10.13.0.35" in refuse and warn == ""
    refuse, warn = engine_version_problem("10.13.2.6", "10.13.2.3")  # same release, another build: a warning
    assert refuse == "" and "another build" in warn
    assert engine_version_problem("10.13.2", "10.13.2.6") == ("", "")


def test_fp16_build_path_by_version():
    assert fp16_build_path(TrtModule(None, "tensorrt", "10.8.0"), True) == "builder_flag"
    assert fp16_build_path(TrtModule(None, "tensorrt", "10.12.0"), True) == "strongly_typed"  # flag deprecated
    assert fp16_build_path(TrtModule(None, "tensorrt", "10.13.3"), False) == "builder_flag"  # no FP16 ONNX
    assert fp16_build_path(TrtModule(None, "tensorrt", "11.0.0"), True) == "strongly_typed"
    assert fp16_build_path(TrtModule(None, "tensorrt_rtx", "1.7.1"), True) == "strongly_typed"
    with pytest.raises(ArtifactError, match="only from an FP16 ONNX"):
        fp16_build_path(TrtModule(None, "tensorrt", "11.0.0"), False)


def test_engine_compatibility_warnings_and_rtx_validity(exported):
    from nfdseg.serve.backends.tensorrt_backend import check_engine_compatible, check_engine_validity

    m = read_manifest(exported / "model.json")
    eng = replace(m, kind="engine", engine=EngineInfo("10.13.2.6", "tensorrt", "NVIDIA H100 PCIe", "9.0", "fp16",
                                                      "fp16", True))
    warns = check_engine_compatible(eng, TrtModule(None, "tensorrt", "10.13.2.6"), GpuInfo("NVIDIA H100 80GB HBM3", "9.0"))
    assert len(warns) == 1 and "same compute capability 9.0" in warns[0]
    assert check_engine_compatible(eng, TrtModule(None, "tensorrt", "10.13.2.6"), GpuInfo("NVIDIA H100 PCIe", "9.0")) == []
    # the RTX runtime's own validity check decides about the GPU
    assert check_engine_compatible(replace(eng, engine=replace(eng.engine, tensorrt_flavor="tensorrt_rtx")),
                                   TrtModule(None, "tensorrt_rtx", "10.13.2.6"), GpuInfo("RTX 4090", "8.9"),
                                   runtime_checks_gpu=True) == []
    ev = types.SimpleNamespace(VALID=0, SUBOPTIMAL=1, INVALID=2)
    fake_trt = types.SimpleNamespace(EngineValidity=ev)
    runtime = types.SimpleNamespace(get_engine_validity=lambda blob: (ev.INVALID, "UNSUPPORTED_CC"))
    with pytest.raises(EngineNotRunnableHere, match="cannot run here"):
        check_engine_validity(runtime, b"", fake_trt, "x.engine")
    runtime.get_engine_validity = lambda blob: (ev.SUBOPTIMAL, "VERSION_MISMATCH")
    assert "suboptimally" in check_engine_validity(runtime, b"", fake_trt, "x.engine")
    assert check_engine_validity(object(), b"", fake_trt, "x.engine") == ""


@pytest.mark.parametrize("refusal", ["rtx_invalid", "other_release", "no_gpu", "deserialize_failed"])
def test_parity_lists_an_engine_refused_here_as_not_run(exported, trained_run, tmp_path, monkeypatch, refusal):
    """An engine that this machine's checks refuse (TensorRT-RTX's own validity check included) is "not run
    here" in parity; an engine TensorRT cannot deserialize is a parity failure."""
    import shutil

    import nfdseg.serve.backends as backends
    from nfdseg.export.parity import ParityBudget, run_parity
    from nfdseg.serve.backends.tensorrt_backend import check_engine_compatible, check_engine_validity

    out = tmp_path / "export"
    shutil.copytree(exported, out)
    (out / "x.engine").write_bytes(b"not really an engine")
    m = read_manifest(exported / "model.json")
    eng = replace(m, kind="engine", engine=EngineInfo("1.7.1.116", "tensorrt_rtx", "NVIDIA H100", "9.0", "fp16",
                                                      "fp16", True))
    ev = types.SimpleNamespace(VALID=0, SUBOPTIMAL=1, INVALID=2)
    real_open = backends.open_backend

    def open_backend(path, backend="auto", **kw):
        if Path(path).suffix != ".engine":
            return real_open(path, backend, **kw)
        if refusal == "rtx_invalid":
            runtime = types.SimpleNamespace(get_engine_validity=lambda blob: (ev.INVALID, "UNSUPPORTED_CC"))
            check_engine_validity(runtime, b"", types.SimpleNamespace(EngineValidity=ev), Path(path).name)
        elif refusal == "other_release":
            check_engine_compatible(eng, TrtModule(None, "tensorrt_rtx", "1.8.0.1"), GpuInfo("NVIDIA H100", "9.0"))
        elif refusal == "no_gpu":
            check_engine_compatible(eng, TrtModule(None, "tensorrt_rtx", "1.7.1.116"), None)
        raise ArtifactError(f"TensorRT could not deserialize {path}", fix="rebuild the engine on this machine")

    monkeypatch.setattr(backends, "open_backend", open_backend)
    report = run_parity(out, trained_run / "student", ParityBudget(max_images=2), engine_allow_rtx=True)
    not_run = {n["artifact"]: n["reason"] for n in report["not_run"]}
    failed = {f["artifact"]: f["rule"] for f in report["failures"]}
    if refusal == "deserialize_failed":
        assert "x.engine" in failed and "x.engine" not in not_run and not report["passed"], report
        assert "could not deserialize" in failed["x.engine"]
    else:
        assert "x.engine" in not_run and not failed and report["passed"], report
        expected = {"rtx_invalid": "TensorRT says engine x.engine cannot run here", "other_release": "1.8.0.1",
                    "no_gpu": "needs a CUDA GPU"}[refusal]
        assert expected in not_run["x.engine"]


class _FailingImport(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """A package that is installed (found on the path) but whose import raises `error`, as a TensorRT wheel
    without its libnvinfer does."""

    def __init__(self, name: str, error: Exception):
        self.name, self.error = name, error

    def find_spec(self, fullname, path=None, target=None):
        return importlib.util.spec_from_loader(fullname, self) if fullname == self.name else None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        raise self.error


@pytest.mark.parametrize("error", [OSError("libnvinfer.so.10: cannot open shared object file"),
                                   ImportError("libnvinfer.so.10: cannot open shared object file"),
                                   ModuleNotFoundError("No module named 'tensorrt_libs'", name="tensorrt_libs")],
                         ids=["oserror", "importerror", "dependency-missing"])
def test_broken_tensorrt_is_not_read_as_absent(monkeypatch, error):
    """An installed TensorRT that fails to import raises the real error, and TensorRT-RTX does not stand in."""
    import sys

    from nfdseg.errors import BrokenDependencyError, MissingDependencyError
    from nfdseg.serve.backends.trt_compat import import_tensorrt

    monkeypatch.delitem(sys.modules, "tensorrt", raising=False)
    monkeypatch.setitem(sys.modules, "tensorrt_rtx", types.SimpleNamespace(__version__="1.7.1.116"))
    monkeypatch.setattr(sys, "meta_path", [_FailingImport("tensorrt", error)] + sys.meta_path)
    with pytest.raises(BrokenDependencyError) as caught:
        import_tensorrt(allow_rtx=True)
    e = caught.value
    assert isinstance(e, MissingDependencyError) and "installed but cannot be imported" in e.what
    assert e.seen == f"{type(error).__name__}: {error}" and "tensorrt" in e.fix
    assert "not installed" not in e.what


def test_absent_tensorrt_lets_rtx_stand_in(monkeypatch):
    import sys

    from nfdseg.errors import BrokenDependencyError, MissingDependencyError
    from nfdseg.serve.backends.trt_compat import import_tensorrt

    monkeypatch.delitem(sys.modules, "tensorrt", raising=False)
    monkeypatch.setattr(sys, "meta_path", [_FailingImport("tensorrt", ModuleNotFoundError("No module named "
                                                          "'tensorrt'", name="tensorrt"))] + sys.meta_path)
    monkeypatch.setitem(sys.modules, "tensorrt_rtx", types.SimpleNamespace(__version__="1.7.1.116"))
    tm = import_tensorrt(allow_rtx=True)
    assert (tm.flavor, tm.version) == ("tensorrt_rtx", "1.7.1.116")
    with pytest.raises(MissingDependencyError, match="TensorRT is not installed") as caught:
        import_tensorrt(allow_rtx=False)
    assert not isinstance(caught.value, BrokenDependencyError)
    monkeypatch.setitem(sys.modules, "tensorrt_rtx", None)  # neither: absent, not broken
    with pytest.raises(MissingDependencyError, match="TensorRT is not installed"):
        import_tensorrt(allow_rtx=True)


def test_engine_auto_does_not_skip_a_broken_tensorrt(trained_run, tmp_path, monkeypatch):
    """--engine auto skips the engine only where TensorRT is absent; a broken install stops the export."""
    import nfdseg.export.onnx2engine as o2e
    from nfdseg.errors import BrokenDependencyError, MissingDependencyError
    from nfdseg.export.parity import ParityBudget
    from nfdseg.export.run import ExportConfig, run_export

    def broken(allow_rtx=True):
        raise BrokenDependencyError("the tensorrt package is installed but cannot be imported", seen="OSError: x")

    monkeypatch.setattr(o2e, "import_tensorrt", broken)
    cfg = ExportConfig(engine="auto", fp16=False, fp16_calibration_images=0, parity=ParityBudget(max_images=2))
    with pytest.raises(BrokenDependencyError):
        run_export(trained_run / "student", tmp_path / "broken", cfg)

    def absent(allow_rtx=True):
        raise MissingDependencyError("TensorRT is not installed")

    monkeypatch.setattr(o2e, "import_tensorrt", absent)
    summary = run_export(trained_run / "student", tmp_path / "absent", cfg)
    assert summary["engine"] == {"path": None, "reason": "TensorRT is not installed"}


class _FakeCudart:
    """cuda-python's runtime module as seen on a machine whose driver is `driver` (CUDA's integer form)."""

    def __init__(self, driver: int, runtime: int = 13040, count_err: int = 0, count: int = 1):
        self.driver, self.runtime, self.count_err, self.count = driver, runtime, count_err, count

    def cudaDriverGetVersion(self):
        return 0, self.driver

    def cudaRuntimeGetVersion(self):
        return 0, self.runtime

    def cudaGetDeviceCount(self):
        return self.count_err, self.count

    def cudaGetDeviceProperties(self, i):
        return 0, types.SimpleNamespace(name=b"NVIDIA Jetson Orin\x00", major=8, minor=7)

    def cudaGetErrorString(self, err):
        return 0, b"some CUDA error"


def test_current_gpu_never_swallows_a_binding_mismatch(monkeypatch):
    import nfdseg.serve.backends.trt_compat as tc

    assert "CUDA 13.4" in binding_mismatch(12060, 13040) and binding_mismatch(13000, 12080) == ""
    assert binding_mismatch(12020, 12080) == ""  # minor-version compatibility within a major
    monkeypatch.setattr(tc, "cuda_runtime", lambda: _FakeCudart(12060))  # JetPack 6 driver, cuda-python 13
    with pytest.raises(CudaSetupError, match="does not match") as e:
        current_gpu()
    assert "cuda-python>=12,<13" in e.value.fix
    monkeypatch.setattr(tc, "cuda_runtime", lambda: _FakeCudart(0))  # no NVIDIA driver at all
    assert current_gpu() is None
    monkeypatch.setattr(tc, "cuda_runtime", lambda: _FakeCudart(13000, count_err=100))  # cudaErrorNoDevice
    assert current_gpu() is None
    monkeypatch.setattr(tc, "cuda_runtime", lambda: _FakeCudart(13000, count_err=999))
    with pytest.raises(CudaSetupError, match="cannot see the GPU"):
        current_gpu()
    monkeypatch.setattr(tc, "cuda_runtime", lambda: _FakeCudart(12060, runtime=12060))
    assert current_gpu() == GpuInfo("NVIDIA Jetson Orin", "8.7")
    with pytest.raises(CudaSetupError, match="no CUDA GPU 1"):
        current_gpu(1)
    assert cuda_device_index("cuda:1") == 1 and cuda_device_index("auto") == 0
    with pytest.raises(ConfigError, match="not on 'cpu'"):
        cuda_device_index("cpu")


def test_profile_must_contain_the_served_size(exported):
    from nfdseg.export.onnx2engine import EngineProfile

    m = read_manifest(exported / "model.json")  # input size 48x48
    with pytest.raises(ConfigError, match="excludes the model's input size 48x48"):
        EngineProfile(1, 2, 4, (64, 64), (64, 64), (64, 64)).shapes(m)
    with pytest.raises(ConfigError, match="min <= opt <= max"):
        EngineProfile(1, 2, 4, (64, 64), (32, 32), (96, 96)).shapes(m)
    shapes = EngineProfile(1, 2, 4, (32, 32), (48, 48), (96, 128)).shapes(m)
    assert shapes["input"] == ((1, 3, 32, 32), (2, 3, 48, 48), (4, 3, 96, 128))


class _RefusingConfig:
    """A builder config whose set_timing_cache refuses caches with bytes in them (another GPU/TensorRT)."""

    def __init__(self, refuse_all=False, give_back=True):
        self.refuse_all, self.give_back, self.attached = refuse_all, give_back, None

    def create_timing_cache(self, blob):
        return types.SimpleNamespace(blob=bytes(blob), serialize=lambda: b"fresh-cache")

    def set_timing_cache(self, cache, ignore_mismatch):
        assert ignore_mismatch is False
        if self.refuse_all or cache.blob:
            return False
        self.attached = cache
        return True

    def get_timing_cache(self):
        return self.attached if self.give_back else None


def test_timing_cache_refused_is_replaced_and_recorded(tmp_path):
    from nfdseg.export.onnx2engine import attach_timing_cache, serialized_timing_cache

    path = tmp_path / "timing.cache"
    cfg = _RefusingConfig()
    assert attach_timing_cache(cfg, path, "tensorrt")[1] == "new"
    path.write_bytes(b"cache from another GPU")
    cache, state = attach_timing_cache(cfg, path, "tensorrt")
    assert cache is cfg.attached and state.startswith("discarded") and serialized_timing_cache(cfg) == b"fresh-cache"
    assert attach_timing_cache(_RefusingConfig(refuse_all=True), path, "tensorrt")[0] is None
    assert serialized_timing_cache(_RefusingConfig(give_back=False)) is None  # logged, not .serialize() on None
    assert attach_timing_cache(cfg, path, "tensorrt_rtx") == (None, "off")


def test_builder_log_drops_verbose():
    tm = tensorrt_like()
    if tm is None:
        pytest.skip("neither tensorrt nor tensorrt-rtx is installed")
    from nfdseg.export.onnx2engine import _CapturingLogger

    lg = _CapturingLogger(tm.module)
    sev = tm.module.ILogger.Severity
    lg.log(sev.VERBOSE, "tactic 17 timing")
    lg.log(sev.INFO, "built")
    assert lg.lines == ["[INFO] built"]


def _trt10_front(rtx, refuse_cache: bool):
    """TensorRT-RTX (which builds without a GPU) dressed as TensorRT 10.13, with a builder config that refuses
    the saved timing cache and gives no cache back, as TensorRT 10 does with a cache from another GPU."""

    class Config:
        def __init__(self, real):
            self.real = real

        def __getattr__(self, name):
            return getattr(self.real, name)

        def set_timing_cache(self, cache, ignore_mismatch):
            return not refuse_cache

        def get_timing_cache(self):
            return None if refuse_cache else self.real.get_timing_cache()

    class Builder:
        def __init__(self, logger):
            self.real = rtx.Builder(logger)

        def __getattr__(self, name):
            return getattr(self.real, name)

        def create_builder_config(self):
            return Config(self.real.create_builder_config())

        def build_serialized_network(self, network, config):
            return self.real.build_serialized_network(network, config.real)

    front = types.SimpleNamespace(**{k: getattr(rtx, k) for k in dir(rtx) if not k.startswith("__")})
    front.Builder = Builder
    return TrtModule(front, "tensorrt", "10.13.0.35")


@pytest.mark.tensorrt
@pytest.mark.skipif(tensorrt_like() is None or tensorrt_like().flavor != "tensorrt_rtx",
                    reason="needs tensorrt-rtx (builds engines without a GPU)")
def test_build_with_a_refused_timing_cache_leaves_a_complete_artifact(exported, tmp_path, monkeypatch):
    """Item 1 of issue 12: the engine, its log and its manifest are all written, timing_cache_reused is false,
    and the refusal is recorded; the stale cache file is left as it was (TensorRT gave no cache back)."""
    import nfdseg.export.onnx2engine as o2e
    from nfdseg.export.onnx2engine import EngineProfile, onnx2engine

    monkeypatch.setattr(o2e, "import_tensorrt", lambda allow_rtx=True: _trt10_front(tensorrt_like().module, True))
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"cache from another GPU")
    m = onnx2engine(exported / "model.onnx", read_manifest(exported / "model.json"), tmp_path, "fp16",
                    exported / "model.fp16.onnx", EngineProfile(1, 1, 2), timing_cache=cache)
    assert (tmp_path / m.artifact).is_file() and (tmp_path / m.artifact).with_suffix(".json").is_file()
    assert m.engine.timing_cache_reused is False and m.engine.strongly_typed and m.precision == "fp16"
    assert m.config["engine_build"]["fp16_path"] == "strongly_typed"  # TensorRT >= 10.12 with an FP16 ONNX
    assert m.config["engine_build"]["timing_cache"].startswith("discarded")
    assert cache.read_bytes() == b"cache from another GPU"
    assert read_manifest((tmp_path / m.artifact).with_suffix(".json"), expect_kind="engine").sha256 == m.sha256


def test_profile_hw_option_takes_a_size_or_a_range():
    from nfdseg.export.cli import _profile_hw

    assert _profile_hw("48x64") == ((48, 64), (48, 64), (48, 64))
    assert _profile_hw("32x32,48x64,96x128") == ((32, 32), (48, 64), (96, 128))
    for bad in ("48", "48x64,96x128", "axb", "0x48"):
        with pytest.raises(ConfigError, match="--profile-hw takes"):
            _profile_hw(bad)
