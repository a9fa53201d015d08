// Decoding image files to upright RGB exactly as nfdseg.preprocess.load_image (Pillow) does.
#include <algorithm>
#include <csetjmp>
#include <filesystem>
#include <fstream>

#include "error.hpp"
#include "image.hpp"

#define STB_IMAGE_IMPLEMENTATION
#define STBI_NO_HDR
#define STBI_NO_LINEAR
#include <stb_image.h>
// JPEG through libjpeg(-turbo), as Pillow decodes it (islow IDCT, fancy upsampling): stb_image's decoder
// rounds differently and reads a 3-component JPEG without a JFIF marker (most camera files) as RGB, not YCbCr.
#include <jpeglib.h>
#include <jerror.h>  // JWRN_JPEG_EOF

namespace {

// ---- EXIF orientation (tag 0x0112 of IFD0), from a JPEG APP1 "Exif" segment or a PNG eXIf chunk -------------

uint32_t read_u(const std::vector<uint8_t>& b, size_t at, int bytes, bool big_endian) {
  uint32_t v = 0;
  for (int i = 0; i < bytes; ++i) {
    const uint32_t byte = b[at + (big_endian ? i : bytes - 1 - i)];
    v = (v << 8) | byte;
  }
  return v;
}

int orientation_from_tiff(const std::vector<uint8_t>& b, size_t start, size_t end) {
  if (end - start < 8) return 1;
  const bool be = b[start] == 'M' && b[start + 1] == 'M';
  if (!be && !(b[start] == 'I' && b[start + 1] == 'I')) return 1;
  const size_t ifd = start + read_u(b, start + 4, 4, be);
  if (ifd + 2 > end) return 1;
  const uint32_t count = read_u(b, ifd, 2, be);
  for (uint32_t i = 0; i < count; ++i) {
    const size_t entry = ifd + 2 + 12 * static_cast<size_t>(i);
    if (entry + 12 > end) return 1;
    if (read_u(b, entry, 2, be) == 0x0112) {
      const uint32_t type = read_u(b, entry + 2, 2, be);
      const uint32_t v = type == 3 ? read_u(b, entry + 8, 2, be) : type == 4 ? read_u(b, entry + 8, 4, be) : 1;
      return v >= 1 && v <= 8 ? static_cast<int>(v) : 1;  // as nfdseg: anything else counts as upright
    }
  }
  return 1;
}

int exif_orientation(const std::vector<uint8_t>& b) {
  static const uint8_t png_sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  if (b.size() > 8 && std::equal(png_sig, png_sig + 8, b.begin())) {
    for (size_t at = 8; at + 12 <= b.size();) {
      const size_t len = read_u(b, at, 4, true);
      if (at + 12 + len > b.size()) break;
      if (std::equal(b.begin() + at + 4, b.begin() + at + 8, "eXIf")) return orientation_from_tiff(b, at + 8, at + 8 + len);
      at += 12 + len;
    }
    return 1;
  }
  if (b.size() > 4 && b[0] == 0xFF && b[1] == 0xD8) {
    for (size_t at = 2; at + 4 <= b.size();) {
      if (b[at] != 0xFF) break;
      const uint8_t marker = b[at + 1];
      if (marker == 0xD9 || marker == 0xDA) break;  // end of image, start of scan: no more headers
      const size_t len = read_u(b, at + 2, 2, true);
      if (len < 2 || at + 2 + len > b.size()) break;
      const size_t data = at + 4;
      if (marker == 0xE1 && len >= 8 && std::equal(b.begin() + data, b.begin() + data + 6, "Exif\0\0"))
        return orientation_from_tiff(b, data + 6, at + 2 + len);
      at += 2 + len;
    }
  }
  return 1;
}

// Pillow's ImageOps.exif_transpose: 2 mirror, 3 rotate 180, 4 flip, 5 transpose, 6 rotate 90 clockwise,
// 7 transverse, 8 rotate 90 counter-clockwise. out(x, y) = in(sx, sy).
Image apply_orientation(const Image& in, int orientation) {
  if (orientation == 1) return in;
  const bool swap = orientation >= 5;
  Image out;
  out.width = swap ? in.height : in.width;
  out.height = swap ? in.width : in.height;
  out.channels = in.channels;
  out.pixels.resize(in.pixels.size());
  const int W = in.width, H = in.height;
  for (int y = 0; y < out.height; ++y)
    for (int x = 0; x < out.width; ++x) {
      int sx = x, sy = y;
      switch (orientation) {
        case 2: sx = W - 1 - x; break;
        case 3: sx = W - 1 - x; sy = H - 1 - y; break;
        case 4: sy = H - 1 - y; break;
        case 5: sx = y; sy = x; break;
        case 6: sx = y; sy = H - 1 - x; break;
        case 7: sx = W - 1 - y; sy = H - 1 - x; break;
        case 8: sx = W - 1 - y; sy = x; break;
      }
      std::copy_n(in.at(sx, sy), in.channels, out.at(x, y));
    }
  return out;
}

// Pillow's alpha_composite of the pixel over opaque black (AlphaComposite.c, 7-bit precision): c * a / 255, rounded.
uint8_t over_black(uint32_t c, uint32_t a) {
  const uint32_t t = c * a * 128 + (0x80 << 7);
  return static_cast<uint8_t>((((t >> 8) + t) >> 8) >> 7);
}

struct JpegError {
  jpeg_error_mgr mgr;
  std::jmp_buf jump;
  char text[JMSG_LENGTH_MAX];
};

void jpeg_fail(j_common_ptr cinfo) {
  JpegError* e = reinterpret_cast<JpegError*>(cinfo->err);
  (*cinfo->err->format_message)(cinfo, e->text);
  std::longjmp(e->jump, 1);
}

// Decode a JPEG to RGB (grayscale repeated), or return false with the decoder's message in `why`.
bool decode_jpeg(const std::vector<uint8_t>& bytes, Image& img, std::string& why) {
  jpeg_decompress_struct cinfo;
  JpegError err;
  cinfo.err = jpeg_std_error(&err.mgr);
  err.mgr.error_exit = jpeg_fail;
  err.mgr.output_message = [](j_common_ptr) {};  // warnings are not printed
  // A file that ends early is refused, as Pillow refuses it ("image file is truncated"); libjpeg would only
  // warn and fill the rest with grey. Other warnings (extraneous bytes) pass, as in Pillow.
  err.mgr.emit_message = [](j_common_ptr c, int level) {
    if (level < 0 && c->err->msg_code == JWRN_JPEG_EOF) jpeg_fail(c);
  };
  std::vector<uint8_t> row;
  if (setjmp(err.jump)) {
    why = err.text;
    jpeg_destroy_decompress(&cinfo);
    return false;
  }
  jpeg_create_decompress(&cinfo);
  jpeg_mem_src(&cinfo, bytes.data(), static_cast<unsigned long>(bytes.size()));
  jpeg_read_header(&cinfo, TRUE);
  if (cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK) {
    why = "a CMYK JPEG (this program reads grayscale and colour JPEGs)";
    jpeg_destroy_decompress(&cinfo);
    return false;
  }
  const bool gray = cinfo.num_components == 1;
  cinfo.out_color_space = gray ? JCS_GRAYSCALE : JCS_RGB;
  if (static_cast<long long>(cinfo.image_width) * cinfo.image_height > kMaxPixels) {
    img.width = static_cast<int>(cinfo.image_width);
    img.height = static_cast<int>(cinfo.image_height);
    jpeg_destroy_decompress(&cinfo);
    return true;  // the caller refuses the size
  }
  jpeg_start_decompress(&cinfo);
  img.width = static_cast<int>(cinfo.output_width);
  img.height = static_cast<int>(cinfo.output_height);
  img.channels = 3;
  img.pixels.resize(static_cast<size_t>(img.width) * img.height * 3);
  row.resize(static_cast<size_t>(img.width));
  while (cinfo.output_scanline < cinfo.output_height) {
    uint8_t* dst = img.at(0, static_cast<int>(cinfo.output_scanline));
    JSAMPROW rows[1] = {gray ? row.data() : dst};  // colour rows are decoded in place
    jpeg_read_scanlines(&cinfo, rows, 1);
    if (gray)
      for (int x = 0; x < img.width; ++x) std::fill_n(dst + 3 * x, 3, row[x]);
  }
  jpeg_finish_decompress(&cinfo);
  jpeg_destroy_decompress(&cinfo);
  return true;
}

}  // namespace

