// Image formats read as Pillow reads them where stb_image differs (see formats.cpp).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "image.hpp"

using Bytes = std::vector<uint8_t>;

// The size a PNG, BMP or GIF header declares (before any pixel is decoded); false for other formats.
bool header_size(const Bytes& b, long long& w, long long& h);

// A 32-bit uncompressed (BI_RGB) BMP: Pillow reads its fourth byte as padding (BGRX), not as alpha.
bool bmp_fourth_byte_is_padding(const Bytes& b);

// PBM, PGM and PPM, binary (P4-P6) and plain text (P1-P3), at any maxval 1-65535, scaled as Pillow's
// PpmDecoder / PpmPlainDecoder and nfdseg do.
struct PnmHeader {
  char magic = '6';  // '1'-'6'
  long long width = 0, height = 0;
  int maxval = 255, bands = 1;
  size_t data = 0;  // offset of the first pixel
};
bool is_pnm(const Bytes& b);
bool pnm_header(const Bytes& b, PnmHeader& h, std::string& why);
bool decode_pnm(const Bytes& b, const PnmHeader& h, Image& img, std::string& why);

// A BMP (uncompressed or bitfields) shorter than its rows: Pillow refuses it, stb_image would read zeros.
bool bmp_truncated(const Bytes& b, std::string& why);

// A PNG checked as Pillow checks it: true with `why` when Pillow refuses it (a bad chunk type or CRC before the
// image data, a cut inside the image data); true with `repaired` (the same chunks and an IEND) when it ends
// without IEND (a download cut short after the image data), which Pillow reads; false otherwise.
bool png_as_pillow(const Bytes& b, Bytes& repaired, std::string& why);
