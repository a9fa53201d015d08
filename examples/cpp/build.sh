#!/usr/bin/env bash
# Build examples/cpp (nfdseg_cpp) against the ONNX Runtime library of the installed `onnxruntime` wheel.
#
# The wheel ships libonnxruntime.so.<version> but no headers. The headers come from Debian trixie's
# libonnxruntime-dev .deb, fetched by apt through a private, temporary configuration (signed trixie index,
# nothing added to /etc/apt, nothing installed) and unpacked with `dpkg -x`. Headers must not be newer than
# the library (its symbols are versioned): this script refuses that. Everything else (g++, cmake,
# nlohmann-json3-dev, libstb-dev) comes from the system (see .ci/run).
#
# Usage: examples/cpp/build.sh [extra cmake args, e.g. -DNFDSEG_WITH_TENSORRT=ON]   (examples/cpp/README.md)
# Environment: BUILD_DIR (default examples/cpp/build), PYTHON (the interpreter whose onnxruntime to link),
#              ORT_INCLUDE_DIR (headers you already have: skips the download), ORT_LIB (a libonnxruntime.so.*),
#              CUDA_LIB_DIRS (':'-separated CUDA/cuDNN library folders the program preloads for --device cuda;
#              default: $PYTHON's nvidia/*/lib wheel folders; NFDSEG_CUDA_LIB_DIRS overrides it when running).
# Prints the path of the built program on its last line.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
BUILD=${BUILD_DIR:-$HERE/build}
PYTHON=${PYTHON:-python3}
HEADERS_PKG=libonnxruntime-dev
HEADERS_SUITE=${ORT_HEADERS_SUITE:-trixie}
mkdir -p "$BUILD"

# Exit status: 0 built, 3 a prerequisite is missing (tests skip on it, with this message), other: a failure.
die() { echo "error: $1" >&2; [ -n "${2:-}" ] && echo "  fix: $2" >&2; exit 3; }
APT_HINT="apt-get update && apt-get install -y g++ cmake nlohmann-json3-dev libstb-dev libjpeg62-turbo-dev debian-archive-keyring (Debian; on Ubuntu libjpeg-turbo8-dev; see examples/cpp/README.md)"
for tool in g++ cmake; do
  command -v "$tool" >/dev/null || die "$tool is not installed" "$APT_HINT"
done
for header in nlohmann/json.hpp stb/stb_image.h stb/stb_image_write.h jpeglib.h; do
  printf '#include <cstdio>\n#include <%s>\n' "$header" | g++ -std=c++17 -E -x c++ - >/dev/null 2>&1 \
    || die "the header <$header> is not installed" "$APT_HINT"
done

# 1. The library: the wheel's libonnxruntime.so.X.Y.Z, linked under its SONAME (libonnxruntime.so.1).
if [ -z "${ORT_LIB:-}" ]; then
  capi=$("$PYTHON" -c 'import onnxruntime, os; print(os.path.join(os.path.dirname(onnxruntime.__file__), "capi"))' 2>/dev/null) \
    || die "$PYTHON cannot import onnxruntime" "pip install onnxruntime (or set ORT_LIB to a libonnxruntime.so.X.Y.Z)"
  ORT_LIB=$(ls "$capi"/libonnxruntime.so.*.*.* 2>/dev/null | head -n1)
