// ONNX Runtime backend (C++ API): CPU, or the CUDA execution provider with --device cuda[:N].
#include <onnxruntime_cxx_api.h>

#include <algorithm>

#include "backend.hpp"
#include "cuda_preload.hpp"
#include "error.hpp"

namespace {

std::string type_name(ONNXTensorElementDataType t) {
  switch (t) {
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT: return "float32";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16: return "float16";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8: return "uint8";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32: return "int32";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64: return "int64";
    default: return "type " + std::to_string(static_cast<int>(t));
  }
}

std::string dims_text(const std::vector<int64_t>& d) {
  std::string s = "(";
  for (size_t i = 0; i < d.size(); ++i) s += (i ? ", " : "") + (d[i] < 0 ? std::string("?") : std::to_string(d[i]));
  return s + ")";
}

class OnnxRuntimeBackend : public Backend {
 public:
  OnnxRuntimeBackend(const Manifest& m, const std::string& device, int threads)
      : manifest_(m), env_(ORT_LOGGING_LEVEL_ERROR, "nfdseg_cpp") {
    Ort::SessionOptions opts;
    opts.SetGraphOptimizationLevel(GraphOptimizationLevel::ORT_ENABLE_ALL);
    if (threads > 0) opts.SetIntraOpNumThreads(threads);
    // As nfdseg's backend: idle intra-op threads would otherwise spin after each run, taking the cores
    // that decoding and preprocessing need.
    opts.AddConfigEntry("session.intra_op.allow_spinning", "0");
    provider_ = "CPUExecutionProvider";
    if (device.rfind("cuda", 0) == 0) {
      OrtCUDAProviderOptions cuda{};
      cuda.device_id = device.size() > 5 ? std::stoi(device.substr(5)) : 0;
      // The provider loads libonnxruntime_providers_shared.so / _cuda.so from the folder libonnxruntime.so was
      // loaded from (build.sh links them there) and, having no RUNPATH, finds CUDA's libraries only if loaded.
      const PreloadResult pre = preload_cuda_libraries(cuda_library_dirs());
      try {
        opts.AppendExecutionProvider_CUDA(cuda);
      } catch (const Ort::Exception& e) {
        std::string seen = e.what();
        seen += "; preloaded " + std::to_string(pre.loaded.size()) + " CUDA libraries from '" + cuda_library_dirs() + "'";
        if (!pre.failed.empty()) seen += " (failed: " + pre.failed.front() + ")";
        throw NfdsegError("ONNX Runtime could not add the CUDA execution provider", seen,
                          "build with build.sh against onnxruntime-gpu (`pip install 'nfdseg[gpu-cu13]'`; it links "
                          "libonnxruntime_providers_*.so beside the library) in the Python that has NVIDIA's CUDA/cuDNN "
                          "wheels, or set NFDSEG_CUDA_LIB_DIRS to the folders holding libcublasLt.so / libcudnn.so; "
                          "or pass --device cpu");
      }
      provider_ = "CUDAExecutionProvider (device " + std::to_string(cuda.device_id) + ")";
    }
    try {
      session_ = Ort::Session(env_, m.artifact_path().c_str(), opts);
    } catch (const Ort::Exception& e) {
      throw NfdsegError("onnxruntime cannot load " + m.artifact_path(), std::string(e.what()).substr(0, 300),
                        "re-export the model with `nfdseg export`");
    }
    check_against_manifest();
  }

  ModelOutput run(const ModelInput& in) override {
    Ort::MemoryInfo mem = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
    Ort::Value x = manifest_.normalize_in_graph
        ? Ort::Value::CreateTensor<uint8_t>(mem, const_cast<uint8_t*>(in.u8.data()), in.u8.size(), in.shape.data(), in.shape.size())
        : Ort::Value::CreateTensor<float>(mem, const_cast<float*>(in.f32.data()), in.f32.size(), in.shape.data(), in.shape.size());
    const char* in_names[] = {in_name_.c_str()};
    const char* out_names[] = {out_name_.c_str()};
    std::vector<Ort::Value> outs;
    try {
      outs = session_.Run(Ort::RunOptions{nullptr}, in_names, &x, 1, out_names, 1);
    } catch (const Ort::Exception& e) {
      throw NfdsegError("onnxruntime failed to run " + manifest_.artifact, std::string(e.what()).substr(0, 300),
                        "check that the model and its manifest belong together (re-export with `nfdseg export`)");
    }
    auto info = outs[0].GetTensorTypeAndShapeInfo();
    ModelOutput o;
    o.shape = info.GetShape();
    const size_t n = info.GetElementCount();
    if (manifest_.output_kind == "logits") {
      const float* p = outs[0].GetTensorData<float>();
      o.logits.assign(p, p + n);
    } else {
      o.labels.resize(n);
      switch (info.GetElementType()) {  // nfdseg casts the label map to uint8 (astype), so do we
        case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8: copy_labels(outs[0].GetTensorData<uint8_t>(), n, o); break;
        case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32: copy_labels(outs[0].GetTensorData<int32_t>(), n, o); break;
        default: copy_labels(outs[0].GetTensorData<int64_t>(), n, o); break;
      }
    }
    return o;
  }

