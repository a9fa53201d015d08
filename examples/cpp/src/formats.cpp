// What stb_image reads differently from Pillow, done as Pillow does it (its PpmImagePlugin, BmpImagePlugin and
// PngImagePlugin): binary PGM/PPM at any maxval, 32-bit BMP's fourth byte, a PNG that ends without IEND, and
// image sizes read from the header (so a huge image is "too large", not a failure of the decoder).
#include "formats.hpp"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstring>

namespace {

uint32_t be32(const uint8_t* p) { return uint32_t{p[0]} << 24 | uint32_t{p[1]} << 16 | uint32_t{p[2]} << 8 | p[3]; }
uint32_t le32(const uint8_t* p) { return uint32_t{p[3]} << 24 | uint32_t{p[2]} << 16 | uint32_t{p[1]} << 8 | p[0]; }
uint32_t le16(const uint8_t* p) { return (uint32_t{p[1]} << 8) | p[0]; }

bool is_png(const Bytes& b) {
  static const uint8_t sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  return b.size() >= 8 && std::equal(sig, sig + 8, b.begin());
}

bool is_space(uint8_t c) { return std::strchr(" \t\n\v\f\r", c) && c != 0; }

std::string printable(const std::string& s) {  // bytes from a broken file, safe to print: \xNN for the rest
  std::string out;
  for (unsigned char c : s) {
    if (c >= 0x20 && c < 0x7f) { out += static_cast<char>(c); continue; }
    char hex[5];
    std::snprintf(hex, sizeof hex, "\\x%02x", c);
    out += hex;
  }
  return out;
}

}  // namespace

bool header_size(const Bytes& b, long long& w, long long& h) {
  if (is_png(b) && b.size() >= 24 && std::memcmp(&b[12], "IHDR", 4) == 0) {
    w = be32(&b[16]);
    h = be32(&b[20]);
    return true;
  }
  if (b.size() >= 26 && b[0] == 'B' && b[1] == 'M') {
    const uint32_t hsz = le32(&b[14]);
    if (hsz == 12) {
      w = le16(&b[18]);
      h = le16(&b[20]);
      return true;
    }
    if (hsz >= 40) {
      w = static_cast<int32_t>(le32(&b[18]));
      h = std::llabs(static_cast<int32_t>(le32(&b[22])));  // negative: stored top-down
      return true;
    }
  }
  if (b.size() >= 10 && (std::memcmp(b.data(), "GIF87a", 6) == 0 || std::memcmp(b.data(), "GIF89a", 6) == 0)) {
    w = le16(&b[6]);
    h = le16(&b[8]);
    return true;
  }
  return false;
}

bool bmp_fourth_byte_is_padding(const Bytes& b) {
  // Pillow reads a 32-bit BI_RGB (uncompressed) BMP as BGRX: the fourth byte is padding, not alpha. Alpha
  // comes only with BI_BITFIELDS and an alpha mask (stb_image agrees there).
  if (b.size() < 34 || b[0] != 'B' || b[1] != 'M' || le32(&b[14]) < 40) return false;
  return le16(&b[28]) == 32 && le32(&b[30]) == 0;
}

bool bmp_truncated(const Bytes& b, std::string& why) {
  if (b.size() < 26 || b[0] != 'B' || b[1] != 'M') return false;
  const uint32_t hsz = le32(&b[14]);
  long long w = 0, h = 0, bits = 0, compression = 0, colors = 0;
  if (hsz == 12) {
    w = le16(&b[18]), h = le16(&b[20]), bits = le16(&b[24]);
  } else if (hsz >= 40 && b.size() >= 50) {
    w = static_cast<int32_t>(le32(&b[18])), h = std::llabs(static_cast<int32_t>(le32(&b[22])));
    bits = le16(&b[28]), compression = le32(&b[30]), colors = le32(&b[46]);
  } else {
    return false;
  }
  if ((compression != 0 && compression != 3) || w <= 0 || bits <= 0 || bits > 32) return false;  // RLE: stb's
  // Pillow's raw decoder needs every row, padded to 4 bytes, from the data offset (moved past the palette when
  // the offset points at the palette, as BmpImagePlugin does).
  long long offset = le32(&b[10]);
  if (offset == 14 + hsz && bits <= 8) offset += (hsz == 12 ? 3 : 4) * (colors ? colors : 1LL << bits);
  const long long stride = ((w * bits + 31) >> 3) & ~3LL, need = offset + stride * h;
  if (static_cast<long long>(b.size()) >= need) return false;
  why = "image file is truncated (" + std::to_string(std::max(0LL, static_cast<long long>(b.size()) - offset)) +
        " of " + std::to_string(stride * h) + " bytes of pixels)";
  return true;
}

// ---- PBM, PGM and PPM, binary (P4-P6) and plain text (P1-P3) ----------------------------------------------------

bool is_pnm(const Bytes& b) { return b.size() >= 2 && b[0] == 'P' && b[1] >= '1' && b[1] <= '6'; }

