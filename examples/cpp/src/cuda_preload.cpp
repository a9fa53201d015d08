#include "cuda_preload.hpp"

#include <dlfcn.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <sstream>

#ifndef NFDSEG_CUDA_LIB_DIRS
#define NFDSEG_CUDA_LIB_DIRS ""
#endif

namespace fs = std::filesystem;

namespace {
// Dependency order: each library's own NEEDED entries are loaded before it.
const char* const kPrefixes[] = {"libcudart.so", "libnvJitLink.so", "libnvrtc.so", "libcublasLt.so", "libcublas.so",
                                 "libcufft.so", "libcurand.so", "libcusparse.so", "libcusolver.so", "libcudnn.so",
                                 "libcudnn_"};

bool is_shared_library(const std::string& name) { return name.find(".so") != std::string::npos; }
}  // namespace

PreloadResult preload_cuda_libraries(const std::string& dirs) {
  PreloadResult r;
  std::vector<fs::path> files;
  std::stringstream ss(dirs);
  for (std::string dir; std::getline(ss, dir, ':');) {
    std::error_code ec;
    if (dir.empty() || !fs::is_directory(dir, ec)) continue;
    for (const auto& e : fs::directory_iterator(dir, ec))
      if (e.is_regular_file(ec) || e.is_symlink(ec)) files.push_back(e.path());
  }
  std::sort(files.begin(), files.end());
  for (const char* prefix : kPrefixes) {
    for (const auto& f : files) {
      const std::string name = f.filename().string();
      if (name.rfind(prefix, 0) != 0 || !is_shared_library(name)) continue;
      if (dlopen(f.c_str(), RTLD_NOW | RTLD_GLOBAL)) {
        r.loaded.push_back(f.string());
      } else {
        const char* err = dlerror();
        r.failed.push_back(f.string() + ": " + (err ? err : "unknown error"));
      }
    }
  }
  return r;
}

std::string cuda_library_dirs() {
  const char* env = std::getenv("NFDSEG_CUDA_LIB_DIRS");
  return env ? std::string(env) : std::string(NFDSEG_CUDA_LIB_DIRS);
}
