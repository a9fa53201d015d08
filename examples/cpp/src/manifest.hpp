// The artifact's manifest (nfdseg/manifest.py): what the C++ program needs of it, read and checked.
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <vector>

struct TensorSpec {
  std::string name, dtype, layout;  // layout: "NCHW" (float input, logits), "NHWC" (uint8 input), "NHW" (labels)
};

struct Manifest {
  std::string path, dir;                 // the .json and the directory it lies in
  std::string kind, artifact, architecture, precision, sha256;
  std::vector<std::string> class_names;
  std::vector<std::array<uint8_t, 3>> palette;
  int input_h = 0, input_w = 0;          // preprocess.input_size, pixels
  std::array<float, 3> mean{}, std{};    // as float32, like numpy's np.asarray(spec.mean, np.float32)
  bool bgr = false;                      // preprocess.color_order == "BGR"
  bool normalize_in_graph = false;       // the graph takes uint8 NHWC RGB
  std::string output_kind;               // "logits" (N, C, H, W) or "labels" (N, H, W)
  TensorSpec input, output;
  // engine manifests only (engine.*)
  std::string trt_version, trt_flavor, compute_capability, gpu_name;

  int num_classes() const { return static_cast<int>(class_names.size()); }
  std::string artifact_path() const { return dir + "/" + artifact; }
};

// Read and check the manifest at `json_path` (format version, fields, the artifact beside it and its sha256).
Manifest read_manifest(const std::string& json_path, bool verify_sha = true);

// The model file and manifest to use for `artifact` (an export directory, a .onnx/.engine, or a .json),
// as nfdseg's open_backend resolves them: model.onnx (fp32) from a directory, or its *.engine for TensorRT.
std::string resolve_manifest(const std::string& artifact, const std::string& backend);
