#include "manifest.hpp"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "error.hpp"
#include "sha256.hpp"

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr int kFormatVersion = 1;  // nfdseg/manifest.py FORMAT_VERSION

// A field the program needs, with a clear error naming it when it is absent or of the wrong type.
const json& field(const json& obj, const char* key, const std::string& where, json::value_t type) {
  auto it = obj.find(key);
  const bool number_ok = type == json::value_t::number_float && it != obj.end() && it->is_number();
  if (it == obj.end() || (it->type() != type && !number_ok)) {
    throw NfdsegError("manifest " + where + " is malformed: field '" + key + "' is missing or has the wrong type",
                      it == obj.end() ? "no '" + std::string(key) + "'" : it->dump().substr(0, 80),
                      "use the .json written beside the artifact by `nfdseg export`");
  }
  return *it;
}

std::array<float, 3> three_floats(const json& v, const char* key, const std::string& where) {
  if (!v.is_array() || v.size() != 3 || !v[0].is_number() || !v[1].is_number() || !v[2].is_number())
    throw NfdsegError("manifest " + where + ": preprocess." + key + " must be 3 numbers", v.dump());
  return {v[0].get<float>(), v[1].get<float>(), v[2].get<float>()};
}

TensorSpec tensor_spec(const json& list, const char* key, const std::string& where) {
  if (!list.is_array() || list.empty() || !list[0].is_object())
    throw NfdsegError("manifest " + where + " lists no " + key, list.dump().substr(0, 80),
                      "re-export the model with `nfdseg export`");
  const json& t = list[0];
  return {field(t, "name", where, json::value_t::string).get<std::string>(),
          field(t, "dtype", where, json::value_t::string).get<std::string>(), t.value("layout", "")};
}

}  // namespace

