#include "ppm.h"

#include <algorithm>
#include <cctype>
#include <fstream>
#include <iterator>
#include <limits>

#include "codetr/error.h"

namespace codetr::cli {
namespace {

// Skips whitespace and '#' comments (to the end of the line) between header fields.
void skip_separators(const std::string& bytes, size_t& pos) {
  while (pos < bytes.size()) {
    if (bytes[pos] == '#') {
      while (pos < bytes.size() && bytes[pos] != '\n' && bytes[pos] != '\r') ++pos;
    } else if (std::isspace(static_cast<unsigned char>(bytes[pos]))) {
      ++pos;
    } else {
      return;
    }
  }
}

int64_t header_number(const std::string& bytes, size_t& pos, const char* field, const std::string& what) {
  skip_separators(bytes, pos);
  if (pos >= bytes.size()) throw Error(what + ": truncated PPM header (no " + field + ")");
  int64_t value = 0;
  size_t digits = 0;
  for (; pos < bytes.size() && std::isdigit(static_cast<unsigned char>(bytes[pos])); ++pos, ++digits) {
    if (value > 100000000) throw Error(what + ": PPM " + field + " is too large");
    value = value * 10 + (bytes[pos] - '0');
  }
  if (digits == 0) throw Error(what + ": bad PPM header: " + field + " is not a number");
  return value;
}

}  // namespace

BgrImage decode_ppm(const std::string& bytes, const std::string& what) {
  if (bytes.size() < 2 || bytes[0] != 'P' || bytes[1] != '6')
    throw Error(what + ": not a binary PPM (the file must start with 'P6')");
  size_t pos = 2;
  BgrImage image;
  image.width = header_number(bytes, pos, "width", what);
  image.height = header_number(bytes, pos, "height", what);
  const int64_t maxval = header_number(bytes, pos, "maxval", what);
  if (image.width < 1 || image.height < 1)
    throw Error(what + ": PPM size " + std::to_string(image.width) + "x" + std::to_string(image.height) +
                " is empty");
  if (maxval != 255) throw Error(what + ": PPM maxval " + std::to_string(maxval) + " is not supported (only 255)");
  // Exactly one whitespace byte separates the header from the pixels.
  if (pos >= bytes.size() || !std::isspace(static_cast<unsigned char>(bytes[pos])))
    throw Error(what + ": truncated PPM header (no whitespace after maxval)");
  ++pos;
  const int64_t expected = image.width * image.height * 3;
  if (static_cast<int64_t>(bytes.size() - pos) < expected)
    throw Error(what + ": truncated PPM pixel data (" + std::to_string(bytes.size() - pos) + " of " +
                std::to_string(expected) + " bytes)");
  image.pixels.resize(static_cast<size_t>(expected));
  const auto* rgb = reinterpret_cast<const uint8_t*>(bytes.data() + pos);
  for (int64_t i = 0; i < expected; i += 3) {
    image.pixels[i] = rgb[i + 2];
    image.pixels[i + 1] = rgb[i + 1];
    image.pixels[i + 2] = rgb[i];
  }
  return image;
}

BgrImage read_ppm(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path + ": cannot open file");
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) throw Error(path + ": read error");
  return decode_ppm(bytes, path);
}

std::string encode_ppm(const BgrImage& image) {
  const int64_t count = image.height * image.width * 3;
  if (image.height < 1 || image.width < 1 || static_cast<int64_t>(image.pixels.size()) != count)
    throw Error("encode_ppm: image " + std::to_string(image.height) + "x" + std::to_string(image.width) + " has " +
                std::to_string(image.pixels.size()) + " bytes, expected " + std::to_string(count));
  std::string bytes = "P6\n" + std::to_string(image.width) + " " + std::to_string(image.height) + "\n255\n";
  const size_t header = bytes.size();
  bytes.resize(header + static_cast<size_t>(count));
  for (int64_t i = 0; i < count; i += 3) {
    bytes[header + i] = static_cast<char>(image.pixels[i + 2]);
    bytes[header + i + 1] = static_cast<char>(image.pixels[i + 1]);
    bytes[header + i + 2] = static_cast<char>(image.pixels[i]);
  }
  return bytes;
}

void write_ppm(const std::string& path, const BgrImage& image) {
  const std::string bytes = encode_ppm(image);
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  out.close();
  if (!out) throw Error(path + ": cannot write file");
}

void draw_box_outline(BgrImage& image, int64_t x1, int64_t y1, int64_t x2, int64_t y2,
                      const std::array<uint8_t, 3>& bgr, int64_t thickness) {
  if (x1 > x2) std::swap(x1, x2);
  if (y1 > y2) std::swap(y1, y2);
  thickness = std::max<int64_t>(thickness, 1);
  auto fill = [&](int64_t fx1, int64_t fy1, int64_t fx2, int64_t fy2) {  // inclusive, clipped
    fx1 = std::max<int64_t>(fx1, 0);
    fy1 = std::max<int64_t>(fy1, 0);
    fx2 = std::min(fx2, image.width - 1);
    fy2 = std::min(fy2, image.height - 1);
    for (int64_t y = fy1; y <= fy2; ++y)
      for (int64_t x = fx1; x <= fx2; ++x) {
        uint8_t* p = image.pixels.data() + (y * image.width + x) * 3;
        p[0] = bgr[0];
        p[1] = bgr[1];
        p[2] = bgr[2];
      }
  };
  const int64_t t = thickness - 1;
  fill(x1, y1, x2, std::min(y1 + t, y2));  // top
  fill(x1, std::max(y2 - t, y1), x2, y2);  // bottom
  fill(x1, y1, std::min(x1 + t, x2), y2);  // left
  fill(std::max(x2 - t, x1), y1, x2, y2);  // right
}

}  // namespace codetr::cli
