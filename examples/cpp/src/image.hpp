// Decoding, pre- and post-processing, bit-for-bit as nfdseg/preprocess.py does them with numpy and Pillow.
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "manifest.hpp"

struct Image {  // 8-bit, interleaved, row-major; channels 1 (a label map) or 3 (RGB)
  int width = 0, height = 0, channels = 3;
  std::vector<uint8_t> pixels;
  uint8_t* at(int x, int y) { return &pixels[(static_cast<size_t>(y) * width + x) * channels]; }
  const uint8_t* at(int x, int y) const { return &pixels[(static_cast<size_t>(y) * width + x) * channels]; }
};

constexpr long long kMaxPixels = 64000000;  // nfdseg.preprocess.DEFAULT_MAX_PIXELS
constexpr int kMinSide = 2;                 // ImageLimits.min_side

// load_image: decode a file to upright RGB (EXIF orientation of JPEG/PNG applied, alpha composited on black,
// grayscale repeated, 16-bit grayscale scaled as Pillow's I;16 is). Throws NfdsegError naming the file.
Image load_image(const std::string& path);

// resize_image: Pillow's Image.resize(BILINEAR) on RGB (a triangle filter widened by the scale when
// shrinking, 22-bit fixed-point coefficients, horizontal then vertical pass). No-op at the same size.
Image resize_bilinear(const Image& img, int width, int height);

// normalize + layout: float32 1x3xHxW, (x / 255 - mean) / std in the manifest's colour order.
std::vector<float> to_nchw_normalized(const Image& img, const Manifest& m);
// normalize_in_graph: the resized RGB bytes as 1xHxWx3.
std::vector<uint8_t> to_nhwc_uint8(const Image& img);

// Argmax over classes of 1xCxHxW logits (first maximum wins, as numpy's argmax).
Image argmax_labels(const float* logits, int classes, int height, int width);
// resize_labels: nearest neighbour, source index = floor(i * in / out) in float64, as numpy computes it.
Image resize_labels(const Image& labels, int width, int height);
// overlay: image * (1 - alpha) + palette[label] * alpha + 0.5 in float32, truncated to uint8.
Image overlay(const Image& rgb, const Image& labels, const std::vector<std::array<uint8_t, 3>>& palette, double alpha);

// Write a PNG atomically (a temporary file renamed into place): no half-written file left at `path`.
void write_png_atomic(const std::string& path, const Image& img);
