#pragma once
// The codetr runtime's public API: a model directory written by `codetr export` (model.json +
// AOTInductor model.pt2) -> detections in original-image pixels. No torch (or CUDA) types: the
// engine, its tensors and the op library stay inside libcodetr.
//
//   codetr::Detector detector("engines/swin_l");
//   codetr::ImageView image{bgr, height, width, codetr::PixelOrder::kBGR};
//   for (const codetr::Detection& d : detector.detect(image)) ...
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "codetr/error.h"
#include "codetr/model_config.h"

namespace codetr {

// The library's version (the project version it was built from).
const char* version();

enum class PixelOrder { kRGB, kBGR };

// A borrowed, interleaved 8-bit 3-channel image (HxWx3). `row_stride` is in bytes (0: width*3).
struct ImageView {
  const uint8_t* data = nullptr;
  int64_t height = 0;
  int64_t width = 0;
  PixelOrder order = PixelOrder::kBGR;
  int64_t row_stride = 0;
};

struct Detection {
  float x1 = 0, y1 = 0, x2 = 0, y2 = 0;  // xyxy in original image pixels
  float score = 0;
  int64_t label = 0;                     // class index into ModelConfig::classes
};

// One image's outcome in Detector::detect_each: its detections, or why it failed.
struct DetectOutcome {
  std::vector<Detection> detections;  // empty when `error` is set
  std::string error;                  // empty: the image was detected
};

// Wall time of each stage, summed over the engine batches of one detect() call. On CUDA the
// device is synchronised at stage boundaries when times are requested (only then).
struct StageTimes {
  double preprocess_ms = 0;
  double engine_ms = 0;
  double postprocess_ms = 0;
};

struct DetectorOptions {
  // "cpu" or "cuda"; empty = model.json's device. An AOTInductor package runs only on the device
  // it was compiled for, so a different value is an error.
  std::string device;
  int device_index = -1;  // CUDA device index (-1: the current device)
  // Path of libcodetr_ops.so (the ops the Co-DINO packages call). Empty: the one rule of
  // find_ops_library().
  std::string ops_library;
  // Model instances inside the AOTInductor container: up to this many detect() calls run the
  // engine at the same time; further calls wait for a free instance.
  size_t num_runners = 1;
  // Run the engine as a CUDA graph (CUDA engines with fully static inputs; the runtime must be
  // built against a CUDA libtorch). Graph replays are serialised (one at a time per Detector).
  bool cuda_graphs = false;
  // Overrides of model.json's postprocess section.
  std::optional<float> score_thr;
  std::optional<NmsConfig> nms;
  std::optional<int64_t> max_per_img;
  std::optional<bool> clip_boxes;  // default false: mmdetection does not clip after rescaling
};

// One frame of a stream (video file, camera, frame folder) for Detector::run_stream.
struct Frame {
  ImageView image;
  int64_t index = 0;         // the source's frame number
  double timestamp_ms = 0;   // the source's presentation time
  // Keeps the pixels alive while the frame is in flight (the sink is the last to see it).
  std::shared_ptr<const void> owner;
};

struct StreamOptions {
  size_t queue_depth = 8;  // frames buffered between two stages (memory does not grow with the stream)
  size_t batch = 0;        // frames per engine call (0: the engine's max batch)
};

struct StreamStats {
  int64_t frames = 0;  // frames handed to the sink
  int64_t failed = 0;  // of which with an error
  double seconds = 0;  // wall time of run_stream
};

// Produces the next frame; returns false at the end of the stream. Called from one thread (the
// decode stage). An exception ends the stream: run_stream delivers every frame read before it,
// then rethrows it.
using FrameSource = std::function<bool(Frame& frame)>;
// Receives every frame in source order, from one thread (the output stage): its detections, or an
// error message (then `detections` is empty) when that frame could not be processed.
using FrameSink = std::function<void(const Frame& frame, const std::vector<Detection>& detections, const std::string& error)>;

// The op library the Detector loads when DetectorOptions::ops_library is empty: $CODETR_OPS_LIBRARY,
// else libcodetr_ops.so beside libcodetr.so (installed and build trees keep them together).
// Returns "" when neither exists. Python's `import codetr` asks this same function.
std::string find_ops_library();

// Makes the codetr torch ops available in this process (dlopen RTLD_GLOBAL, once): `path`, or
// find_ops_library(). Returns the library loaded or "registered" when the ops already exist.
// Throws codetr::Error when the library is missing or cannot be loaded.
std::string load_ops_library(const std::string& path = "");

// Thread-safety: detect() may be called concurrently from several threads on one Detector.
// Construction and destruction must not race with calls.
class Detector {
 public:
  // Throws codetr::Error naming the file, key or value when the model directory is unusable:
  // a bad model.json, a package compiled for other inputs than model.json declares, a device or
  // torch version mismatch, a missing op library.
  explicit Detector(const std::string& model_dir, DetectorOptions options = {});
  ~Detector();
  Detector(const Detector&) = delete;
  Detector& operator=(const Detector&) = delete;

  // One result list per image, in input order. Any number of images: they are split into
  // engine-sized batches (see cpp/README.md for the batching rule). Throws codetr::Error naming
  // the image (by position) or the stage that failed.
  std::vector<std::vector<Detection>> detect(const std::vector<ImageView>& images, StageTimes* times = nullptr) const;
  std::vector<Detection> detect(const ImageView& image) const;

  // detect() where a bad image costs only itself: the images run as one detect() call; when that
  // throws, each runs alone. Invariants: one outcome per image, in input order; an image's outcome
  // is what detect() on it alone gives (the batching rule keeps its detections independent of its
  // companions): its detections, or its error message (which names it as image 0, its position in
  // that call). A failing image never makes this throw: detect() wraps every std::exception (bad
  // input, engine, out of memory) in a codetr::Error, and each becomes an outcome.
  std::vector<DetectOutcome> detect_each(const std::vector<ImageView>& images) const;

  // A pipeline over a stream: decoding (the source), detection in batches of consecutive frames,
  // and output (the sink) run in three threads connected by bounded queues, so decoding and
  // encoding overlap the engine. A frame that fails (e.g. an image the engine cannot take) is
  // reported to the sink with its error; the others continue. Returns when the source is exhausted
  // and every frame has reached the sink.
  StreamStats run_stream(const FrameSource& source, const FrameSink& sink, StreamOptions options = {}) const;

  const ModelConfig& config() const;
  const PostprocessConfig& postprocess_config() const;  // model.json's, with the options' overrides
  std::string device() const;                           // "cpu", "cuda:0", ...
  int64_t max_batch() const;                            // images per engine call
  const std::string& ops_library() const;               // what load_ops_library() returned

 private:
  std::vector<std::vector<Detection>> detect_impl(const std::vector<ImageView>& images, StageTimes* times) const;
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace codetr