fi
[ -f "$ORT_LIB" ] || die "no ONNX Runtime library found (looked for libonnxruntime.so.X.Y.Z)" "set ORT_LIB"
lib_version=${ORT_LIB##*libonnxruntime.so.}
mkdir -p "$BUILD/ort/lib"
ln -sf "$ORT_LIB" "$BUILD/ort/lib/libonnxruntime.so.1"
ln -sf "$ORT_LIB" "$BUILD/ort/lib/libonnxruntime.so"
# ONNX Runtime loads its provider libraries (libonnxruntime_providers_shared.so, _cuda.so, _tensorrt.so) from the
# folder it was loaded from, which is this one: link each beside it.
for provider in "$(dirname "$ORT_LIB")"/libonnxruntime_providers_*.so; do
  [ -f "$provider" ] && ln -sf "$provider" "$BUILD/ort/lib/$(basename "$provider")"
done
# The CUDA provider (1.28+) has no RUNPATH: the program preloads NVIDIA's CUDA/cuDNN libraries from the pip wheels'
# folders (as Python's onnxruntime.preload_dlls does). CUDA_LIB_DIRS overrides what is found in $PYTHON.
CUDA_LIB_DIRS=${CUDA_LIB_DIRS-$("$PYTHON" -c 'import glob, os
try:
    import nvidia
except ImportError:
    raise SystemExit
dirs = sorted({os.path.dirname(p) for root in nvidia.__path__ for p in glob.glob(os.path.join(root, "*", "lib", "lib*.so*"))})
print(":".join(dirs))' 2>/dev/null || true)}
if [ -n "${NFDSEG_LAYOUT_ONLY:-}" ]; then  # tests: the library folder and preload list, without building
  echo "cuda_lib_dirs=$CUDA_LIB_DIRS"
  echo "$BUILD/ort/lib"
  exit 0
fi

# 2. The headers: Debian's libonnxruntime-dev, downloaded (signature-checked by apt) and unpacked, once.
if [ -z "${ORT_INCLUDE_DIR:-}" ]; then
  ORT_INCLUDE_DIR="$BUILD/ort/include"
  if [ ! -f "$ORT_INCLUDE_DIR/onnxruntime_cxx_api.h" ]; then
    command -v apt-get >/dev/null && [ -f /usr/share/keyrings/debian-archive-keyring.gpg ] \
      || die "fetching the ONNX Runtime headers needs apt-get and Debian's archive keyring" \
        "apt-get update && apt-get install -y debian-archive-keyring (Ubuntu has it too), or set ORT_INCLUDE_DIR to an ONNX Runtime release's include/"
    apt_dir=$(mktemp -d)
    trap 'rm -rf "$apt_dir"' EXIT
    mkdir -p "$apt_dir/parts" "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial"
    printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: %s\nComponents: main\nSigned-By: %s\n' \
      "$HEADERS_SUITE" /usr/share/keyrings/debian-archive-keyring.gpg > "$apt_dir/parts/headers.sources"
    apt_opts=(-o Dir::Etc::SourceList=/dev/null -o Dir::Etc::SourceParts="$apt_dir/parts"
              -o Dir::State::Lists="$apt_dir/lists" -o Dir::Cache="$apt_dir/cache" -o Debug::NoLocking=1 -o APT::Sandbox::User=root)
    apt-get "${apt_opts[@]}" -qq update >/dev/null \
      || die "apt-get could not read Debian $HEADERS_SUITE's package index" "check the network, or set ORT_INCLUDE_DIR"
    (cd "$apt_dir" && apt-get "${apt_opts[@]}" -qq download "$HEADERS_PKG" 2>/dev/null) \
      || die "apt-get could not download $HEADERS_PKG from Debian $HEADERS_SUITE" "set ORT_INCLUDE_DIR"
    dpkg -x "$apt_dir"/${HEADERS_PKG}_*.deb "$apt_dir/root"
    mkdir -p "$ORT_INCLUDE_DIR"
    cp "$apt_dir"/root/usr/include/onnxruntime/*.h "$ORT_INCLUDE_DIR/"
    basename "$apt_dir"/${HEADERS_PKG}_*.deb > "$ORT_INCLUDE_DIR/FROM"
  fi
fi
[ -f "$ORT_INCLUDE_DIR/onnxruntime_cxx_api.h" ] || die "no onnxruntime_cxx_api.h in $ORT_INCLUDE_DIR"

# 3. Headers must not be newer than the library: compare the C API version (1.21 headers: 21) with the minor.
api=$(sed -n 's/^#define ORT_API_VERSION \([0-9]*\).*/\1/p' "$ORT_INCLUDE_DIR/onnxruntime_c_api.h")
lib_minor=$(echo "$lib_version" | cut -d. -f2)
[ "$(echo "$lib_version" | cut -d. -f1)" = 1 ] && [ -n "$api" ] && [ "$api" -le "$lib_minor" ] \
  || die "ONNX Runtime headers (API $api) are newer than the library ($lib_version)" \
         "use headers of version 1.$lib_minor or older, or a newer onnxruntime"

# 4. Configure and build.
cmake -S "$HERE" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DORT_INCLUDE_DIR="$ORT_INCLUDE_DIR" \
  -DORT_LIB_DIR="$BUILD/ort/lib" -DNFDSEG_CUDA_LIB_DIRS="$CUDA_LIB_DIRS" "$@" >"$BUILD/cmake.log" 2>&1 || { cat "$BUILD/cmake.log" >&2; exit 1; }
cmake --build "$BUILD" -j "${JOBS:-2}" >"$BUILD/build.log" 2>&1 || { cat "$BUILD/build.log" >&2; exit 1; }
echo "built with ONNX Runtime headers API $api ($(cat "$ORT_INCLUDE_DIR/FROM" 2>/dev/null || echo "$ORT_INCLUDE_DIR")), library $lib_version ($ORT_LIB)" >&2
echo "$BUILD/nfdseg_cpp"
