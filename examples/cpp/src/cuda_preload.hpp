// Loads NVIDIA's CUDA and cuDNN libraries from pip wheel folders before ONNX Runtime's CUDA provider is created:
// the C++ counterpart of Python's `onnxruntime.preload_dlls()`. The provider library (1.28+) has no RUNPATH, so
// its dependencies (libcublasLt.so.13, libcudnn.so.9, ...) are found only if already loaded (the dynamic loader
// matches them by soname) or on the system's search path.
#pragma once
#include <string>
#include <vector>

struct PreloadResult {
  std::vector<std::string> loaded;  // full paths, in load order
  std::vector<std::string> failed;  // "path: dlerror()" for each library found but not loadable
};

// `dirs`: ':'-separated folders (e.g. site-packages/nvidia/cu13/lib:site-packages/nvidia/cudnn/lib). Every
// library whose name starts with one of the known prefixes is dlopen'ed RTLD_GLOBAL, prefixes in dependency order
// (runtime, cuBLASLt, cuBLAS, ..., cuDNN). Missing folders are skipped.
PreloadResult preload_cuda_libraries(const std::string& dirs);

// The folders to preload from: $NFDSEG_CUDA_LIB_DIRS when set, else the ones build.sh found at build time.
std::string cuda_library_dirs();
