#pragma once
// model.json (format_version 2), written by `codetr export` (python/codetr/modeljson.py, its one
// writer; schema: python/codetr/model.schema.json) next to the engine package. No torch types.
#include <cstdint>
#include <string>
#include <vector>

namespace codetr {

enum class NmsType { kNone, kHard, kSoft };
enum class SoftNmsMethod { kLinear, kGaussian, kNaive };
enum class PadStage { kAfterNormalize, kBeforeNormalize };

struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;  // -1 = dynamic dimension
  std::string dtype;           // "float32", "float16", "bfloat16", "bool", "int64"
};

struct InputGeometry {
  bool dynamic = false;
  int64_t batch = 1;                   // static batch
  int64_t min_batch = 1, max_batch = 1;  // dynamic batch (equal to `batch` for a static one)
  int64_t height = 0, width = 0;       // static engine size
  int64_t min_height = 0, max_height = 0, min_width = 0, max_width = 0;  // dynamic ranges
  int64_t multiple = 1;  // dynamic engines: H and W must be multiples of this
};

struct PreprocessConfig {
  bool bgr_to_rgb = true;
  int64_t scale_long = 1333, scale_short = 800;  // mmdet's (long, short) resize scale
  int64_t scale_w = 1333, scale_h = 800;          // the scale as written, (w, h): keep_ratio false
  bool keep_ratio = true;
  int64_t pad_size_divisor = 0;         // pad to a multiple of this (0: not given)
  int64_t pad_height = 0, pad_width = 0;  // pad to this fixed size (0: not given)
  float pad_value = 0.0f;
  PadStage pad_stage = PadStage::kAfterNormalize;
  float mean[3] = {0, 0, 0};
  float std[3] = {1, 1, 1};
  bool padding_mask = false;            // mask == "padding": feed a (B,H,W) bool mask, True = pad
};

struct NmsConfig {
  NmsType type = NmsType::kNone;
  float iou_threshold = 0.5f;
  SoftNmsMethod method = SoftNmsMethod::kLinear;
  float sigma = 0.5f;
  float min_score = 1e-3f;
};

struct PostprocessConfig {
  float score_thr = 0.0f;
  NmsConfig nms;
  int64_t max_per_img = 100;
  bool clip = false;  // clip final boxes to the original image (mmdet does not)
};

struct ModelConfig {
  int format_version = 0;
  std::string preset;
  std::string engine_format;  // "aoti" (the C++ runtime runs these) or "onnx"
  std::string engine_file;
  std::string device;         // "cuda" or "cpu"
  std::string dtype;          // compute dtype of the images input
  std::string torch_version;
  std::string codetr_version;
  std::vector<std::string> classes;
  InputGeometry input;
  std::vector<TensorSpec> inputs;
  std::vector<TensorSpec> outputs;
  PreprocessConfig preprocess;
  PostprocessConfig postprocess;
};

// The model.json format_version this runtime reads.
constexpr int kModelJsonVersion = 2;

// Parses model.json text; `source` names the file in error messages. Throws codetr::Error
// naming the missing or mistyped key (e.g. "model.json: key 'preprocess.mean' ...").
ModelConfig parse_model_config(const std::string& json_text, const std::string& source = "model.json");

// The pipeline sections alone ("dtype", "input", "preprocess", "postprocess", as in model.json):
// what the eager and ONNX paths need, parsed by the same code. Engine fields stay empty.
ModelConfig parse_pipeline_config(const std::string& json_text, const std::string& source = "pipeline");

// model.json back to text (the round trip the tests check against the Python writer).
std::string model_config_to_json(const ModelConfig& config);

// Reads and parses DIR/model.json. Throws codetr::Error when the file is absent or unreadable.
ModelConfig load_model_config(const std::string& model_dir);

// The 80 COCO class names in the standard order.
const std::vector<std::string>& coco80_classes();

// True when `classes` are the 80 COCO class names in the standard order.
bool is_coco80(const std::vector<std::string>& classes);

// COCO category id for class index 0..79 (the COCO-80 -> 1..90 id mapping).
int coco80_category_id(int class_index);

}  // namespace codetr
