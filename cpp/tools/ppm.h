#pragma once
// Binary PPM (P6, maxval 255) image I/O and box outlines: codetr-detect's image I/O when it is
// built without OpenCV. CLI-internal (static library codetr_ppm), not part of libcodetr.
#include <array>
#include <cstdint>
#include <string>
#include <vector>

namespace codetr::cli {

// An owned HxWx3 BGR uint8 image, rows dense (row stride = width * 3).
struct BgrImage {
  int64_t height = 0;
  int64_t width = 0;
  std::vector<uint8_t> pixels;
};

// Parses the bytes of a P6 file with maxval 255 (header comments allowed). Throws codetr::Error
// naming `what` and the problem (bad magic, bad or truncated header, maxval other than 255,
// truncated pixel data).
BgrImage decode_ppm(const std::string& bytes, const std::string& what);

// Reads and decodes `path`; throws codetr::Error when it cannot be read or decoded.
BgrImage read_ppm(const std::string& path);

// P6 bytes of `image` (stored RGB, as the format defines).
std::string encode_ppm(const BgrImage& image);

// Writes `image` to `path`; throws codetr::Error when the file cannot be written.
void write_ppm(const std::string& path, const BgrImage& image);

// Draws the outline of the box (x1, y1)-(x2, y2) (inclusive pixel corners, may lie outside the
// image: the outline is clipped) in `bgr`, `thickness` pixels wide, inwards from the corners.
void draw_box_outline(BgrImage& image, int64_t x1, int64_t y1, int64_t x2, int64_t y2,
                      const std::array<uint8_t, 3>& bgr, int64_t thickness);

}  // namespace codetr::cli
