"""examples/cpp beyond its CPU path: what CMake version its CMakeLists needs, how build.sh lays out ONNX Runtime's
provider libraries for the CUDA provider, and the TensorRT backend compiled (to objects) against NVIDIA's public
TensorRT 10.16 and 11.1 headers with CUDA's runtime headers from the pip wheel. Linking needs libnvinfer and
running needs a GPU: neither happens here."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CPP = ROOT / "examples" / "cpp"

# CMake commands/keywords the example uses -> the CMake release that introduced them
CMAKE_FEATURES = {r"find_(?:path|library|program|file)\([^)]*\bREQUIRED\b": (3, 18),
                  r"find_package\(CUDAToolkit": (3, 17)}


def test_cmake_minimum_covers_every_feature_used():
    text = (CPP / "CMakeLists.txt").read_text()
    declared = tuple(int(n) for n in re.search(r"cmake_minimum_required\(VERSION (\d+)\.(\d+)", text).groups())
    needs = {pattern: version for pattern, version in CMAKE_FEATURES.items() if re.search(pattern, text, re.S)}
    assert needs, "the feature table no longer matches the CMakeLists"
    assert all(declared >= v for v in needs.values()), f"declares {declared}, uses {needs}"


def _gxx() -> str:
    gxx = shutil.which("g++")
    if not gxx:
        pytest.skip("g++ is not installed (apt-get install g++)")
    return gxx


def test_build_links_onnxruntimes_provider_libraries_beside_the_library(tmp_path):
    """ONNX Runtime loads libonnxruntime_providers_shared.so / _cuda.so from the folder libonnxruntime.so was
    loaded from: build.sh's link folder must hold them, not only the library's own symlinks."""
    capi = tmp_path / "onnxruntime" / "capi"  # a stand-in onnxruntime-gpu wheel's folder
    capi.mkdir(parents=True)
    for name in ("libonnxruntime.so.1.28.0", "libonnxruntime_providers_shared.so", "libonnxruntime_providers_cuda.so"):
        (capi / name).write_bytes(b"\x7fELF stand-in")
    env = {**os.environ, "BUILD_DIR": str(tmp_path / "build"), "ORT_LIB": str(capi / "libonnxruntime.so.1.28.0"),
           "NFDSEG_LAYOUT_ONLY": "1", "CUDA_LIB_DIRS": "/stand-in/cu13/lib:/stand-in/cudnn/lib"}
    r = subprocess.run(["bash", str(CPP / "build.sh")], capture_output=True, text=True, env=env, timeout=60)
    if r.returncode == 3:
        pytest.skip(f"the C++ example's prerequisites are missing: {r.stderr.strip()}")
    assert r.returncode == 0, r.stderr
    lib = Path(r.stdout.strip().splitlines()[-1])
    for name in ("libonnxruntime.so.1", "libonnxruntime_providers_shared.so", "libonnxruntime_providers_cuda.so"):
        assert (lib / name).resolve().parent == capi, f"{name} is not beside the library ONNX Runtime loads"
    assert "cuda_lib_dirs=/stand-in/cu13/lib:/stand-in/cudnn/lib" in r.stdout


HARNESS = r"""
#include <dlfcn.h>
#include <cstdio>
#include <cstring>
#include "cuda_preload.hpp"
int main(int argc, char** argv) {
  if (std::strcmp(argv[1], "preload") == 0) {
    PreloadResult r = preload_cuda_libraries(cuda_library_dirs());
    for (auto& p : r.loaded) std::printf("loaded %s\n", p.c_str());
  }
  void* h = dlopen(argv[2], RTLD_NOW | RTLD_LOCAL);
  if (!h) { std::printf("dlopen failed: %s\n", dlerror()); return 1; }
  int (*f)() = (int (*)())dlsym(h, "provider_version");
  std::printf("provider says %d\n", f());
  return 0;
}
"""


def test_cuda_libraries_are_preloaded_so_a_provider_without_runpath_loads(tmp_path):
    """A stand-in for onnxruntime-gpu 1.28's CUDA provider: a library that needs libcublasLt.so.13 and has no
    RUNPATH, and a stand-in libcublasLt.so.13 in a pip-wheel-like folder. dlopen fails as on the GPU machine
    ('libcublasLt.so.13: cannot open shared object file') until the folder is preloaded."""
    gxx = _gxx()
    wheel, prov = tmp_path / "nvidia" / "cu13" / "lib", tmp_path / "capi"
    wheel.mkdir(parents=True)
    prov.mkdir()
    (tmp_path / "lt.cpp").write_text('extern "C" int cublasLt_version() { return 13; }\n')
    (tmp_path / "prov.cpp").write_text('extern "C" int cublasLt_version();\n'
                                       'extern "C" int provider_version() { return 100 + cublasLt_version(); }\n')
    (tmp_path / "harness.cpp").write_text(HARNESS)

    def cc(*args):
        r = subprocess.run([gxx, *map(str, args)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert r.returncode == 0, r.stderr

    cc("-shared", "-fPIC", "-Wl,-soname,libcublasLt.so.13", "lt.cpp", "-o", wheel / "libcublasLt.so.13")
    cc("-shared", "-fPIC", "prov.cpp", "-o", prov / "libonnxruntime_providers_cuda.so", "-L", wheel,
       "-l:libcublasLt.so.13")
    cc("-std=c++17", "-I", CPP / "src", "harness.cpp", CPP / "src" / "cuda_preload.cpp", "-o", "harness", "-ldl")
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    provider = str(prov / "libonnxruntime_providers_cuda.so")
    r = subprocess.run([tmp_path / "harness", "none", provider], capture_output=True, text=True, env=env)
    assert r.returncode == 1 and "libcublasLt.so.13: cannot open shared object file" in r.stdout, r.stdout
    r = subprocess.run([tmp_path / "harness", "preload", provider], capture_output=True, text=True,
                       env={**env, "NFDSEG_CUDA_LIB_DIRS": f"/absent:{wheel}"})
    assert r.returncode == 0 and "provider says 113" in r.stdout, r.stdout
    assert f"loaded {wheel / 'libcublasLt.so.13'}" in r.stdout


TRT_HEADERS = ROOT.parent / "shared" / "third_party" / "tensorrt"  # NVIDIA's public headers (see its README)


def cuda_runtime_include() -> Path | None:
    """CUDA's runtime headers from NVIDIA's pip wheels (nvidia-cuda-runtime, which a CUDA build of torch installs;
    crt/ comes with nvidia-cuda-crt): the first nvidia/*/include holding both."""
    import importlib.util

    spec = importlib.util.find_spec("nvidia")
    for root in (spec.submodule_search_locations or []) if spec else []:
        for inc in sorted(Path(root).glob("*/include")):
            if (inc / "cuda_runtime_api.h").is_file() and (inc / "crt" / "host_defines.h").is_file():
                return inc
    return None


