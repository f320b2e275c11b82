#pragma once
// codetr-detect's input rules, written once: which files a directory INPUT contributes and the
// image_id of each input image. codetr-detect and the Python binding (`codetr batch`) call these.
#include <cstdint>
#include <set>
#include <string>
#include <utility>
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

// Pixels an image may declare before anything decodes it (codetr-detect --max-pixels; the Python
// service and batch job apply it too): decoding allocates 3 bytes per pixel up front.
constexpr int64_t kDefaultMaxPixels = 100'000'000;

// How many of a file's first bytes the header rules below are given: a JPEG's frame header can
// follow large EXIF/ICC segments.
constexpr int64_t kImageHeadBytes = 65536;

// The (height, width) a PNG or JPEG header declares; {0, 0} when `head` (the file's first bytes)
// holds neither.
std::pair<int64_t, int64_t> declared_image_size(const std::string& head);

// "the image is WxH = N pixels, over the limit of M" when the header declares more than
// `max_pixels`, else "".
std::string pixel_limit_error(const std::string& head, int64_t max_pixels);

}  // namespace codetr::core
