// Decoding image files to upright RGB exactly as nfdseg.preprocess.load_image (Pillow) does.
#include <algorithm>
#include <csetjmp>
#include <filesystem>
#include <fstream>

#include "error.hpp"
#include "formats.hpp"
#include "image.hpp"
#include "orientation.hpp"

#define STB_IMAGE_IMPLEMENTATION
#define STBI_NO_HDR
#define STBI_NO_LINEAR
#include <stb_image.h>
// JPEG through libjpeg(-turbo), as Pillow decodes it (islow IDCT, fancy upsampling): stb_image's decoder
// rounds differently and reads a 3-component JPEG without a JFIF marker (most camera files) as RGB, not YCbCr.
#include <jpeglib.h>
#include <jerror.h>  // JWRN_JPEG_EOF

namespace {

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
  long long declared_w = 0, declared_h = 0;  // refuse a huge image before a decoder tries it
  if (header_size(bytes, declared_w, declared_h)) check_size(declared_w, declared_h);
  std::string why;
  if (is_pnm(bytes)) {
    PnmHeader pnm;
    if (!pnm_header(bytes, pnm, why)) throw fail(why);
    check_size(pnm.width, pnm.height);
    if (!decode_pnm(bytes, pnm, img, why)) throw fail(why);
    return finish(img, bytes, path);
  }
  Bytes repaired;  // a PNG without IEND, completed as Pillow reads it
  if ((png_as_pillow(bytes, repaired, why) || bmp_truncated(bytes, why)) && !why.empty()) throw fail(why);
  const Bytes& data = repaired.empty() ? bytes : repaired;
  const int len = static_cast<int>(std::min<size_t>(data.size(), INT32_MAX));
  int w = 0, h = 0, comp = 0;
  if (!stbi_info_from_memory(data.data(), len, &w, &h, &comp)) throw fail(stbi_failure_reason());
  check_size(w, h);
  img.channels = 3;
  if (comp == 1 && stbi_is_16_bit_from_memory(data.data(), len)) {
    // Pillow opens 16-bit grayscale as I;16; nfdseg scales it by its peak (65535, or 255 when no value exceeds 255).
    stbi_us* p = stbi_load_16_from_memory(data.data(), len, &w, &h, &comp, 1);
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
    const bool alpha = (comp == 2 || comp == 4) && !bmp_fourth_byte_is_padding(data);
    stbi_uc* p = stbi_load_from_memory(data.data(), len, &w, &h, &comp, alpha ? 4 : 3);
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
  const int orientation = file_orientation(bytes);
  if (orientation != 1) img = apply_orientation(img, orientation);
  if (img.width < kMinSide || img.height < kMinSide)
    throw ImageError(path + ": image is too small to segment",
                      std::to_string(img.width) + "x" + std::to_string(img.height) + " pixels",
                      "pass an image at least 2x2");
  return img;
}
