// The orientation Pillow finds in an image file (Image.getexif()'s tag 0x0112, which ImageOps.exif_transpose
// applies): the EXIF block of a JPEG (APP1 "Exif") or a PNG (eXIf chunk, else ImageMagick's "Raw profile type
// exif" text chunk, hex); when that has no orientation tag, `tiff:Orientation` in the XMP packet (JPEG APP1
// "http://ns.adobe.com/xap/1.0/", PNG text chunk "XML:com.adobe.xmp").
#include "orientation.hpp"

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <cstring>
#include <string>

#include <stb_image.h>  // stbi_zlib_decode_malloc: compressed PNG text (the implementation is in decode.cpp)

namespace {

using Bytes = std::vector<uint8_t>;

uint32_t read_u(const uint8_t* b, int bytes, bool big_endian) {
  uint32_t v = 0;
  for (int i = 0; i < bytes; ++i) v = (v << 8) | b[big_endian ? i : bytes - 1 - i];
  return v;
}

constexpr int kBadExif = -1;  // not a TIFF block: Pillow's getexif() raises, nfdseg counts the image as upright

// An EXIF block (a TIFF header and IFD0, after any "Exif\0\0" prefixes, as Pillow's Exif.load strips them):
// kBadExif, 0 when it has no orientation tag, else the tag's value (anything outside 1-8 counts as 1).
int orientation_from_exif(const uint8_t* b, size_t n) {
  while (n >= 6 && std::equal(b, b + 6, "Exif\0\0")) b += 6, n -= 6;
  if (n == 0) return 0;
  if (n < 8) return kBadExif;
  const bool be = b[0] == 'M' && b[1] == 'M' && b[2] == 0 && b[3] == 42;
  if (!be && !(b[0] == 'I' && b[1] == 'I' && b[2] == 42 && b[3] == 0)) return kBadExif;
  const size_t ifd = read_u(b + 4, 4, be);
  if (ifd + 2 > n) return 0;
  const uint32_t count = read_u(b + ifd, 2, be);
  for (uint32_t i = 0; i < count; ++i) {
    const size_t entry = ifd + 2 + 12 * static_cast<size_t>(i);
    if (entry + 12 > n) return 0;
    if (read_u(b + entry, 2, be) == 0x0112) {
      const uint32_t type = read_u(b + entry + 2, 2, be);
      const uint32_t v = type == 3 ? read_u(b + entry + 8, 2, be) : type == 4 ? read_u(b + entry + 8, 4, be) : 1;
      return v >= 1 && v <= 8 ? static_cast<int>(v) : 1;
    }
  }
  return 0;
}

// re.search(r'tiff:Orientation(="|>)([0-9])', xmp): the digit, or -1 when nothing matches.
int xmp_orientation(const std::string& xmp) {
  const std::string key = "tiff:Orientation";
  for (size_t at = xmp.find(key); at != std::string::npos; at = xmp.find(key, at + 1)) {
    size_t v = at + key.size();
    if (v < xmp.size() && xmp[v] == '>') v += 1;
    else if (v + 1 < xmp.size() && xmp[v] == '=' && xmp[v + 1] == '"') v += 2;
    else continue;
    if (v < xmp.size() && std::isdigit(static_cast<unsigned char>(xmp[v]))) return xmp[v] - '0';
  }
  return -1;
}

// Python's bytes.fromhex: pairs of hex digits, ASCII whitespace allowed between pairs only.
bool from_hex(const std::string& s, Bytes& out) {
  out.clear();
  for (size_t i = 0; i < s.size();) {
    if (std::strchr(" \t\n\r\f\v", s[i]) && s[i] != '\0') { ++i; continue; }
    if (i + 1 >= s.size() || !std::isxdigit(static_cast<unsigned char>(s[i])) ||
        !std::isxdigit(static_cast<unsigned char>(s[i + 1])))
      return false;
    out.push_back(static_cast<uint8_t>(std::strtol(s.substr(i, 2).c_str(), nullptr, 16)));
    i += 2;
  }
  return true;
}

bool inflate(const uint8_t* b, size_t n, std::string& out) {
  int len = 0;
  char* p = stbi_zlib_decode_malloc(reinterpret_cast<const char*>(b), static_cast<int>(n), &len);
  if (!p) return false;
  out.assign(p, static_cast<size_t>(len));
  stbi_image_free(p);
  return true;
}

struct Metadata {
  bool has_exif = false, has_raw_profile = false;
  Bytes exif;
  std::string raw_profile, xmp;
};

// PNG chunks as PngImagePlugin stores them in `info` (a later chunk with the same key replaces an earlier one;
// chunks after the image data count too, as nfdseg reads the orientation after decoding).
void png_metadata(const Bytes& b, Metadata& m) {
  for (size_t at = 8; at + 8 <= b.size();) {
    const size_t len = read_u(&b[at], 4, true);
    if (len > b.size() - at - 8) break;
    const std::string type(b.begin() + at + 4, b.begin() + at + 8);
    const uint8_t* d = &b[at + 8];
    at += 12 + len;
    if (type == "eXIf") {
      m.has_exif = true;
      m.exif.assign({'E', 'x', 'i', 'f', 0, 0});
      m.exif.insert(m.exif.end(), d, d + len);
      continue;
    }
    if (type != "tEXt" && type != "zTXt" && type != "iTXt") continue;
    const uint8_t* nul = std::find(d, d + len, uint8_t{0});
    const std::string key(d, nul);
    if (key.empty() || nul == d + len) continue;
    const uint8_t* v = nul + 1;
    const size_t vn = static_cast<size_t>(d + len - v);
    std::string value;
    if (type == "tEXt") {
      value.assign(v, v + vn);
      if (key == "exif") {  // tEXt "exif" is stored as the raw block
        m.has_exif = true;
        m.exif.assign(v, v + vn);
        continue;
      }
    } else if (type == "zTXt") {
      if (vn > 0 && v[0] != 0) continue;  // an unknown compression method
      if (vn == 0 || !inflate(v + 1, vn - 1, value)) value.clear();
    } else {  // iTXt: compressed flag, method, language\0, translated keyword\0, text
      if (vn < 2) continue;
      const uint8_t *p = v + 2, *end = v + vn;
      const uint8_t* lang_end = std::find(p, end, uint8_t{0});
      if (lang_end == end) continue;
      const uint8_t* tk_end = std::find(lang_end + 1, end, uint8_t{0});
      if (tk_end == end) continue;
      if (v[0] != 0) {
        if (v[1] != 0 || !inflate(tk_end + 1, static_cast<size_t>(end - tk_end - 1), value)) continue;
      } else {
        value.assign(tk_end + 1, end);
      }
    }
    if (key == "Raw profile type exif") {
      m.has_raw_profile = true;
      m.raw_profile = value;
    } else if (key == "XML:com.adobe.xmp") {
      m.xmp = value;
    }
  }
}

void jpeg_metadata(const Bytes& b, Metadata& m) {
  static const std::string xap = std::string("http://ns.adobe.com/xap/1.0/") + '\0';
  for (size_t at = 2; at + 4 <= b.size();) {
    if (b[at] != 0xFF) break;
    const uint8_t marker = b[at + 1];
    if (marker == 0xD9 || marker == 0xDA) break;  // end of image, start of scan: no more headers
    const size_t len = read_u(&b[at + 2], 2, true);
    if (len < 2 || at + 2 + len > b.size()) break;
    const uint8_t* d = &b[at + 4];
    const size_t n = len - 2;
    if (marker == 0xE1 && !m.has_exif && n >= 6 && std::equal(d, d + 6, "Exif\0\0")) {
      m.has_exif = true;  // Pillow appends later Exif segments to the first: IFD0 is in the first
      m.exif.assign(d, d + n);
    } else if (marker == 0xE1 && n >= xap.size() && std::equal(xap.begin(), xap.end(), d)) {
      m.xmp.assign(d + xap.size(), d + n);  // the last XMP packet wins
    }
    at += 2 + len;
  }
}

}  // namespace

