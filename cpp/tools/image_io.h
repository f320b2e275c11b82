#pragma once
// codetr-detect's image I/O: image_io_opencv.cpp (any format OpenCV reads/writes, boxes with
// class-name labels) when built with OpenCV, else image_io_ppm.cpp (binary PPM only, box
// outlines without text).
#include <set>
#include <string>
#include <vector>

#include "codetr/codetr.h"
#include "ppm.h"

namespace codetr::cli {

// File extensions (lower case, with the dot) that directory INPUTs are scanned for.
const std::set<std::string>& image_extensions();

struct ReadOptions {
  // Images with more pixels are refused from their header, before decoding (memory stays bounded).
  int64_t max_pixels = 100'000'000;
  // Decode truncated/corrupt files as far as they go instead of refusing them.
  bool allow_truncated = false;
};

// Reads `path` into `image`; on failure returns false with the reason in `error` (the caller
// names the file).
bool read_image(const std::string& path, const ReadOptions& options, BgrImage& image, std::string& error);

// Draws the detections scoring >= draw_thr into `image`, one colour per class.
void draw_detections(BgrImage& image, const std::vector<Detection>& dets, const std::vector<std::string>& classes,
                     float draw_thr);

// Writes `image` to `path` (format from the extension); on failure returns false with the
// reason in `error`.
bool write_image(const std::string& path, const BgrImage& image, std::string& error);

// Called once at start-up, before any image is read (OpenCV: quiet its logger, cap its decoders at
// `max_pixels`).
void init_image_io(int64_t max_pixels);

// What this build reads: "opencv" (any format OpenCV handles, video too) or "ppm".
const char* image_io_backend();

}  // namespace codetr::cli
