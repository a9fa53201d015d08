// Pre- and post-processing exactly as nfdseg.preprocess (numpy + Pillow) does it.
#include "image.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>

#include "error.hpp"

#define STB_IMAGE_WRITE_IMPLEMENTATION
#include <stb_image_write.h>

namespace {

constexpr int kPrecisionBits = 32 - 8 - 2;  // Pillow Resample.c PRECISION_BITS

struct Coeffs {
  int ksize = 0;
  std::vector<int> bounds;   // per output pixel: first input index, count
  std::vector<int32_t> k;    // fixed-point weights, ksize per output pixel
};

// Resample.c precompute_coeffs + normalize_coeffs_8bpc, bilinear filter (support 1), box = the whole input.
Coeffs bilinear_coeffs(int in_size, int out_size) {
  const double scale = static_cast<double>(static_cast<float>(in_size) - 0.0f) / out_size;
  const double filterscale = scale < 1.0 ? 1.0 : scale;
  const double support = 1.0 * filterscale;
  Coeffs c;
  c.ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
  c.bounds.resize(2 * static_cast<size_t>(out_size));
  c.k.assign(static_cast<size_t>(out_size) * c.ksize, 0);
  std::vector<double> w(c.ksize);
  for (int xx = 0; xx < out_size; ++xx) {
    const double center = 0.0 + (xx + 0.5) * scale;
    const double ss = 1.0 / filterscale;
    int xmin = static_cast<int>(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int xmax = static_cast<int>(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    double ww = 0.0;
    for (int x = 0; x < xmax; ++x) {
      double t = (x + xmin - center + 0.5) * ss;
      if (t < 0.0) t = -t;
      w[x] = t < 1.0 ? 1.0 - t : 0.0;
      ww += w[x];
    }
    for (int x = 0; x < xmax; ++x) {
      const double v = ww != 0.0 ? w[x] / ww : w[x];
      c.k[static_cast<size_t>(xx) * c.ksize + x] =
          v < 0 ? static_cast<int32_t>(-0.5 + v * (1 << kPrecisionBits)) : static_cast<int32_t>(0.5 + v * (1 << kPrecisionBits));
    }
    c.bounds[2 * xx] = xmin;
    c.bounds[2 * xx + 1] = xmax;
  }
  return c;
}

uint8_t clip8(int v) {  // Resample.c clip8: the integer part of the fixed-point sum, clamped to 0..255
  const int s = v >> kPrecisionBits;
  return static_cast<uint8_t>(s < 0 ? 0 : s > 255 ? 255 : s);
}

}  // namespace

Image resize_bilinear(const Image& img, int width, int height) {
  if (img.width == width && img.height == height) return img;
  const int ch = img.channels;
  const Coeffs cv = bilinear_coeffs(img.height, height);
  // Rows of the input the vertical pass reads (Resample.c: ybox_first .. ybox_last).
  const int first = cv.bounds[0];
  const int last = cv.bounds[2 * (height - 1)] + cv.bounds[2 * (height - 1) + 1];
  Image tmp;                // the horizontal pass's output, when the width changes
  const Image* src = &img;  // what the vertical pass reads
  int row0 = 0;             // row of `src` that holds input row `first`
  if (width != img.width) {
    const Coeffs ch_ = bilinear_coeffs(img.width, width);
    tmp.width = width;
    tmp.height = last - first;
    tmp.pixels.assign(static_cast<size_t>(tmp.width) * tmp.height * ch, 0);
    for (int y = 0; y < tmp.height; ++y)
      for (int xx = 0; xx < width; ++xx) {
        const int xmin = ch_.bounds[2 * xx], xmax = ch_.bounds[2 * xx + 1];
        const int32_t* k = &ch_.k[static_cast<size_t>(xx) * ch_.ksize];
        int ss[4] = {1 << (kPrecisionBits - 1), 1 << (kPrecisionBits - 1), 1 << (kPrecisionBits - 1),
                     1 << (kPrecisionBits - 1)};
        const uint8_t* p = img.at(xmin, y + first);
        for (int x = 0; x < xmax; ++x, p += ch)
          for (int c = 0; c < ch; ++c) ss[c] += p[c] * k[x];
        for (int c = 0; c < ch; ++c) tmp.at(xx, y)[c] = clip8(ss[c]);
      }
    row0 = first;
    src = &tmp;
  }
  if (height == img.height) return tmp;
  Image out;
  out.width = src->width;
  out.height = height;
  out.channels = ch;
  out.pixels.assign(static_cast<size_t>(out.width) * height * ch, 0);
  for (int yy = 0; yy < height; ++yy) {
    const int ymin = cv.bounds[2 * yy] - row0, ymax = cv.bounds[2 * yy + 1];
    const int32_t* k = &cv.k[static_cast<size_t>(yy) * cv.ksize];
    for (int xx = 0; xx < out.width; ++xx)
      for (int c = 0; c < ch; ++c) {
        int ss = 1 << (kPrecisionBits - 1);
        const uint8_t* p = src->at(xx, ymin) + c;
        const size_t stride = static_cast<size_t>(src->width) * ch;
        for (int y = 0; y < ymax; ++y, p += stride) ss += *p * k[y];
        out.at(xx, yy)[c] = clip8(ss);
      }
  }
  return out;
}

std::vector<float> to_nchw_normalized(const Image& img, const Manifest& m) {
  const size_t plane = static_cast<size_t>(img.width) * img.height;
  std::vector<float> x(3 * plane);
  const float inv255 = static_cast<float>(1.0 / 255.0);  // numpy: float32 array * Python float -> float32
  for (int c = 0; c < 3; ++c) {
    const int src = m.bgr ? 2 - c : c;  // BGR: channel c of the input is colour 2 - c
    for (size_t i = 0; i < plane; ++i) {
      const float v = static_cast<float>(img.pixels[3 * i + src]) * inv255;
      x[c * plane + i] = (v - m.mean[c]) / m.std[c];
    }
  }
  return x;
}

std::vector<uint8_t> to_nhwc_uint8(const Image& img) { return img.pixels; }

Image argmax_labels(const float* logits, int classes, int height, int width) {
  Image lab;
  lab.width = width;
  lab.height = height;
  lab.channels = 1;
  const size_t plane = static_cast<size_t>(width) * height;
  lab.pixels.assign(plane, 0);
  for (size_t i = 0; i < plane; ++i) {
    int best = 0;
    float top = logits[i];
    for (int c = 1; c < classes; ++c) {
      const float v = logits[c * plane + i];
      if (v > top) { top = v; best = c; }
    }
    lab.pixels[i] = static_cast<uint8_t>(best);
  }
  return lab;
}

Image resize_labels(const Image& labels, int width, int height) {
  if (labels.width == width && labels.height == height) return labels;
  Image out;
  out.width = width;
  out.height = height;
  out.channels = 1;
  out.pixels.resize(static_cast<size_t>(width) * height);
  std::vector<int> xs(width);
  for (int x = 0; x < width; ++x) xs[x] = static_cast<int>(static_cast<double>(static_cast<long long>(x) * labels.width) / width);
  for (int y = 0; y < height; ++y) {
    const int sy = static_cast<int>(static_cast<double>(static_cast<long long>(y) * labels.height) / height);
    for (int x = 0; x < width; ++x) out.pixels[static_cast<size_t>(y) * width + x] = *labels.at(xs[x], sy);
  }
  return out;
}

Image overlay(const Image& rgb, const Image& labels, const std::vector<std::array<uint8_t, 3>>& palette, double alpha) {
  alpha = std::min(std::max(alpha, 0.0), 1.0);
  // numpy multiplies the float32 arrays by float32(1 - alpha) and float32(alpha)
  const float keep = static_cast<float>(1.0 - alpha), mix = static_cast<float>(alpha);
  Image out = rgb;
  for (size_t i = 0; i < labels.pixels.size(); ++i) {
    const uint8_t l = labels.pixels[i];
    for (int c = 0; c < 3; ++c) {
      const float colour = l < palette.size() ? palette[l][c] : 0.0f;  // out-of-range labels are black
      out.pixels[3 * i + c] = static_cast<uint8_t>(static_cast<float>(rgb.pixels[3 * i + c]) * keep + colour * mix + 0.5f);
    }
  }
  return out;
}

void write_png_atomic(const std::string& path, const Image& img) {
  const std::string tmp = path + ".tmp";
  if (!stbi_write_png(tmp.c_str(), img.width, img.height, img.channels, img.pixels.data(), img.width * img.channels)) {
    std::remove(tmp.c_str());
    throw NfdsegError("cannot write " + path, "", "check that the output directory is writable");
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    std::remove(tmp.c_str());
    throw NfdsegError("cannot write " + path, ec.message(), "check that the output directory is writable");
  }
}
