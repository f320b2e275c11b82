// codetr-detect image I/O without OpenCV: binary PPM (P6, maxval 255) only.
#include <algorithm>
#include <cctype>
#include <cmath>
#include <filesystem>

#include "image_io.h"
#include "inputs.h"

namespace codetr::cli {
namespace {

bool is_ppm_name(const std::string& path) {
  std::string e = std::filesystem::path(path).extension().string();
  std::transform(e.begin(), e.end(), e.begin(), [](unsigned char c) { return std::tolower(c); });
  return e == ".ppm";
}

// Golden-ratio hue steps (as the OpenCV build) at saturation 200/255, value 255, in BGR.
std::array<uint8_t, 3> class_colour(int64_t label) {
  const double hue = std::fmod(static_cast<double>(label) * 0.618033988749895, 1.0) * 6.0;
  const double s = 200.0 / 255.0;
  const double f = hue - std::floor(hue);
  const auto byte = [](double v) { return static_cast<uint8_t>(std::lround(255.0 * v)); };
  const uint8_t v = 255, p = byte(1 - s), q = byte(1 - s * f), t = byte(1 - s * (1 - f));
  switch (static_cast<int>(hue) % 6) {  // {B, G, R}
    case 0: return {p, t, v};
    case 1: return {p, v, q};
    case 2: return {t, v, p};
    case 3: return {v, q, p};
    case 4: return {v, p, t};
    default: return {q, p, v};
  }
}

}  // namespace

const std::set<std::string>& image_extensions() {
  // The core's (OpenCV's) list plus .ppm: other formats in a directory are reported, not skipped.
  static const std::set<std::string> exts = [] {
    std::set<std::string> e = core::image_extensions();
    e.insert(".ppm");
    return e;
  }();
  return exts;
}

bool read_image(const std::string& path, const ReadOptions& options, BgrImage& image, std::string& error) {
  if (!is_ppm_name(path)) {
    error = "built without OpenCV: only .ppm images can be read";
    return false;
  }
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) {
    error = ec ? ec.message() : "not a regular file";
    return false;
  }
  try {
    image = read_ppm(path);
    if (image.height * image.width > options.max_pixels) {
      error = "the image has " + std::to_string(image.height * image.width) + " pixels, over the limit of " +
              std::to_string(options.max_pixels) + " (--max-pixels)";
      return false;
    }
    return true;
  } catch (const std::exception& e) {
    // read_ppm's messages start with the path, which the caller prints already.
    const std::string prefix = path + ": ";
    error = e.what();
    if (error.compare(0, prefix.size(), prefix) == 0) error.erase(0, prefix.size());
    return false;
  }
}

void draw_detections(BgrImage& image, const std::vector<Detection>& dets, const std::vector<std::string>&,
                     float draw_thr) {
  const int64_t thickness = std::max<int64_t>(1, std::min(image.height, image.width) / 300);
  for (const Detection& d : dets) {
    if (d.score < draw_thr) continue;
    draw_box_outline(image, std::lround(d.x1), std::lround(d.y1), std::lround(d.x2), std::lround(d.y2),
                     class_colour(d.label), thickness);
  }
}

bool write_image(const std::string& path, const BgrImage& image, std::string& error) {
  if (!is_ppm_name(path)) {
    error = "built without OpenCV: only .ppm images can be written";
    return false;
  }
  try {
    write_ppm(path, image);
    return true;
  } catch (const std::exception& e) {
    error = e.what();
    return false;
  }
}

void init_image_io(int64_t) {}

const char* image_io_backend() { return "ppm"; }

}  // namespace codetr::cli
