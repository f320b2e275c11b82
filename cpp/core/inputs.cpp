#include "inputs.h"

#include <algorithm>
#include <cctype>
#include <filesystem>

namespace codetr::core {

namespace {

uint32_t be32(const unsigned char* p) { return (uint32_t(p[0]) << 24) | (uint32_t(p[1]) << 16) | (uint32_t(p[2]) << 8) | p[3]; }

}  // namespace

std::pair<int64_t, int64_t> declared_image_size(const std::string& head) {
  const auto* d = reinterpret_cast<const unsigned char*>(head.data());
  const size_t n = head.size();
  if (n >= 24 && head.compare(0, 8, "\x89PNG\r\n\x1a\n") == 0) return {be32(d + 20), be32(d + 16)};
  if (n >= 4 && d[0] == 0xFF && d[1] == 0xD8) {
    // Walk the JPEG segments to the first start-of-frame marker (SOF0..SOF15 but DHT/JPG/DAC).
    size_t i = 2;
    while (i + 9 < n) {
      if (d[i] != 0xFF) return {0, 0};
      const unsigned char marker = d[i + 1];
      const size_t length = (size_t(d[i + 2]) << 8) | d[i + 3];
      if (marker >= 0xC0 && marker <= 0xCF && marker != 0xC4 && marker != 0xC8 && marker != 0xCC)
        return {(int64_t(d[i + 5]) << 8) | d[i + 6], (int64_t(d[i + 7]) << 8) | d[i + 8]};
      i += 2 + length;
    }
  }
  return {0, 0};
}

std::string pixel_limit_error(const std::string& head, int64_t max_pixels) {
  const auto [h, w] = declared_image_size(head);
  if (h * w <= max_pixels) return "";
  return "the image is " + std::to_string(w) + "x" + std::to_string(h) + " = " + std::to_string(h * w) +
         " pixels, over the limit of " + std::to_string(max_pixels);
}

const std::set<std::string>& image_extensions() {
  static const std::set<std::string> exts = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"};
  return exts;
}

bool is_image_name(const std::string& path, const std::set<std::string>& extensions) {
  std::string e = std::filesystem::path(path).extension().string();
  std::transform(e.begin(), e.end(), e.begin(), [](unsigned char c) { return std::tolower(c); });
  return extensions.count(e) > 0;
}

std::vector<int64_t> image_ids(const std::vector<std::string>& files) {
  std::vector<int64_t> ids(files.size());
  std::set<int64_t> seen;
  bool numeric = true;
  for (size_t i = 0; i < files.size() && numeric; ++i) {
    const std::string stem = std::filesystem::path(files[i]).stem().string();
    numeric = !stem.empty() && stem.size() <= 18 &&
              std::all_of(stem.begin(), stem.end(), [](unsigned char c) { return std::isdigit(c) != 0; });
    if (numeric) {
      ids[i] = std::stoll(stem);
      numeric = seen.insert(ids[i]).second;
    }
  }
  if (!numeric)
    for (size_t i = 0; i < files.size(); ++i) ids[i] = static_cast<int64_t>(i);
  return ids;
}

}  // namespace codetr::core