// PpmImageFile._read_token (and the plain decoders' tokens): whitespace-separated, '#' up to the end of the line
// is a comment (also inside a token, which continues after it), at most 10 bytes.
static bool pnm_token(const Bytes& b, size_t& at, std::string& token, std::string& why, bool header = true) {
  token.clear();
  while (token.size() <= 10 && at < b.size()) {
    const uint8_t c = b[at++];
    if (is_space(c)) {
      if (token.empty()) continue;
      break;
    }
    if (c == '#') {
      while (at < b.size() && b[at] != '\r' && b[at] != '\n') ++at;
      if (at < b.size()) ++at;
      continue;
    }
    token += static_cast<char>(c);
  }
  if (token.empty()) { why = header ? "Reached EOF while reading header" : "not enough image data"; return false; }
  if (token.size() > 10) {
    why = "Token too long in file " + std::string(header ? "header" : "data") + ": " + printable(token);
    return false;
  }
  return true;
}

static bool pnm_number(const Bytes& b, size_t& at, long long& value, std::string& why, bool header = true) {
  std::string token;
  if (!pnm_token(b, at, token, why, header)) return false;
  if (!std::all_of(token.begin(), token.end(), ::isdigit)) {
    why = "invalid number: " + printable(token);
    return false;
  }
  value = std::stoll(token);
  return true;
}

bool pnm_header(const Bytes& b, PnmHeader& h, std::string& why) {
  h.magic = static_cast<char>(b[1]);
  h.bands = h.magic == '3' || h.magic == '6' ? 3 : 1;
  if (b.size() > 2 && !is_space(b[2])) { why = "not a PPM file"; return false; }  // Pillow: magic, whitespace
  size_t at = 2;
  long long w = 0, ht = 0, maxval = 1;
  if (!pnm_number(b, at, w, why) || !pnm_number(b, at, ht, why)) return false;
  const bool bitmap = h.magic == '1' || h.magic == '4';
  if (!bitmap && !pnm_number(b, at, maxval, why)) return false;
  if (!(maxval > 0 && maxval < 65536)) { why = "maxval must be greater than 0 and less than 65536"; return false; }
  if (w < 1 || ht < 1) { why = "size " + std::to_string(w) + "x" + std::to_string(ht); return false; }
  h.width = w;
  h.height = ht;
  h.maxval = static_cast<int>(maxval);
  h.data = at;
  return true;
}

// The samples as Pillow holds them: 0-255 (mode 1, L, RGB) or 0-65535 (mode I: grayscale with maxval > 255).
static bool pnm_samples(const Bytes& b, const PnmHeader& h, bool wide, std::vector<uint32_t>& v, std::string& why) {
  const size_t n = v.size();
  const int maxval = h.maxval;
  const double out_max = wide ? 65535.0 : 255.0;
  const auto scaled = [&](uint32_t s) {  // min(out_max, round(s / maxval * out_max)); nearbyint: half to even
    return static_cast<uint32_t>(std::min(out_max, std::nearbyint(static_cast<double>(s) / maxval * out_max)));
  };
  size_t at = h.data;
  if (h.magic == '1') {  // '0' white, '1' black, whitespace optional, comments skipped
    size_t i = 0;
    while (at < b.size()) {
      const uint8_t c = b[at++];
      if (is_space(c)) continue;
      if (c == '#') {
        while (at < b.size() && b[at] != '\r' && b[at] != '\n') ++at;
        continue;
      }
      if (c != '0' && c != '1') {
        why = "Invalid token for this mode: " + printable(std::string(1, static_cast<char>(c)));
        return false;
      }
      if (i < n) v[i++] = c == '0' ? 255 : 0;  // Pillow checks every character it read, the rest too
    }
    if (i < n) { why = "not enough image data"; return false; }
    return true;
  }
  if (h.magic == '2' || h.magic == '3') {  // decimal samples; above maxval is an error here
    long long value = 0;
    for (size_t i = 0; i < n; ++i) {
      if (!pnm_number(b, at, value, why, false)) return false;
      if (value > maxval) { why = "Channel value too large for this mode: " + std::to_string(value); return false; }
      v[i] = scaled(static_cast<uint32_t>(value));
    }
    return true;
  }
  const size_t stride = h.magic == '4' ? (static_cast<size_t>(h.width) + 7) / 8 : 0;  // bits, rows padded to bytes
  const int in_bytes = maxval < 256 ? 1 : 2;
  const size_t need = h.magic == '4' ? stride * h.height : n * in_bytes;
  if (b.size() - at < need) {
    why = "image file is truncated (" + std::to_string(b.size() - at) + " of " + std::to_string(need) +
          " bytes of pixels)";
    return false;
  }
  const uint8_t* p = &b[at];
  for (size_t i = 0; i < n; ++i) {
    if (h.magic == '4') {
      const size_t y = i / h.width, x = i % h.width;
      v[i] = (p[y * stride + x / 8] >> (7 - x % 8)) & 1 ? 0 : 255;  // "1;I": a set bit is black
      continue;
    }
    const uint32_t s = in_bytes == 1 ? p[i] : uint32_t{p[2 * i]} << 8 | p[2 * i + 1];
    v[i] = maxval == 255 || (maxval == 65535 && wide) ? s : scaled(s);  // raw, or Pillow's PpmDecoder
  }
  return true;
}

