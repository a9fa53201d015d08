"""examples/cpp beyond its CPU path: what CMake version its CMakeLists needs, how build.sh lays out ONNX Runtime's
provider libraries for the CUDA provider, and the TensorRT backend compiled (to objects) against NVIDIA's public
TensorRT 10.16 and 11.1 headers with CUDA's runtime headers from the pip wheel. Linking needs libnvinfer and
running needs a GPU: neither happens here."""

from __future__ import annotations

import re
from pathlib import Path

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
