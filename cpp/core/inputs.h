#pragma once
// codetr-detect's input rules, written once: which files a directory INPUT contributes and the
// image_id of each input image. codetr-detect and the Python binding (`codetr batch`) call these.
#include <cstdint>
#include <set>
#include <string>
#include <vector>

namespace codetr::core {

// File extensions (lower case, with the dot) of the images a directory INPUT is scanned for: the
// formats OpenCV decodes (a build without OpenCV adds .ppm, the one format it reads itself).
const std::set<std::string>& image_extensions();

// Whether `path`'s extension (any case) is one of `extensions`.
bool is_image_name(const std::string& path, const std::set<std::string>& extensions = image_extensions());

// Image ids of the expanded input list: when every file's stem is all digits (at most 18) and
// these numbers are distinct (COCO's 000000000139.jpg -> 139), those numbers; otherwise the
// positions 0..n-1. Either way every image gets its own id.
std::vector<int64_t> image_ids(const std::vector<std::string>& files);

}  // namespace codetr::core
