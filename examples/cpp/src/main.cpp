// nfdseg_cpp: segment images with an `nfdseg export` directory, giving the labels nfdseg's Python Segmenter gives.
//
//   nfdseg_cpp ARTIFACT IMAGE... [--out DIR] [--backend onnxruntime|tensorrt] [--device cpu|cuda[:N]]
//              [--threads N] [--alpha A] [--repeat N] [--json FILE]
//
// Writes DIR/<stem>_labels.png (class ids, the image's size) and DIR/<stem>_overlay.png, and prints each
// image's latency in ms on stdout. Every error goes to stderr as nfdseg prints it: an `error: WHAT` line, then
// `  seen: ...` and `  fix: ...` lines. Exit status (examples/cpp/README.md): 0 all done, 1 some image could not
// be read (each named on stderr; the others are written), 2 the artifact, its manifest, the command line, the
// runtime or the output directory cannot be used (nothing more is done).
#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <set>
#include <nlohmann/json.hpp>

#include "backend.hpp"
#include "error.hpp"
#include "image.hpp"
#include "manifest.hpp"

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

struct Args {
  std::string artifact, out = "predictions", backend = "onnxruntime", device = "cpu", json;
  std::vector<std::string> images;
  int threads = 0, repeat = 1;
  double alpha = 0.5;
};

const char* kUsage =
    "usage: nfdseg_cpp ARTIFACT IMAGE... [--out DIR] [--backend onnxruntime|tensorrt] [--device cpu|cuda[:N]]\n"
    "                  [--threads N] [--alpha A] [--repeat N] [--json FILE]\n"
    "  ARTIFACT  an `nfdseg export` directory, a .onnx or .engine, or its .json manifest\n"
    "  --out     output directory for <stem>_labels.png and <stem>_overlay.png (default predictions)\n"
    "  --repeat  run each image N times and report the median latency (default 1)\n"
    "  --json    also write the per-image latencies (ms) as JSON\n"
    "exit status: 0 every image segmented; 1 some image could not be read (named on stderr, the others written);\n"
    "             2 the artifact, its manifest, the command line or the output cannot be used\n";

double number_arg(const std::string& flag, const std::string& v, double lo, double hi) {
  try {
    size_t used = 0;
    const double x = std::stod(v, &used);
    if (used == v.size() && x >= lo && x <= hi) return x;
  } catch (const std::exception&) {
  }
  throw NfdsegError(flag + " needs a number from " + std::to_string(lo) + " to " + std::to_string(hi), v);
}

Args parse(int argc, char** argv) {
  Args a;
  std::vector<std::string> pos;
  for (int i = 1; i < argc; ++i) {
    const std::string s = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw NfdsegError(s + " needs a value", "", kUsage);
      return argv[++i];
    };
    if (s == "-h" || s == "--help") { std::cout << kUsage; std::exit(0); }
    else if (s == "--out") a.out = value();
    else if (s == "--backend") a.backend = value();
    else if (s == "--device") a.device = value();
    else if (s == "--json") a.json = value();
    else if (s == "--threads") a.threads = static_cast<int>(number_arg(s, value(), 0, 256));
    else if (s == "--repeat") a.repeat = static_cast<int>(number_arg(s, value(), 1, 100000));
    else if (s == "--alpha") a.alpha = number_arg(s, value(), 0, 1);
    else if (s.rfind("--", 0) == 0) throw NfdsegError("unknown option " + s, "", kUsage);
    else pos.push_back(s);
  }
  if (pos.size() < 2) throw NfdsegError("pass an artifact and at least one image", "", kUsage);
  a.artifact = pos[0];
  a.images.assign(pos.begin() + 1, pos.end());
  if (a.backend != "onnxruntime" && a.backend != "tensorrt")
    throw NfdsegError("unknown backend '" + a.backend + "'", "", "use onnxruntime or tensorrt");
  const bool cuda_n = a.device.rfind("cuda:", 0) == 0 && a.device.size() > 5 &&
                      std::all_of(a.device.begin() + 5, a.device.end(), ::isdigit);
  if (a.device != "cpu" && a.device != "cuda" && !cuda_n)
    throw NfdsegError("unknown device '" + a.device + "'", "", "use cpu, cuda or cuda:N");
  return a;
}

