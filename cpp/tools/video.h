#pragma once
// codetr-detect's video and stream input (OpenCV videoio with FFmpeg; only in builds with OpenCV):
// a video file, a stream URL or a camera is decoded, detected and written through
// Detector::run_stream, so decoding, the engine and encoding overlap.
#include <csignal>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "codetr/codetr.h"

namespace codetr::cli {

// True for a video file (by extension), a stream URL (scheme://) or a camera ("camera:N").
bool is_video_input(const std::string& input);

struct VideoOptions {
  int64_t stride = 1;       // detect every stride-th frame
  int64_t start = 0;        // first frame (source numbering)
  int64_t end = -1;         // stop before this frame (-1: the end of the source)
  // Live sources (cameras, URLs): drop frames the pipeline cannot take instead of waiting for it.
  // Files never drop.
  bool drop_frames = true;
  size_t batch = 0;         // frames per engine call (0: the engine batch)
  size_t queue_depth = 8;
  std::string out_video;    // annotated video path ("": none); same fps and size as the source
  float draw_thr = 0.3f;
};

struct VideoResult {
  int64_t frames = 0;          // frames that reached the output
  int64_t failed = 0;          // of which with an error
  int64_t dropped = 0;         // live frames dropped (drop_frames)
  double seconds = 0;
  std::string error;           // the source stopped early / could not be opened (empty: none)
};

// One frame's record writer (e.g. a JSON Lines line), called in frame order.
using FrameRecord = std::function<void(int64_t frame_index, double timestamp_ms, const std::vector<Detection>& dets,
                                       const std::string& error, int64_t height, int64_t width)>;

// Runs `input` through the detector. Every frame that was decoded reaches `record` (and the
// annotated video), also when the source ends early; `error` then says why.
// `stop` (when set, e.g. by a signal handler) ends the stream after the frames in flight.
VideoResult run_video(const Detector& detector, const std::string& input, const VideoOptions& options,
                      const FrameRecord& record, const volatile std::sig_atomic_t* stop = nullptr);

}  // namespace codetr::cli