Manifest read_manifest(const std::string& json_path, bool verify_sha) {
  const std::string& where = json_path;
  if (!fs::is_regular_file(json_path))
    throw NfdsegError("manifest not found: " + json_path, "",
                      "point at a directory or file produced by `nfdseg export`");
  json j;
  try {
    std::ifstream in(json_path);
    j = json::parse(in);
  } catch (const json::exception& e) {
    throw NfdsegError("manifest " + where + " is not valid JSON", e.what());
  }
  if (!j.is_object() || !j.contains("kind"))
    throw NfdsegError(where + " is not an nfdseg manifest", "no 'kind' field",
                      "use the .json written beside the artifact by nfdseg");
  if (!j.contains("format_version") || j["format_version"] != kFormatVersion)
    throw NfdsegError("manifest " + where + " has format version " + j.value("format_version", json()).dump() +
                          ", this program reads version " + std::to_string(kFormatVersion),
                      "", "re-export the artifact with a matching nfdseg version");
  Manifest m;
  m.path = json_path;
  m.dir = fs::path(json_path).parent_path().string();
  if (m.dir.empty()) m.dir = ".";
  m.kind = field(j, "kind", where, json::value_t::string).get<std::string>();
  if (m.kind != "onnx" && m.kind != "engine")
    throw NfdsegError("manifest " + where + " describes a " + m.kind + ", not an exported model",
                      "kind " + m.kind, "pass the output directory of `nfdseg export`");
  m.artifact = field(j, "artifact", where, json::value_t::string).get<std::string>();
  m.architecture = j.value("architecture", "");
  m.precision = j.value("precision", "fp32");
  m.sha256 = j.value("sha256", "");
  m.output_kind = j.value("output_kind", "logits");
  if (m.output_kind != "logits" && m.output_kind != "labels")
    throw NfdsegError("manifest " + where + ": unknown output_kind", m.output_kind, "expected logits or labels");

  const json& classes = field(j, "classes", where, json::value_t::object);
  for (const json& n : field(classes, "names", where, json::value_t::array)) m.class_names.push_back(n.get<std::string>());
  for (const json& c : field(classes, "palette", where, json::value_t::array)) {
    const auto byte = [](const json& v) { return v.is_number_integer() && v.get<int>() >= 0 && v.get<int>() <= 255; };
    if (!c.is_array() || c.size() != 3 || !byte(c[0]) || !byte(c[1]) || !byte(c[2]))
      throw NfdsegError("manifest " + where + ": palette entries must be [r, g, b] with values 0-255", c.dump());
    m.palette.push_back({c[0].get<uint8_t>(), c[1].get<uint8_t>(), c[2].get<uint8_t>()});
  }
  if (m.class_names.empty() || m.class_names.size() > 256 || m.palette.size() > 256)
    throw NfdsegError("manifest " + where + ": classes.names must hold 1 to 256 names",
                      std::to_string(m.class_names.size()) + " names");

  const json& pre = field(j, "preprocess", where, json::value_t::object);
  const json& size = field(pre, "input_size", where, json::value_t::array);
  if (size.size() != 2 || !size[0].is_number_integer() || !size[1].is_number_integer() || size[0] < 1 || size[1] < 1)
    throw NfdsegError("manifest " + where + ": preprocess.input_size must be [height, width]", size.dump());
  m.input_h = size[0].get<int>();
  m.input_w = size[1].get<int>();
  m.mean = three_floats(field(pre, "mean", where, json::value_t::array), "mean", where);
  m.std = three_floats(field(pre, "std", where, json::value_t::array), "std", where);
  for (float s : m.std)
    if (!(s > 0)) throw NfdsegError("manifest " + where + ": preprocess.std must be positive", pre["std"].dump());
  const std::string order = pre.value("color_order", "RGB");
  if (order != "RGB" && order != "BGR" && order != "rgb" && order != "bgr")
    throw NfdsegError("manifest " + where + ": unknown preprocess.color_order", order, "expected RGB or BGR");
  m.bgr = order == "BGR" || order == "bgr";
  const std::string policy = pre.value("size_policy", "resize");
  if (policy != "resize")
    throw NfdsegError("manifest " + where + ": size_policy '" + policy + "' is not supported",
                      policy, "this program implements 'resize' (stretch to input_size, labels resized back)");

  if (j.contains("onnx") && j["onnx"].is_object()) m.normalize_in_graph = j["onnx"].value("normalize_in_graph", false);
  m.input = tensor_spec(j.value("inputs", json::array()), "inputs", where);
  m.output = tensor_spec(j.value("outputs", json::array()), "outputs", where);
  if (m.kind == "engine") {
    const json& e = field(j, "engine", where, json::value_t::object);
    m.trt_version = e.value("tensorrt_version", "");
    m.trt_flavor = e.value("tensorrt_flavor", "");
    m.compute_capability = e.value("compute_capability", "");
    m.gpu_name = e.value("gpu_name", "");
  }

  const std::string model = m.artifact_path();
  if (!fs::is_regular_file(model))
    throw NfdsegError("the artifact named by " + where + " is missing", model,
                      "copy the artifact together with its manifest");
  if (verify_sha && !m.sha256.empty()) {
    const std::string actual = sha256_file(model);
    if (actual != m.sha256)
      throw NfdsegError(model + " does not match its manifest (sha256 differs): it was changed, truncated or replaced",
                        "manifest " + m.sha256.substr(0, 12) + "..., file " + actual.substr(0, 12) + "...",
                        "re-export the artifact, or copy the matching file and manifest together");
  }
  return m;
}

std::string resolve_manifest(const std::string& artifact, const std::string& backend) {
  const fs::path p(artifact);
  if (fs::is_regular_file(p)) {
    if (p.extension() == ".json") return p.string();
    if (p.extension() == ".onnx" || p.extension() == ".engine") return fs::path(p).replace_extension(".json").string();
    throw NfdsegError(artifact + " is not an artifact this program can serve", "",
                      "pass an export directory, a .onnx, a .engine or its .json");
  }
  if (!fs::is_directory(p))
    throw NfdsegError("artifact not found: " + artifact, "", "pass the output directory of `nfdseg export`");
  if (backend == "tensorrt") {
    std::vector<fs::path> engines;
    for (const auto& e : fs::directory_iterator(p))
      if (e.path().extension() == ".engine") engines.push_back(e.path());
    if (engines.empty())
      throw NfdsegError(artifact + " holds no TensorRT engine", "",
                        "build one on the target: `nfdseg export CHECKPOINT --engine on`");
    std::sort(engines.begin(), engines.end());
    return engines.front().replace_extension(".json").string();
  }
  if (fs::is_regular_file(p / "model.onnx")) return (p / "model.json").string();
  if (fs::is_regular_file(p / "model.fp16.onnx")) return (p / "model.fp16.json").string();
  throw NfdsegError(artifact + " holds no ONNX model", "no model.onnx or model.fp16.onnx",
                    "run `nfdseg export CHECKPOINT_DIR --out DIR` and pass DIR");
}
