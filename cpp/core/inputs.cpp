#include "inputs.h"

#include <algorithm>
#include <cctype>
#include <filesystem>

namespace codetr::core {

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