  std::string describe() const override { return "onnxruntime " + Ort::GetVersionString() + " " + provider_; }

 private:
  template <typename T>
  static void copy_labels(const T* p, size_t n, ModelOutput& o) {
    for (size_t i = 0; i < n; ++i) o.labels[i] = static_cast<uint8_t>(p[i]);
  }

  // Refuse a graph that is not the one the manifest describes, before any image is read.
  void check_against_manifest() {
    const Manifest& m = manifest_;
    const std::string who = m.artifact_path() + " does not match its manifest " + m.path;
    const std::string fix = "copy the model together with its own .json, or re-export with `nfdseg export`";
    Ort::AllocatorWithDefaultOptions alloc;
    if (session_.GetInputCount() != 1 || session_.GetOutputCount() < 1)
      throw NfdsegError(who, std::to_string(session_.GetInputCount()) + " inputs, " +
                        std::to_string(session_.GetOutputCount()) + " outputs (expected 1 input)", fix);
    in_name_ = session_.GetInputNameAllocated(0, alloc).get();
    out_name_ = session_.GetOutputNameAllocated(0, alloc).get();
    if (in_name_ != m.input.name || out_name_ != m.output.name)
      throw NfdsegError(who, "graph input '" + in_name_ + "', output '" + out_name_ + "'; manifest input '" +
                        m.input.name + "', output '" + m.output.name + "'", fix);
    Ort::TypeInfo in_type_info = session_.GetInputTypeInfo(0);  // the shape info below points into it
    auto in_info = in_type_info.GetTensorTypeAndShapeInfo();
    const std::string in_type = type_name(in_info.GetElementType());
    const std::string want_in = m.normalize_in_graph ? "uint8" : "float32";
    if (in_type != want_in || m.input.dtype != want_in)
      throw NfdsegError(who, "graph input " + in_type + ", manifest input " + m.input.dtype +
                        (m.normalize_in_graph ? " with normalize_in_graph" : ""), fix);
    const std::vector<int64_t> d = in_info.GetShape();
    // NCHW float: (N, 3, H, W); NHWC uint8: (N, H, W, 3). Static sizes must be the manifest's input size.
    const std::vector<int64_t> want = m.normalize_in_graph ? std::vector<int64_t>{1, m.input_h, m.input_w, 3}
                                                           : std::vector<int64_t>{1, 3, m.input_h, m.input_w};
    bool ok = d.size() == 4;
    for (size_t i = 1; ok && i < 4; ++i) ok = d[i] < 0 || d[i] == want[i];
    if (!ok) throw NfdsegError(who, "graph input shape " + dims_text(d) + ", manifest input " + dims_text(want), fix);
    Ort::TypeInfo out_type_info = session_.GetOutputTypeInfo(0);
    auto out_info = out_type_info.GetTensorTypeAndShapeInfo();
    const std::string out_type = type_name(out_info.GetElementType());
    const std::vector<int64_t> od = out_info.GetShape();
    if (m.output_kind == "logits") {
      const bool shape_ok = od.size() == 4 && (od[1] < 0 || od[1] == m.num_classes());
      if (out_type != "float32" || !shape_ok)
        throw NfdsegError(who, "graph output " + out_type + " " + dims_text(od) + ", manifest: float32 logits of " +
                          std::to_string(m.num_classes()) + " classes", fix);
    } else {
      const bool type_ok = out_type == "uint8" || out_type == "int32" || out_type == "int64";
      if (!type_ok || od.size() != 3 || out_type != m.output.dtype)
        throw NfdsegError(who, "graph output " + out_type + " " + dims_text(od) + ", manifest: " + m.output.dtype +
                          " label map (N, H, W)", fix);
    }
  }

  Manifest manifest_;
  Ort::Env env_;
  Ort::Session session_{nullptr};
  std::string in_name_, out_name_, provider_;
};

}  // namespace

std::unique_ptr<Backend> open_onnxruntime(const Manifest& m, const std::string& device, int threads) {
  return std::make_unique<OnnxRuntimeBackend>(m, device, threads);
}
