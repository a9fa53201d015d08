// TensorRT 10/11 backend (C++ runtime API): deserialize the engine `nfdseg export --engine on` built, check it
// against its manifest (TensorRT release, GPU compute capability, tensor names, types and profile), then per
// image setInputShape, setTensorAddress and enqueueV3 on a CUDA stream.
//
// Built only with -DNFDSEG_WITH_TENSORRT=ON (NvInfer.h, libnvinfer, the CUDA runtime). Compiled to objects in the
// tests against NVIDIA's public TensorRT 10.16 and 11.1 headers (tests/test_cpp_tensorrt.py); never linked or run
// on the machine that wrote it (no libnvinfer, no GPU): see docs/deploying.md for the build steps.
#include <NvInfer.h>
#include <cuda_runtime_api.h>

#include <fstream>
#include <iostream>
#include <iterator>

#include "backend.hpp"
#include "error.hpp"

namespace {

class Logger : public nvinfer1::ILogger {
 public:
  void log(Severity severity, nvinfer1::AsciiChar const* msg) noexcept override {
    if (severity <= Severity::kWARNING) std::cerr << "TensorRT: " << msg << "\n";
  }
};

void cuda_check(cudaError_t rc, const char* what) {
  if (rc != cudaSuccess)
    throw NfdsegError(std::string(what) + " failed", cudaGetErrorString(rc),
                      "check the GPU, its driver and the CUDA runtime (nvidia-smi)");
}

std::string dims_text(const nvinfer1::Dims& d) {
  std::string s = "(";
  for (int i = 0; i < d.nbDims; ++i) s += (i ? ", " : "") + std::to_string(d.d[i]);
  return s + ")";
}

size_t element_size(nvinfer1::DataType t) {
  switch (t) {
    case nvinfer1::DataType::kFLOAT: case nvinfer1::DataType::kINT32: return 4;
    case nvinfer1::DataType::kINT64: return 8;
    case nvinfer1::DataType::kUINT8: return 1;
    default: return 0;  // not a type nfdseg exports at the graph's edges
  }
}

class TensorRTBackend : public Backend {
 public:
  TensorRTBackend(const Manifest& m, const std::string& device) : manifest_(m) {
    if (m.kind != "engine")
      throw NfdsegError(m.artifact + " is not a TensorRT engine", m.path, "pass an export directory holding an .engine");
    if (m.trt_flavor != "tensorrt")
      throw NfdsegError(m.artifact + " was built with " + m.trt_flavor + ", this program links TensorRT", m.path,
                        "TensorRT-RTX engines need the TensorRT-RTX runtime; rebuild with TensorRT on the target");
    check_version();
    device_ = device.size() > 5 ? std::stoi(device.substr(5)) : 0;
    cuda_check(cudaSetDevice(device_), "cudaSetDevice");
    cudaDeviceProp prop{};
    cuda_check(cudaGetDeviceProperties(&prop, device_), "cudaGetDeviceProperties");
    const std::string cc = std::to_string(prop.major) + "." + std::to_string(prop.minor);
    if (!m.compute_capability.empty() && m.compute_capability != cc)
      throw NfdsegError("engine " + m.artifact + " was built for compute capability " + m.compute_capability + " (" +
                        m.gpu_name + "); this GPU is " + prop.name + " (" + cc + ")", "",
                        "TensorRT engines are not portable across GPU architectures: rebuild it on this GPU");
    gpu_ = prop.name;

    std::ifstream in(m.artifact_path(), std::ios::binary);
    const std::vector<char> blob((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    runtime_.reset(nvinfer1::createInferRuntime(logger_));
    if (!runtime_) throw NfdsegError("TensorRT could not create a runtime", "", "check the TensorRT install");
    engine_.reset(runtime_->deserializeCudaEngine(blob.data(), blob.size()));
    if (!engine_) throw NfdsegError("TensorRT could not deserialize " + m.artifact_path(), "see the TensorRT log above",
                                    "rebuild the engine on this machine (`nfdseg export CHECKPOINT --engine on`)");
    context_.reset(engine_->createExecutionContext());
    if (!context_) throw NfdsegError("TensorRT could not create an execution context", "", "check free GPU memory");
    check_tensors();
    cuda_check(cudaStreamCreate(&stream_), "cudaStreamCreate");
  }

  ~TensorRTBackend() override {
    if (d_in_) cudaFree(d_in_);
    if (d_out_) cudaFree(d_out_);
    if (stream_) cudaStreamDestroy(stream_);
  }

  ModelOutput run(const ModelInput& in) override {
    nvinfer1::Dims shape{};
    shape.nbDims = static_cast<int32_t>(in.shape.size());
    for (int i = 0; i < shape.nbDims; ++i) shape.d[i] = in.shape[i];
    if (!context_->setInputShape(in_name_.c_str(), shape))
      throw NfdsegError("TensorRT refused input shape " + dims_text(shape), "see the TensorRT log above",
                        "rebuild the engine with a profile containing the manifest's input size");
    const nvinfer1::Dims od = context_->getTensorShape(out_name_.c_str());
    size_t out_count = 1;
    for (int i = 0; i < od.nbDims; ++i) {
      if (od.d[i] < 0) throw NfdsegError("TensorRT could not infer the output shape", dims_text(od));
      out_count *= static_cast<size_t>(od.d[i]);
    }
    const void* host_in = manifest_.normalize_in_graph ? static_cast<const void*>(in.u8.data()) : in.f32.data();
    const size_t in_bytes = manifest_.normalize_in_graph ? in.u8.size() : in.f32.size() * sizeof(float);
    const size_t out_bytes = out_count * element_size(out_type_);
    reserve(d_in_, in_cap_, in_bytes);
    reserve(d_out_, out_cap_, out_bytes);
    std::vector<uint8_t> host_out(out_bytes);
    cuda_check(cudaMemcpyAsync(d_in_, host_in, in_bytes, cudaMemcpyHostToDevice, stream_), "cudaMemcpyAsync (input)");
    if (!context_->setTensorAddress(in_name_.c_str(), d_in_) || !context_->setTensorAddress(out_name_.c_str(), d_out_))
      throw NfdsegError("TensorRT refused a tensor address", "see the TensorRT log above");
    if (!context_->enqueueV3(stream_))
      throw NfdsegError("TensorRT execution failed", "input " + dims_text(shape), "see the TensorRT log above");
    cuda_check(cudaMemcpyAsync(host_out.data(), d_out_, out_bytes, cudaMemcpyDeviceToHost, stream_),
               "cudaMemcpyAsync (output)");
    cuda_check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");

    ModelOutput o;
    o.shape.assign(od.d, od.d + od.nbDims);
    if (manifest_.output_kind == "logits") {
      const float* p = reinterpret_cast<const float*>(host_out.data());
      o.logits.assign(p, p + out_count);
    } else {
      o.labels.resize(out_count);
      for (size_t i = 0; i < out_count; ++i) {
        switch (out_type_) {
          case nvinfer1::DataType::kUINT8: o.labels[i] = host_out[i]; break;
          case nvinfer1::DataType::kINT32: o.labels[i] = static_cast<uint8_t>(reinterpret_cast<const int32_t*>(host_out.data())[i]); break;
          default: o.labels[i] = static_cast<uint8_t>(reinterpret_cast<const int64_t*>(host_out.data())[i]); break;
        }
      }
    }
    return o;
  }

  std::string describe() const override {
    return "TensorRT " + std::to_string(NV_TENSORRT_MAJOR) + "." + std::to_string(NV_TENSORRT_MINOR) + "." +
           std::to_string(NV_TENSORRT_PATCH) + " on " + gpu_ + " (cuda:" + std::to_string(device_) + ")";
  }

 private:
  // TensorRT loads only engines of its own major.minor.patch (nfdseg.trt_compat.engine_version_problem).
  void check_version() const {
    const int32_t v = getInferLibVersion();  // TensorRT 10 and 11: (major * 100 + minor) * 100 + patch
    const std::string here = std::to_string(v / 10000) + "." + std::to_string(v / 100 % 100) + "." + std::to_string(v % 100);
    std::string built = manifest_.trt_version;
    int dots = 0;
    for (size_t i = 0; i < built.size(); ++i)
      if (built[i] == '.' && ++dots == 3) { built.resize(i); break; }
    if (built != here)
      throw NfdsegError("engine " + manifest_.artifact + " was built with TensorRT " + manifest_.trt_version +
                        "; this program runs TensorRT " + here, "",
                        "TensorRT loads only engines of its own release: rebuild the engine on this machine");
  }

  void check_tensors() {
    const Manifest& m = manifest_;
    const std::string who = m.artifact_path() + " does not match its manifest " + m.path;
    const std::string fix = "copy the engine together with its own .json, or rebuild it with `nfdseg export`";
    if (engine_->getNbIOTensors() != 2) throw NfdsegError(who, std::to_string(engine_->getNbIOTensors()) + " I/O tensors", fix);
    for (int i = 0; i < 2; ++i) {
      const char* name = engine_->getIOTensorName(i);
      (engine_->getTensorIOMode(name) == nvinfer1::TensorIOMode::kINPUT ? in_name_ : out_name_) = name;
    }
    if (in_name_ != m.input.name || out_name_ != m.output.name)
      throw NfdsegError(who, "engine input '" + in_name_ + "', output '" + out_name_ + "'; manifest '" + m.input.name +
                        "', '" + m.output.name + "'", fix);
    const nvinfer1::DataType in_type = engine_->getTensorDataType(in_name_.c_str());
    const nvinfer1::DataType want_in = m.normalize_in_graph ? nvinfer1::DataType::kUINT8 : nvinfer1::DataType::kFLOAT;
    if (in_type != want_in) throw NfdsegError(who, "engine input type differs (manifest: " + m.input.dtype + ")", fix);
    out_type_ = engine_->getTensorDataType(out_name_.c_str());
    const bool out_ok = m.output_kind == "logits" ? out_type_ == nvinfer1::DataType::kFLOAT : element_size(out_type_) > 0 &&
                                                                                              out_type_ != nvinfer1::DataType::kFLOAT;
    if (!out_ok) throw NfdsegError(who, "engine output type differs (manifest: " + m.output.dtype + " " + m.output_kind + ")", fix);
    // The profile must hold batch 1 at the manifest's input size, which is what this program feeds.
    const nvinfer1::Dims lo = engine_->getProfileShape(in_name_.c_str(), 0, nvinfer1::OptProfileSelector::kMIN);
    const nvinfer1::Dims hi = engine_->getProfileShape(in_name_.c_str(), 0, nvinfer1::OptProfileSelector::kMAX);
    const int64_t want[4] = {1, m.normalize_in_graph ? m.input_h : 3, m.normalize_in_graph ? m.input_w : m.input_h,
                             m.normalize_in_graph ? 3 : m.input_w};
    bool inside = lo.nbDims == 4 && hi.nbDims == 4;
    for (int i = 0; inside && i < 4; ++i) inside = lo.d[i] <= want[i] && want[i] <= hi.d[i];
    if (!inside)
      throw NfdsegError("engine " + m.artifact + "'s profile excludes the manifest's input size",
                        "profile " + dims_text(lo) + " to " + dims_text(hi), "rebuild the engine with the default profile");
  }

  static void reserve(void*& ptr, size_t& cap, size_t bytes) {
    if (bytes <= cap) return;
    if (ptr) cuda_check(cudaFree(ptr), "cudaFree");
    ptr = nullptr;
    cuda_check(cudaMalloc(&ptr, bytes), "cudaMalloc");
    cap = bytes;
  }

  Manifest manifest_;
  Logger logger_;  // declared before the runtime: TensorRT objects must not outlive it
  std::unique_ptr<nvinfer1::IRuntime> runtime_;
  std::unique_ptr<nvinfer1::ICudaEngine> engine_;
  std::unique_ptr<nvinfer1::IExecutionContext> context_;
  std::string in_name_, out_name_, gpu_;
  nvinfer1::DataType out_type_ = nvinfer1::DataType::kFLOAT;
  int device_ = 0;
  cudaStream_t stream_ = nullptr;
  void* d_in_ = nullptr;
  void* d_out_ = nullptr;
  size_t in_cap_ = 0, out_cap_ = 0;
};

}  // namespace

std::unique_ptr<Backend> open_tensorrt(const Manifest& m, const std::string& device) {
  return std::make_unique<TensorRTBackend>(m, device);
}
