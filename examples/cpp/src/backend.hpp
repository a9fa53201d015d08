// A runtime that runs the exported graph on one preprocessed image: ONNX Runtime or TensorRT.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "manifest.hpp"

struct ModelInput {  // batch 1: float32 NCHW normalised, or uint8 NHWC when the graph normalises itself
  std::vector<float> f32;
  std::vector<uint8_t> u8;
  std::vector<int64_t> shape;
};

struct ModelOutput {
  std::vector<int64_t> shape;  // (1, C, H, W) logits or (1, H, W) labels
  std::vector<float> logits;   // output_kind logits
  std::vector<uint8_t> labels; // output_kind labels (class ids, cast to uint8 as nfdseg does)
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual ModelOutput run(const ModelInput& input) = 0;
  virtual std::string describe() const = 0;  // e.g. "onnxruntime 1.32.0 CPUExecutionProvider"
};

// device: "cpu" or "cuda" / "cuda:N". threads: intra-op threads, 0 = the runtime's default.
std::unique_ptr<Backend> open_onnxruntime(const Manifest& m, const std::string& device, int threads);
#ifdef NFDSEG_WITH_TENSORRT
std::unique_ptr<Backend> open_tensorrt(const Manifest& m, const std::string& device);
#endif