std::unique_ptr<Backend> open_backend(const Manifest& m, const Args& a) {
  if (a.backend == "tensorrt") {
#ifdef NFDSEG_WITH_TENSORRT
    return open_tensorrt(m, a.device == "cpu" ? "cuda" : a.device);
#else
    throw NfdsegError("this nfdseg_cpp was built without TensorRT", "",
                      "rebuild with -DNFDSEG_WITH_TENSORRT=ON (see docs/deploying.md), or use --backend onnxruntime");
#endif
  }
  if (m.kind != "onnx")
    throw NfdsegError(m.artifact + " is a TensorRT engine, not an ONNX model", m.path,
                      "pass the export directory or model.onnx, or use --backend tensorrt for an engine");
  return open_onnxruntime(m, a.device, a.threads);
}

double ms_since(Clock::time_point t0) { return std::chrono::duration<double, std::milli>(Clock::now() - t0).count(); }

struct Result {
  Image rgb, labels;
  double decode_ms = 0, preprocess_ms = 0, infer_ms = 0, post_ms = 0;
};

// One image through the pipeline nfdseg's Segmenter.predict runs: decode, resize + normalise, infer,
// argmax and resize the labels back to the image's size.
Result segment(const std::string& path, const Manifest& m, Backend& backend) {
  Result r;
  auto t = Clock::now();
  r.rgb = load_image(path);
  r.decode_ms = ms_since(t);
  t = Clock::now();
  const Image resized = resize_bilinear(r.rgb, m.input_w, m.input_h);
  ModelInput in;
  if (m.normalize_in_graph) {
    in.u8 = to_nhwc_uint8(resized);
    in.shape = {1, m.input_h, m.input_w, 3};
  } else {
    in.f32 = to_nchw_normalized(resized, m);
    in.shape = {1, 3, m.input_h, m.input_w};
  }
  r.preprocess_ms = ms_since(t);
  t = Clock::now();
  const ModelOutput out = backend.run(in);
  r.infer_ms = ms_since(t);
  t = Clock::now();
  Image labels;
  if (m.output_kind == "logits") {
    if (out.shape.size() != 4 || out.shape[0] != 1 || out.shape[1] != m.num_classes())
      throw NfdsegError(m.artifact + " does not match its manifest: it predicts another number of classes",
                        "output shape (" + std::to_string(out.shape.size() > 1 ? out.shape[1] : -1) + " channels), manifest " +
                            std::to_string(m.num_classes()) + " classes",
                        "copy the model together with its own .json, or re-export with `nfdseg export`");
    labels = argmax_labels(out.logits.data(), m.num_classes(), static_cast<int>(out.shape[2]), static_cast<int>(out.shape[3]));
  } else {
    if (out.shape.size() != 3 || out.shape[0] != 1)
      throw NfdsegError(m.artifact + " does not match its manifest: no (1, H, W) label map came out", "", "re-export");
    labels.width = static_cast<int>(out.shape[2]);
    labels.height = static_cast<int>(out.shape[1]);
    labels.channels = 1;
    labels.pixels = out.labels;
  }
  r.labels = resize_labels(labels, r.rgb.width, r.rgb.height);
  r.post_ms = ms_since(t);
  return r;
}