bool decode_pnm(const Bytes& b, const PnmHeader& h, Image& img, std::string& why) {
  const size_t n = static_cast<size_t>(h.width) * h.height;
  const bool wide = h.bands == 1 && h.maxval > 255;  // Pillow's mode I
  std::vector<uint32_t> v(n * h.bands);
  if (!pnm_samples(b, h, wide, v, why)) return false;
  img.width = static_cast<int>(h.width);
  img.height = static_cast<int>(h.height);
  img.channels = 3;
  img.pixels.resize(n * 3);
  if (wide) {  // nfdseg's I mode: scaled by its peak (65535, or 255 when no value exceeds 255)
    const double peak = *std::max_element(v.begin(), v.end()) > 255 ? 65535.0 : 255.0;
    for (size_t i = 0; i < n; ++i)
      std::fill_n(&img.pixels[3 * i], 3, static_cast<uint8_t>(std::min(255.0, v[i] / peak * 255.0 + 0.5)));
  } else {
    for (size_t i = 0; i < n; ++i)
      for (int c = 0; c < 3; ++c) img.pixels[3 * i + c] = static_cast<uint8_t>(v[h.bands == 3 ? 3 * i + c : i]);
  }
  return true;
}

// ---- PNG: header checksums, and a file that ends without IEND ----------------------------------------------------

static uint32_t crc32(const uint8_t* p, size_t n, uint32_t crc = 0) {  // zlib's crc32, as PNG uses it
  static uint32_t table[256];
  static const bool ready = [] {
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      table[i] = c;
    }
    return true;
  }();
  (void)ready;
  crc = ~crc;
  for (size_t i = 0; i < n; ++i) crc = table[(crc ^ p[i]) & 0xFF] ^ (crc >> 8);
  return ~crc;
}

static bool is_chunk_type(const std::string& t) {  // PngStream.read: re.match(rb"\w\w\w\w", cid)
  return std::all_of(t.begin(), t.end(), [](unsigned char c) { return std::isalnum(c) || c == '_'; });
}

bool png_as_pillow(const Bytes& b, Bytes& repaired, std::string& why) {
  if (!is_png(b)) return false;
  bool idat = false;
  size_t at = 8, data_end = 0;  // data_end: where the last chunk's data ends, when the file ends after it
  while (b.size() - at >= 8) {    // fewer bytes left: the end, or a partial chunk header (Pillow stops there)
    const size_t len = be32(&b[at]), left = b.size() - at - 8;
    const std::string type(b.begin() + at + 4, b.begin() + at + 8);
    if (!is_chunk_type(type)) {
      if (idat) break;  // after the image data Pillow stops reading chunks there
      why = "broken PNG file (chunk " + printable(type) + ")";
      return true;
    }
    if (type == "IEND") return false;  // complete: stb_image reads it as it is
    idat = idat || type == "IDAT";
    // Pillow checks the CRC of every chunk before the image data (stb_image of none)
    if (!idat && len + 4 <= left && crc32(&b[at + 8], len, crc32(&b[at + 4], 4)) != be32(&b[at + 8 + len])) {
      why = "broken PNG file (bad header checksum in " + printable(type) + ")";
      return true;
    }
    if (len + 4 <= left) {
      at += 12 + len;
      continue;
    }
    // The file ends inside this chunk. Its CRC: Pillow does not check it after the image data. Its data:
    // Pillow still reads the image when the cut falls in the last IDAT's zlib checksum (4 bytes; it stops once
    // it has every row); anywhere else the file is truncated for it too.
    if (!idat || (len > left && (type != "IDAT" || len - left > 4))) {
      why = "image file is truncated (it ends inside its " + printable(type) + " chunk)";
      return true;
    }
    data_end = at + 8 + len;
    break;
  }
  if (!idat) return false;  // no image data: stb_image says what is missing
  static const uint8_t iend[12] = {0, 0, 0, 0, 'I', 'E', 'N', 'D', 0xAE, 0x42, 0x60, 0x82};
  if (data_end) {  // zeros for the missing checksum bytes and CRC, which stb_image does not verify
    repaired.assign(b.begin(), b.begin() + static_cast<std::ptrdiff_t>(std::min(data_end, b.size())));
    repaired.resize(data_end + 4, 0);
  } else {
    repaired.assign(b.begin(), b.begin() + static_cast<std::ptrdiff_t>(at));
  }
  repaired.insert(repaired.end(), iend, iend + 12);
  return true;
}
