// codetr-detect image I/O with OpenCV: any format imread/imwrite handle, labelled boxes.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <sstream>

#include <opencv2/core.hpp>
#include <opencv2/core/utils/logger.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "image_io.h"
#include "inputs.h"

namespace codetr::cli {
namespace {

// A cv::Mat header over the image's pixels (no copy).
cv::Mat as_mat(BgrImage& image) {
  return cv::Mat(static_cast<int>(image.height), static_cast<int>(image.width), CV_8UC3, image.pixels.data());
}

cv::Scalar class_colour(int64_t label) {
  // Golden-ratio hue steps give neighbouring classes distinct colours.
  const double hue = std::fmod(static_cast<double>(label) * 0.618033988749895, 1.0) * 180.0;
  cv::Mat hsv(1, 1, CV_8UC3, cv::Scalar(hue, 200, 255)), bgr;
  cv::cvtColor(hsv, bgr, cv::COLOR_HSV2BGR);
  const cv::Vec3b c = bgr.at<cv::Vec3b>(0, 0);
  return cv::Scalar(c[0], c[1], c[2]);
}

}  // namespace

const std::set<std::string>& image_extensions() { return core::image_extensions(); }

namespace {

// A JPEG ends with its end-of-image marker (FF D9), possibly followed by a little padding; one cut
// short (a truncated download) has none, and libjpeg only warns while decoding it partially.
bool jpeg_has_end_marker(std::ifstream& in, int64_t size) {
  const int64_t tail = std::min<int64_t>(size, 4096);
  std::string bytes(static_cast<size_t>(tail), '\0');
  in.seekg(size - tail);
  in.read(bytes.data(), tail);
  return bytes.find("\xFF\xD9") != std::string::npos;
}

}  // namespace

bool read_image(const std::string& path, const ReadOptions& options, BgrImage& image, std::string& error) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) {
    error = ec ? ec.message() : "not a regular file";
    return false;
  }
  const auto size = static_cast<int64_t>(std::filesystem::file_size(path, ec));
  if (ec || size == 0) {
    error = ec ? ec.message() : "empty file";
    return false;
  }
  std::ifstream in(path, std::ios::binary);
  std::string head(static_cast<size_t>(std::min(size, core::kImageHeadBytes)), '\0');
  if (!in.read(head.data(), static_cast<std::streamsize>(head.size()))) {
    error = "cannot read the file";
    return false;
  }
  if (std::string over = core::pixel_limit_error(head, options.max_pixels); !over.empty()) {
    error = over + " (--max-pixels)";
    return false;
  }
  const bool jpeg = head.size() >= 2 && static_cast<unsigned char>(head[0]) == 0xFF && static_cast<unsigned char>(head[1]) == 0xD8;
  if (jpeg && !options.allow_truncated && !jpeg_has_end_marker(in, size)) {
    error = "truncated JPEG (no end-of-image marker; --allow-truncated decodes what is there)";
    return false;
  }
  cv::Mat m;
  try {
    m = cv::imread(path, cv::IMREAD_COLOR);
  } catch (const cv::Exception& e) {
    error = std::string("cannot decode image: ") + e.what();
    return false;
  }
  if (m.empty()) {
    error = "cannot decode image (unsupported, corrupt, truncated, or over --max-pixels)";
    return false;
  }
  image.height = m.rows;
  image.width = m.cols;
  image.pixels.resize(static_cast<size_t>(m.rows) * m.cols * 3);
  m.copyTo(as_mat(image));
  return true;
}

void draw_detections(BgrImage& bgr, const std::vector<Detection>& dets, const std::vector<std::string>& classes,
                     float draw_thr) {
  cv::Mat image = as_mat(bgr);
  const int thickness = std::max(1, std::min(image.rows, image.cols) / 300);
  const double font_scale = std::max(0.4, std::min(image.rows, image.cols) / 800.0);
  for (const Detection& d : dets) {
    if (d.score < draw_thr) continue;
    const cv::Scalar colour = class_colour(d.label);
    const cv::Point p1(static_cast<int>(std::lround(d.x1)), static_cast<int>(std::lround(d.y1)));
    const cv::Point p2(static_cast<int>(std::lround(d.x2)), static_cast<int>(std::lround(d.y2)));
    cv::rectangle(image, p1, p2, colour, thickness);
    std::ostringstream text;
    const bool known = d.label >= 0 && d.label < static_cast<int64_t>(classes.size());
    text << (known ? classes[d.label] : "class " + std::to_string(d.label)) << " " << std::fixed
         << std::setprecision(2) << d.score;
    int baseline = 0;
    const cv::Size ts = cv::getTextSize(text.str(), cv::FONT_HERSHEY_SIMPLEX, font_scale, 1, &baseline);
    const int top = std::max(p1.y - ts.height - baseline, 0);
    cv::rectangle(image, cv::Point(p1.x, top), cv::Point(p1.x + ts.width, top + ts.height + baseline), colour, cv::FILLED);
    cv::putText(image, text.str(), cv::Point(p1.x, top + ts.height), cv::FONT_HERSHEY_SIMPLEX, font_scale,
                cv::Scalar(0, 0, 0), 1, cv::LINE_AA);
  }
}

bool write_image(const std::string& path, const BgrImage& image, std::string& error) {
  // imwrite only reads the pixels; the header is non-const because cv::Mat has no const view.
  const cv::Mat m = as_mat(const_cast<BgrImage&>(image));
  try {
    if (cv::imwrite(path, m)) return true;
    error = "cannot write annotated image";
  } catch (const cv::Exception& e) {
    error = std::string("cannot write annotated image: ") + e.what();
  }
  return false;
}

void init_image_io(int64_t max_pixels) {
  // OpenCV's decoders refuse images over this size from their headers (every format, also those
  // declared_size() does not parse); it is read once, at the first decode.
  setenv("OPENCV_IO_MAX_IMAGE_PIXELS", std::to_string(max_pixels).c_str(), 1);
  cv::utils::logging::setLogLevel(cv::utils::logging::LOG_LEVEL_ERROR);
}

const char* image_io_backend() { return "opencv"; }

}  // namespace codetr::cli
