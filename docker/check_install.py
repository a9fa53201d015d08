"""Build-time check of the nfdseg image: the runtime imports from outside the source tree, and exactly one
onnxruntime build is installed (the CPU build and onnxruntime-gpu share one import name). Exit 1 otherwise."""

import sys

import nfdseg.serve  # noqa: F401
from nfdseg.serve.backends.onnxruntime_backend import conflicting_installs

builds = conflicting_installs()
if len(builds) != 1:
    print(f"nfdseg image: expected exactly one onnxruntime build, found {builds or 'none'}", file=sys.stderr)
    sys.exit(1)
import onnxruntime  # noqa: E402

print(f"nfdseg ok: {builds[0]} {onnxruntime.__version__}, providers {onnxruntime.get_available_providers()}")
