#pragma once
// The torch-free core of codetr: the export<->runtime contract's rules, written once. libcodetr's
// Detector (C++ and CLI) and the Python binding (eager and ONNX paths) all call these.
// - model.json: parse_model_config (model_config.cpp)
// - preprocessing plan and host preprocessing: mmcv's rescale rule, static-engine fit, padding,
//   cv2.resize-exact pixels, normalisation, padding mask (preprocess.cpp)
// - postprocessing: score threshold, rescale, class-aware NMS / soft-NMS, max_per_img, optional
//   clip, label range check (postprocess.cpp)
// Arithmetic rounds once per operation (built with -ffp-contract=off), like OpenCV, mmcv and
// torch's CPU kernels.
#include <cstdint>
#include <string>
#include <vector>

#include "codetr/codetr.h"

namespace codetr::core {

struct Size2 {
  int64_t height = 0;
  int64_t width = 0;
};

// Where one image sits in the engine input, to undo the resize later.
struct ImageMeta {
  Size2 original;
  Size2 resized;         // the image's region, top-left of the padded input
  float w_scale = 1.0f;  // resized.width / original.width (mmdet's scale_factor)
  float h_scale = 1.0f;  // resized.height / original.height
};

struct BatchPlan {
  std::vector<ImageMeta> metas;
  int64_t pad_h = 0, pad_w = 0;  // the engine input's H, W
};

// mmcv.rescale_size for a (long, short) scale: the largest size that fits with the aspect ratio
// kept; new side = int(side * factor + 0.5).
Size2 rescale_size(Size2 original, int64_t scale_long, int64_t scale_short);

// Validates an ImageView (non-null data, positive size, stride); throws codetr::Error naming `what`.
void check_image(const ImageView& image, const std::string& what);

// One image's resize target: mmdet's Resize (keep_ratio: rescale_size; else the scale as given,
// (w, h)); for a static engine an image that would then not fit (a portrait image in a landscape
// engine) is scaled by min(engine H / h, engine W / w) instead. Throws codetr::Error naming `what`
// when the image resizes to nothing or does not fit the engine.
ImageMeta plan_image(const ImageView& image, const ModelConfig& config, const std::string& what);

// The padded input size of one image alone: a static engine's size; the preset's fixed pad size;
// else the resized size rounded up to max(pad_size_divisor, input.multiple), at least the dynamic
// minimum. Throws codetr::Error when it exceeds a dynamic engine's maximum.
Size2 padded_size(const ImageMeta& meta, const ModelConfig& config, const std::string& what);

// plan_image for every image; the batch is padded to its largest padded_size (mmdet's batch
// rule). Detector::detect batches only images of one padded size, so that an image's result
// never depends on its batch companions.
BatchPlan plan_batch(const std::vector<ImageView>& images, const ModelConfig& config);

bool needs_channel_flip(const ImageView& image, const PreprocessConfig& config);
int64_t row_stride_of(const ImageView& image);

// cv2.resize(src, (out.width, out.height), INTER_LINEAR) on uint8 HxWx3, bit-exact: 11-bit
// fixed-point taps (resize_taps.h), OpenCV's rounding, and its switch to INTER_AREA for an exact
// 2x downscale. Reads source rows on demand (memory: a few rows beyond `dst`).
void resize_u8(const ImageView& src, Size2 out, uint8_t* dst);

// The whole preprocessing of a batch on the host: resize, channel order, (x - mean) / std in fp32,
// padding (before or after normalisation) into `images` (n, 3, pad_h, pad_w) and, when non-null,
// `masks` (n, pad_h, pad_w), true on padding.
void preprocess_host(const std::vector<ImageView>& images, const BatchPlan& plan, const PreprocessConfig& config,
                     float* images_out, bool* masks_out);

// Indices into the input, in output order, and the kept (for soft-NMS: decayed) scores.
struct Kept {
  std::vector<int64_t> keep;
  std::vector<float> scores;
};

// mmcv.ops.nms (offset 0): suppress IoU > iou_threshold; keep ordered by descending score (ties:
// lower index first).
Kept nms(const float* boxes, const float* scores, int64_t n, float iou_threshold);

// mmcv.ops.soft_nms (offset 0, its CPU algorithm): linear / naive / gaussian decay; boxes whose
// score falls below min_score are dropped. Keep is in selection order.
Kept soft_nms(const float* boxes, const float* scores, int64_t n, float iou_threshold, SoftNmsMethod method,
              float sigma, float min_score);

// mmcv.ops.batched_nms: class-aware by shifting each class's boxes by label * (max coordinate + 1).
// NmsType::kNone keeps every box in input order.
Kept batched_nms(const float* boxes, const float* scores, const int64_t* labels, int64_t n, const NmsConfig& config);

// One image's engine outputs (count queries: boxes xyxy in input pixels, scores, labels) ->
// detections, in mmdet's CoDINOHead order: score_thr (keep score > thr when thr > 0), divide by the
// resize factors, batched NMS, max_per_img; then, only when config.clip, clip to the original
// image. A label outside [0, num_classes) is an error (the engine and model.json disagree).
std::vector<Detection> postprocess(const float* boxes, const float* scores, const int64_t* labels, int64_t count,
                                   const ImageMeta& meta, const PostprocessConfig& config, int64_t num_classes);

// The error text for `bad` non-finite values out of `total` in engine output `what`, with advice
// for the compute dtype (float16 overflow -> re-export with bfloat16 or float32).
std::string nonfinite_message(const std::string& what, int64_t bad, int64_t total, const std::string& dtype);

// Throws codetr::Error(nonfinite_message(...)) when values[0..n) holds NaN or inf.
void check_finite(const char* what, const float* values, int64_t n, const std::string& dtype);

// Checks an engine call's input shapes and dtypes against model.json: the count, rank and dtype
// of each input, every static dimension, dynamic dimensions within the exported range (batch,
// height, width) and H, W multiples of input.multiple, masks (B,H,W) matching images. An engine
// (AOTInductor package, ONNX file) does not check its inputs: a wrong shape reads past buffers.
// Throws codetr::Error naming the input, the dimension, the value and what was expected.
void validate_input_shapes(const std::vector<std::vector<int64_t>>& shapes, const std::vector<std::string>& dtypes,
                           const ModelConfig& config);

// One image's (or video frame's) results, as codetr-detect writes them per line (JSON Lines) and
// the Python binding returns them (codetr.result_record): the one definition of that schema.
struct ImageResult {
  std::string file;          // the input path (or stream) as given
  int64_t image_id = 0;
  int64_t frame = -1;        // video frame index (-1: a still image)
  double timestamp_ms = 0;   // video frames only
  int64_t height = 0, width = 0;
  std::vector<Detection> detections;
  std::string error;         // non-empty: this input failed (no detections)
};

// {"file", "image_id", ["frame", "timestamp_ms"], "height", "width", "detections": [{"bbox": [x1, y1,
// x2, y2], "score", "label", "class", "category_id"}]} or {"file", "image_id", ..., "error"}, on one
// line. category_id is the COCO id when `classes` are COCO's 80, else the label. Invalid UTF-8 in
// the file name is replaced, never fatal.
std::string result_record_json(const ImageResult& result, const std::vector<std::string>& classes);

// The package key under which `codetr export` records what an engine was compiled for
// (AOTInductor metadata): {"dtype", "input", "inputs", "outputs"} as in model.json.
constexpr const char* kEngineContractKey = "codetr.contract";

// Throws codetr::Error unless the contract recorded in the package (`contract_json`) equals
// model.json's dtype, input geometry and input/output specs, naming the first field that differs
// with both values. No input reaches a package that was compiled for other inputs.
void check_engine_contract(const std::string& contract_json, const ModelConfig& config, const std::string& package,
                           const std::string& model_json);

}  // namespace codetr::core
