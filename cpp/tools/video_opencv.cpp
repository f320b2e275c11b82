// codetr-detect's video/stream path with OpenCV videoio (video.h).
#include <algorithm>
#include <condition_variable>
#include <filesystem>
#include <mutex>
#include <optional>
#include <thread>

#include <opencv2/core.hpp>
#include <opencv2/videoio.hpp>

#include "image_io.h"
#include "video.h"

namespace codetr::cli {
namespace {

const std::vector<std::string>& video_extensions() {
  static const std::vector<std::string> exts = {".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".ts"};
  return exts;
}

std::string lower_extension(const std::string& path) {
  std::string ext = std::filesystem::path(path).extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return ext;
}

bool is_camera(const std::string& input) { return input.rfind("camera:", 0) == 0; }
bool is_url(const std::string& input) { return input.find("://") != std::string::npos; }

// The annotated video's codec, by the output extension: lossless FFV1 in .mkv, MJPG in .avi,
// MPEG-4 part 2 otherwise (what FFmpeg builds without patent-encumbered encoders still have).
int fourcc_for(const std::string& path) {
  const std::string ext = lower_extension(path);
  if (ext == ".mkv") return cv::VideoWriter::fourcc('F', 'F', 'V', '1');
  if (ext == ".avi") return cv::VideoWriter::fourcc('M', 'J', 'P', 'G');
  return cv::VideoWriter::fourcc('m', 'p', '4', 'v');
}

struct Decoded {
  std::shared_ptr<BgrImage> image;
  int64_t index = 0;
  double timestamp_ms = 0;
};

bool read_frame(cv::VideoCapture& capture, int64_t index, Decoded& out) {
  cv::Mat mat;
  if (!capture.read(mat) || mat.empty()) return false;
  if (mat.type() != CV_8UC3) return false;
  auto image = std::make_shared<BgrImage>();
  image->height = mat.rows;
  image->width = mat.cols;
  image->pixels.resize(static_cast<size_t>(mat.rows) * mat.cols * 3);
  cv::Mat dst(mat.rows, mat.cols, CV_8UC3, image->pixels.data());
  mat.copyTo(dst);
  out.image = std::move(image);
  out.index = index;
  out.timestamp_ms = capture.get(cv::CAP_PROP_POS_MSEC);
  return true;
}

}  // namespace

bool is_video_input(const std::string& input) {
  if (is_camera(input) || is_url(input)) return true;
  const std::string ext = lower_extension(input);
  const auto& exts = video_extensions();
  return std::find(exts.begin(), exts.end(), ext) != exts.end();
}

VideoResult run_video(const Detector& detector, const std::string& input, const VideoOptions& options,
                      const FrameRecord& record, const volatile std::sig_atomic_t* stop) {
  VideoResult result;
  const bool live = is_camera(input) || is_url(input);
  cv::VideoCapture capture;
  try {
    if (is_camera(input)) {
      capture.open(std::stoi(input.substr(7)));
    } else {
      if (!live && !std::filesystem::is_regular_file(input)) {
        result.error = "not a regular file";
        return result;
      }
      capture.open(input, cv::CAP_FFMPEG);
    }
  } catch (const std::exception& e) {
    result.error = std::string("cannot open: ") + e.what();
    return result;
  }
  if (!capture.isOpened()) {
    result.error = "cannot open the video (unsupported, corrupt, or no such camera/stream)";
    return result;
  }
  const double fps = capture.get(cv::CAP_PROP_FPS);
  const int64_t frame_count = live ? -1 : static_cast<int64_t>(capture.get(cv::CAP_PROP_FRAME_COUNT));
  const int width = static_cast<int>(capture.get(cv::CAP_PROP_FRAME_WIDTH));
  const int height = static_cast<int>(capture.get(cv::CAP_PROP_FRAME_HEIGHT));
  const int64_t stride = std::max<int64_t>(options.stride, 1);

  cv::VideoWriter writer;
  if (!options.out_video.empty()) {
    const double out_fps = (fps > 0 ? fps : 25.0) / static_cast<double>(stride);
    writer.open(options.out_video, fourcc_for(options.out_video), out_fps, cv::Size(width, height));
    if (!writer.isOpened()) {
      result.error = "cannot write the annotated video " + options.out_video;
      return result;
    }
  }

  // Decoding: files frame by frame (never dropping); live sources through a grabber thread that
  // keeps only the newest frame when drop_frames is set, so a slow pipeline skips frames instead
  // of falling behind the camera.
  int64_t next = 0;  // the source's next frame number
  bool ended_early = false;
  std::mutex latest_mutex;
  std::condition_variable latest_ready;
  std::optional<Decoded> latest;
  bool grabber_done = false;
  std::thread grabber;
  const bool dropping = live && options.drop_frames;
  if (dropping) {
    grabber = std::thread([&] {
      for (int64_t index = 0; (options.end < 0 || index < options.end) && !(stop != nullptr && *stop); ++index) {
        Decoded d;
        if (!read_frame(capture, index, d)) break;
        if (index < options.start || (index - options.start) % stride != 0) continue;
        std::lock_guard<std::mutex> lock(latest_mutex);
        if (latest) ++result.dropped;
        latest = std::move(d);
        latest_ready.notify_one();
      }
      std::lock_guard<std::mutex> lock(latest_mutex);
      grabber_done = true;
      latest_ready.notify_one();
    });
  }

  FrameSource source = [&](Frame& frame) {
    if (stop != nullptr && *stop) return false;
    Decoded d;
    if (dropping) {
      std::unique_lock<std::mutex> lock(latest_mutex);
      latest_ready.wait(lock, [&] { return latest.has_value() || grabber_done; });
      if (!latest) return false;
      d = std::move(*latest);
      latest.reset();
    } else {
      for (;;) {
        if (options.end >= 0 && next >= options.end) return false;
        const bool wanted = next >= options.start && (next - options.start) % stride == 0;
        if (!wanted) {
          if (!capture.grab()) {
            ended_early = frame_count > 0 && next < frame_count;
            return false;
          }
          ++next;
          continue;
        }
        if (!read_frame(capture, next, d)) {
          ended_early = frame_count > 0 && next < frame_count;
          return false;
        }
        ++next;
        break;
      }
    }
    frame.image = ImageView{d.image->pixels.data(), d.image->height, d.image->width, PixelOrder::kBGR};
    frame.index = d.index;
    frame.timestamp_ms = d.timestamp_ms;
    frame.owner = d.image;
    return true;
  };

  const std::vector<std::string>& classes = detector.config().classes;
  FrameSink sink = [&](const Frame& frame, const std::vector<Detection>& dets, const std::string& error) {
    record(frame.index, frame.timestamp_ms, dets, error, frame.image.height, frame.image.width);
    if (writer.isOpened()) {
      // The frame is ours to draw on: its pixels are owned by this frame alone.
      auto image = std::const_pointer_cast<BgrImage>(std::static_pointer_cast<const BgrImage>(frame.owner));
      draw_detections(*image, dets, classes, options.draw_thr);
      writer.write(cv::Mat(static_cast<int>(image->height), static_cast<int>(image->width), CV_8UC3,
                           image->pixels.data()));
    }
  };

  StreamOptions stream;
  stream.batch = options.batch;
  stream.queue_depth = options.queue_depth;
  try {
    const StreamStats stats = detector.run_stream(source, sink, stream);
    result.frames = stats.frames;
    result.failed = stats.failed;
    result.seconds = stats.seconds;
  } catch (const std::exception& e) {
    result.error = e.what();
  }
  if (grabber.joinable()) {
    capture.release();  // unblocks a grabber waiting on a live source
    grabber.join();
  }
  if (result.error.empty() && ended_early)
    result.error = "the video ended after frame " + std::to_string(next) + " of " + std::to_string(frame_count) +
                   " (truncated or corrupt); every decoded frame was processed";
  return result;
}

}  // namespace codetr::cli
