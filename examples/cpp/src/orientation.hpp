// The orientation (1-8) Pillow reads from an image file's EXIF or XMP metadata, as nfdseg applies it.
#pragma once
#include <cstdint>
#include <vector>

// 1 (upright) when the file has none, or a block Pillow cannot parse; see orientation.cpp for the sources.
int file_orientation(const std::vector<uint8_t>& bytes);