int file_orientation(const std::vector<uint8_t>& bytes) {
  static const uint8_t png_sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  Metadata m;
  if (bytes.size() > 8 && std::equal(png_sig, png_sig + 8, bytes.begin()))
    png_metadata(bytes, m);
  else if (bytes.size() > 4 && bytes[0] == 0xFF && bytes[1] == 0xD8)
    jpeg_metadata(bytes, m);
  else
    return 1;
  int tag = 0;
  if (m.has_exif) {
    tag = orientation_from_exif(m.exif.data(), m.exif.size());
  } else if (m.has_raw_profile) {  // "\nexif\n  LENGTH\nHEX..." : Pillow joins the lines after the third
    size_t start = 0;
    for (int line = 0; line < 3 && start != std::string::npos; ++line) {
      start = m.raw_profile.find('\n', start);
      if (start != std::string::npos) ++start;
    }
    std::string hex;
    if (start != std::string::npos) {
      hex = m.raw_profile.substr(start);
      hex.erase(std::remove(hex.begin(), hex.end(), '\n'), hex.end());
    }
    Bytes raw;
    tag = from_hex(hex, raw) ? orientation_from_exif(raw.data(), raw.size()) : kBadExif;
  }
  if (tag == kBadExif) return 1;
  if (tag == 0) tag = xmp_orientation(m.xmp);
  return tag >= 1 && tag <= 8 ? tag : 1;
}