// nfdseg predict's naming rule (serve/predict_video.py output_stems): each image's file stem, unless another
// image has the same stem (a.png in two folders): then <parent folder>_<stem>, numbered _2, _3, ... if that
// still collides (case-insensitively: A.png and a.png collide on macOS and Windows). No output overwrites another.
std::map<std::string, std::string> output_stems(const std::vector<std::string>& images) {
  const auto safe = [](const std::string& s) {  // re.sub(r"[^\w.-]+", "_", s); UTF-8 bytes count as letters
    std::string out;
    bool in_run = false;
    for (char c : s) {
      const bool ok = std::isalnum(static_cast<unsigned char>(c)) || (c & 0x80) || c == '_' || c == '.' || c == '-';
      if (ok) out += c;
      else if (!in_run) out += '_';
      in_run = !ok;
    }
    return out;
  };
  const auto lower = [](std::string s) {
    std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
    return s;
  };
  std::map<std::string, int> counts;
  std::set<std::string> distinct(images.begin(), images.end());
  for (const std::string& path : distinct) ++counts[fs::path(path).stem().string()];
  std::map<std::string, std::string> named;
  std::set<std::string> taken;
  for (const std::string& path : images) {
    if (named.count(path)) continue;
    std::string stem = fs::path(path).stem().string();
    if (counts[stem] > 1) {
      std::error_code ec;
      const std::string parent = safe(fs::weakly_canonical(fs::absolute(path), ec).parent_path().filename().string());
      stem = (parent.empty() ? "root" : parent) + "_" + stem;
    }
    std::string unique = stem;
    for (int n = 2; taken.count(lower(unique)); ++n) unique = stem + "_" + std::to_string(n);
    taken.insert(lower(unique));
    named[path] = unique;
  }
  return named;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

int run(const Args& a) {
  const Manifest m = read_manifest(resolve_manifest(a.artifact, a.backend));
  std::unique_ptr<Backend> backend = open_backend(m, a);
  std::cerr << "nfdseg_cpp: " << m.artifact << " (" << m.architecture << ", " << m.num_classes() << " classes, input "
            << m.input_h << "x" << m.input_w << ", " << m.output_kind << ") on " << backend->describe() << "\n";
  std::error_code ec;
  fs::create_directories(a.out, ec);
  if (ec || !fs::is_directory(a.out))
    throw NfdsegError("cannot write the output under " + a.out, ec ? ec.message() : "it is not a directory",
                      "pass another --out (a writable directory)");
  nlohmann::json report = {{"artifact", m.path}, {"backend", backend->describe()}, {"repeat", a.repeat},
                           {"images", nlohmann::json::array()}};
  const auto stems = output_stems(a.images);
  for (const auto& [path, stem] : stems)
    if (stem != fs::path(path).stem().string())
      std::cout << "output name: " << path << " -> " << stem << "_* (another image has the same name)\n";
  int bad = 0;
  for (const std::string& path : a.images) {
    Result r;
    std::vector<double> dec, pre, inf, post, total;
    try {
      for (int i = 0; i < a.repeat; ++i) {
        r = segment(path, m, *backend);
        dec.push_back(r.decode_ms); pre.push_back(r.preprocess_ms); inf.push_back(r.infer_ms); post.push_back(r.post_ms);
        total.push_back(r.decode_ms + r.preprocess_ms + r.infer_ms + r.post_ms);
      }
    } catch (const ImageError& e) {  // this image's fault: skip it (a model or manifest error ends the run)
      std::cerr << e.message() << "\n";
      ++bad;
      continue;
    }
    const std::string& stem = stems.at(path);
    write_png_atomic((fs::path(a.out) / (stem + "_labels.png")).string(), r.labels);
    write_png_atomic((fs::path(a.out) / (stem + "_overlay.png")).string(), overlay(r.rgb, r.labels, m.palette, a.alpha));
    char line[256];
    std::snprintf(line, sizeof line, "%s: %dx%d, %.2f ms (decode %.2f, preprocess %.2f, infer %.2f, post %.2f)%s",
                  path.c_str(), r.rgb.width, r.rgb.height, median(total), median(dec), median(pre), median(inf),
                  median(post), a.repeat > 1 ? (" median of " + std::to_string(a.repeat)).c_str() : "");
    std::cout << line << "\n";
    report["images"].push_back({{"image", path}, {"output_stem", stem}, {"width", r.rgb.width}, {"height", r.rgb.height},
                                {"total_ms", median(total)}, {"decode_ms", median(dec)}, {"preprocess_ms", median(pre)},
                                {"infer_ms", median(inf)}, {"post_ms", median(post)}, {"total_ms_all", total}});
  }
  if (!a.json.empty()) {
    const std::string tmp = a.json + ".tmp";
    std::ofstream(tmp) << report.dump(2) << "\n";
    fs::rename(tmp, a.json);
  }
  if (bad)
    std::cerr << "nfdseg_cpp: " << bad << " of " << a.images.size() << " images skipped (named above), "
              << a.images.size() - bad << " written to " << a.out << "\n";
  return bad ? 1 : 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(parse(argc, argv));
  } catch (const NfdsegError& e) {
    std::cerr << e.message() << "\n";
  } catch (const std::exception& e) {  // a library error nothing above anticipated: still one message, no abort
    std::cerr << "error: " << e.what() << "\n";
  }
  return 2;
}