@pytest.mark.parametrize("release", ["10.16", "11.1"])
def test_the_tensorrt_backend_compiles_against_the_public_headers(tmp_path, release):
    """-DNFDSEG_WITH_TENSORRT: backend_tensorrt.cpp compiled to an object, warnings as errors in our code (the
    third-party headers are system headers). Its undefined symbols are TensorRT's and CUDA's runtime entry points,
    which linking against libnvinfer and libcudart would resolve (not done here: no libnvinfer)."""
    gxx = _gxx()
    trt = TRT_HEADERS / release / "include"
    if not (trt / "NvInfer.h").is_file():
        pytest.skip(f"TensorRT {release}'s public headers are not at {trt} "
                    "(see ../shared/third_party/tensorrt/README.md)")
    cuda = cuda_runtime_include()
    if cuda is None:
        pytest.skip("CUDA's runtime headers are not installed: pip install nvidia-cuda-runtime nvidia-cuda-crt "
                    "(a CUDA build of torch brings the first; crt/ needs the second)")
    obj = tmp_path / f"backend_tensorrt_{release}.o"
    r = subprocess.run([gxx, "-std=c++17", "-c", "-O0", "-Wall", "-Wextra", "-Werror", "-ffp-contract=off",
                        "-DNFDSEG_WITH_TENSORRT=1", "-isystem", str(trt), "-isystem", str(cuda), "-I", str(CPP / "src"),
                        str(CPP / "src" / "backend_tensorrt.cpp"), "-o", str(obj)],
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-4000:]
    version = re.search(r"#define TRT_MAJOR_ENTERPRISE (\d+)", (trt / "NvInferVersion.h").read_text()).group(1)
    assert version == release.split(".")[0]
    nm = shutil.which("nm")
    if nm:
        syms = subprocess.run([nm, "-C", str(obj)], capture_output=True, text=True, timeout=60).stdout
        assert re.search(r" T open_tensorrt\(", syms), "the entry point main.cpp calls is not defined"
        undefined = {line.split()[-1] for line in syms.splitlines() if line.strip().startswith("U ")}
        assert {"createInferRuntime_INTERNAL", "getInferLibVersion", "cudaSetDevice", "cudaStreamCreate"} <= undefined


def test_main_compiles_with_the_tensorrt_backend_enabled(tmp_path):
    gxx = _gxx()
    probe = subprocess.run([gxx, "-std=c++17", "-E", "-x", "c++", "-"], input="#include <nlohmann/json.hpp>\n",
                           capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        pytest.skip("nlohmann/json.hpp is not installed (apt-get install nlohmann-json3-dev)")
    r = subprocess.run([gxx, "-std=c++17", "-c", "-O0", "-Wall", "-Wextra", "-Werror", "-DNFDSEG_WITH_TENSORRT=1",
                        "-I", str(CPP / "src"), str(CPP / "src" / "main.cpp"), "-o", str(tmp_path / "main.o")],
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-4000:]