static Image finish(Image img, const std::vector<uint8_t>& bytes, const std::string& path);

Image load_image(const std::string& path) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!std::filesystem::is_regular_file(path) || !in)
    throw ImageError("image file not found: " + path, "", "check the path (and that it is a readable file)");
  std::vector<uint8_t> bytes(static_cast<size_t>(std::max<std::streamoff>(in.tellg(), 0)));
  in.seekg(0);
  in.read(reinterpret_cast<char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  const auto fail = [&](const std::string& why) {
    return ImageError(path + ": not a readable image (corrupt, truncated or not an image format)", why,
                       "pass a PNG, JPEG, BMP, GIF or PNM file");
  };
  if (bytes.empty()) throw fail("empty file");
  Image img;
  const auto check_size = [&](long long w, long long h) {
    if (w * h > kMaxPixels)
      throw ImageError(path + ": image is too large",
                       std::to_string(w) + "x" + std::to_string(h) + " = " + std::to_string(w * h) +
                           " pixels, limit " + std::to_string(kMaxPixels), "downscale it");
  };
  if (bytes.size() > 3 && bytes[0] == 0xFF && bytes[1] == 0xD8 && bytes[2] == 0xFF) {
    std::string why;
    if (!decode_jpeg(bytes, img, why)) throw fail(why);
    check_size(img.width, img.height);
    return finish(img, bytes, path);
  }
  const int len = static_cast<int>(std::min<size_t>(bytes.size(), INT32_MAX));
  int w = 0, h = 0, comp = 0;
  if (!stbi_info_from_memory(bytes.data(), len, &w, &h, &comp)) throw fail(stbi_failure_reason());
  check_size(w, h);
  img.channels = 3;
  if (comp == 1 && stbi_is_16_bit_from_memory(bytes.data(), len)) {
    // Pillow opens 16-bit grayscale as I;16; nfdseg scales it by its peak (65535, or 255 when no value exceeds 255).
    stbi_us* p = stbi_load_16_from_memory(bytes.data(), len, &w, &h, &comp, 1);
    if (!p) throw fail(stbi_failure_reason());
    const size_t n = static_cast<size_t>(w) * h;
    const double peak = *std::max_element(p, p + n) > 255 ? 65535.0 : 255.0;
    img.pixels.resize(n * 3);
    for (size_t i = 0; i < n; ++i) {
      const double v = std::min(255.0, std::max(0.0, p[i] / peak * 255.0 + 0.5));
      std::fill_n(&img.pixels[3 * i], 3, static_cast<uint8_t>(v));
    }
    stbi_image_free(p);
  } else {
    // Gray+alpha, RGBA and paletted-with-transparency images are composited on black, as nfdseg does.
    const bool alpha = comp == 2 || comp == 4;
    stbi_uc* p = stbi_load_from_memory(bytes.data(), len, &w, &h, &comp, alpha ? 4 : 3);
    if (!p) throw fail(stbi_failure_reason());
    const size_t n = static_cast<size_t>(w) * h;
    img.pixels.resize(n * 3);
    for (size_t i = 0; i < n; ++i)
      for (int c = 0; c < 3; ++c)
        img.pixels[3 * i + c] = alpha ? over_black(p[4 * i + c], p[4 * i + 3]) : p[3 * i + c];
    stbi_image_free(p);
  }
  img.width = w;
  img.height = h;
  return finish(img, bytes, path);
}

// Upright by the EXIF orientation, then refuse an image too small to segment.
static Image finish(Image img, const std::vector<uint8_t>& bytes, const std::string& path) {
  const int orientation = exif_orientation(bytes);
  if (orientation != 1) img = apply_orientation(img, orientation);
  if (img.width < kMinSide || img.height < kMinSide)
    throw ImageError(path + ": image is too small to segment",
                      std::to_string(img.width) + "x" + std::to_string(img.height) + " pixels",
                      "pass an image at least 2x2");
  return img;
}
