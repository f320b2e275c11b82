#include "codetr/model_config.h"

#include <algorithm>
#include <array>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "codetr/error.h"

namespace codetr {
namespace {

using nlohmann::json;

// Walks model.json with the dotted path of every value, so errors say exactly which key is wrong.
class Reader {
 public:
  Reader(const json& value, std::string path, const std::string& source)
      : value_(value), path_(std::move(path)), source_(source) {}

  [[noreturn]] void fail(const std::string& what) const {
    throw Error(source_ + ": " + what);
  }

  bool has(const std::string& key) const { return value_.is_object() && value_.contains(key); }

  Reader at(const std::string& key) const {
    if (!value_.is_object()) fail("'" + path_ + "' must be an object");
    auto it = value_.find(key);
    if (it == value_.end()) fail("missing key '" + child(key) + "'");
    return Reader(*it, child(key), source_);
  }

  std::string str() const {
    if (!value_.is_string()) fail(type_error("a string"));
    return value_.get<std::string>();
  }
  int64_t integer() const {
    if (!value_.is_number_integer()) fail(type_error("an integer"));
    return value_.get<int64_t>();
  }
  double number() const {
    if (!value_.is_number()) fail(type_error("a number"));
    return value_.get<double>();
  }
  bool boolean() const {
    if (!value_.is_boolean()) fail(type_error("a boolean"));
    return value_.get<bool>();
  }
  std::vector<Reader> array() const {
    if (!value_.is_array()) fail(type_error("an array"));
    std::vector<Reader> items;
    for (size_t i = 0; i < value_.size(); ++i)
      items.emplace_back(value_[i], path_ + "[" + std::to_string(i) + "]", source_);
    return items;
  }
  std::string one_of(std::initializer_list<const char*> allowed) const {
    std::string s = str();
    std::string list;
    for (const char* a : allowed) {
      if (s == a) return s;
      list += std::string(list.empty() ? "" : ", ") + "'" + a + "'";
    }
    fail("'" + path_ + "' is '" + s + "', expected one of " + list);
  }
  const std::string& path() const { return path_; }

 private:
  std::string child(const std::string& key) const { return path_.empty() ? key : path_ + "." + key; }
  std::string type_error(const std::string& expected) const {
    return "'" + path_ + "' must be " + expected + " (got " + value_.type_name() + ")";
  }

  const json& value_;
  std::string path_;
  const std::string& source_;
};

std::vector<TensorSpec> read_tensor_specs(const Reader& list) {
  std::vector<TensorSpec> specs;
  for (const Reader& item : list.array()) {
    TensorSpec spec;
    spec.name = item.at("name").str();
    for (const Reader& d : item.at("shape").array()) {
      int64_t dim = d.integer();
      if (dim < -1 || dim == 0) d.fail("'" + d.path() + "' must be positive or -1 (dynamic)");
      spec.shape.push_back(dim);
    }
    spec.dtype = item.at("dtype").one_of({"float32", "float16", "bfloat16", "bool", "int64"});
    specs.push_back(std::move(spec));
  }
  return specs;
}

void read_triple(const Reader& r, float out[3]) {
  auto items = r.array();
  if (items.size() != 3) r.fail("'" + r.path() + "' must have 3 values (one per channel)");
  for (int c = 0; c < 3; ++c) out[c] = static_cast<float>(items[c].number());
}

const std::array<const char*, 80> kCoco80 = {
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush"};

// COCO's category ids skip 11 numbers (12, 26, 29, 30, 45, 66, 68, 69, 71, 83 and 91+).
const std::array<int, 80> kCoco80Ids = {
    1,  2,  3,  4,  5,  6,  7,  8,  9,  10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21,
    22, 23, 24, 25, 27, 28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44,
    46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65,
    67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90};

}  // namespace

ModelConfig parse_model_config(const std::string& json_text, const std::string& source) {
  json doc;
  try {
    doc = json::parse(json_text);
  } catch (const json::parse_error& e) {
    throw Error(source + ": not valid JSON (" + e.what() + ")");
  }
  const Reader root(doc, "", source);
  ModelConfig cfg;

  cfg.format_version = static_cast<int>(root.at("format_version").integer());
  if (cfg.format_version != 1)
    root.fail("format_version " + std::to_string(cfg.format_version) +
              " is not supported by this runtime (it reads version 1)");
  cfg.preset = root.at("preset").str();
  const Reader engine = root.at("engine");
  cfg.engine_format = engine.at("format").one_of({"aoti", "onnx"});
  cfg.engine_file = engine.at("file").str();
  cfg.device = root.at("device").one_of({"cuda", "cpu"});
  cfg.dtype = root.at("dtype").one_of({"float32", "float16", "bfloat16"});
  cfg.torch_version = root.at("torch_version").str();
  cfg.codetr_version = root.has("codetr_version") ? root.at("codetr_version").str() : "";
  for (const Reader& c : root.at("classes").array()) cfg.classes.push_back(c.str());
  if (cfg.classes.empty()) root.fail("'classes' is empty");

  const Reader input = root.at("input");
  InputGeometry& geo = cfg.input;
  geo.dynamic = input.at("dynamic").boolean();
  if (input.has("batch")) {
    geo.batch = geo.min_batch = geo.max_batch = input.at("batch").integer();
  } else {
    geo.min_batch = input.at("min_batch").integer();
    geo.max_batch = input.at("max_batch").integer();
    geo.batch = -1;
  }
  if (geo.min_batch < 1 || geo.max_batch < geo.min_batch)
    input.fail("'input' batch range is invalid (min_batch " + std::to_string(geo.min_batch) +
               ", max_batch " + std::to_string(geo.max_batch) + ")");
  if (geo.dynamic) {
    geo.min_height = input.at("min_height").integer();
    geo.max_height = input.at("max_height").integer();
    geo.min_width = input.at("min_width").integer();
    geo.max_width = input.at("max_width").integer();
    if (geo.min_height < 1 || geo.max_height < geo.min_height || geo.min_width < 1 ||
        geo.max_width < geo.min_width)
      input.fail("'input' height/width ranges are invalid");
  } else {
    geo.height = input.at("height").integer();
    geo.width = input.at("width").integer();
    if (geo.height < 1 || geo.width < 1) input.fail("'input.height'/'input.width' must be positive");
  }
  geo.multiple = input.has("multiple") ? input.at("multiple").integer() : 1;
  if (geo.multiple < 1) input.fail("'input.multiple' must be positive");

  cfg.inputs = read_tensor_specs(root.at("inputs"));
  cfg.outputs = read_tensor_specs(root.at("outputs"));

  const Reader pre = root.at("preprocess");
  PreprocessConfig& pp = cfg.preprocess;
  pp.bgr_to_rgb = pre.at("bgr_to_rgb").boolean();
  const Reader resize = pre.at("resize");
  auto scale = resize.at("scale").array();
  if (scale.size() != 2) resize.fail("'preprocess.resize.scale' must be [long, short]");
  const int64_t s0 = scale[0].integer(), s1 = scale[1].integer();
  if (s0 < 1 || s1 < 1) resize.fail("'preprocess.resize.scale' values must be positive");
  pp.scale_long = std::max(s0, s1);
  pp.scale_short = std::min(s0, s1);
  pp.keep_ratio = resize.at("keep_ratio").boolean();
  if (!pp.keep_ratio) resize.fail("'preprocess.resize.keep_ratio' false is not supported");
  resize.at("interpolation").one_of({"bilinear"});
  const Reader pad = pre.at("pad");
  if (pad.has("size_divisor")) {
    pp.pad_size_divisor = pad.at("size_divisor").integer();
    if (pp.pad_size_divisor < 1) pad.fail("'preprocess.pad.size_divisor' must be positive");
  } else if (pad.has("size")) {
    auto size = pad.at("size").array();
    if (size.size() != 2) pad.fail("'preprocess.pad.size' must be [H, W]");
    pp.pad_height = size[0].integer();
    pp.pad_width = size[1].integer();
  } else {
    pad.fail("'preprocess.pad' needs 'size_divisor' or 'size'");
  }
  pp.pad_value = static_cast<float>(pre.at("pad_value").number());
  pp.pad_stage = pre.at("pad_stage").one_of({"after_normalize", "before_normalize"}) == "after_normalize"
                     ? PadStage::kAfterNormalize
                     : PadStage::kBeforeNormalize;
  read_triple(pre.at("mean"), pp.mean);
  read_triple(pre.at("std"), pp.std);
  for (int c = 0; c < 3; ++c)
    if (!(pp.std[c] > 0)) pre.fail("'preprocess.std' values must be positive");
  pp.padding_mask = pre.at("mask").one_of({"padding", "none"}) == "padding";

  const Reader post = root.at("postprocess");
  PostprocessConfig& pc = cfg.postprocess;
  pc.score_thr = static_cast<float>(post.at("score_thr").number());
  const Reader nms = post.at("nms");
  const std::string type = nms.at("type").one_of({"soft_nms", "nms", "none"});
  pc.nms.type = type == "soft_nms" ? NmsType::kSoft : type == "nms" ? NmsType::kHard : NmsType::kNone;
  if (pc.nms.type != NmsType::kNone) pc.nms.iou_threshold = static_cast<float>(nms.at("iou_threshold").number());
  if (pc.nms.type == NmsType::kSoft) {
    const std::string method = nms.at("method").one_of({"linear", "gaussian", "naive"});
    pc.nms.method = method == "linear"     ? SoftNmsMethod::kLinear
                    : method == "gaussian" ? SoftNmsMethod::kGaussian
                                           : SoftNmsMethod::kNaive;
    pc.nms.sigma = static_cast<float>(nms.at("sigma").number());
    pc.nms.min_score = static_cast<float>(nms.at("min_score").number());
  }
  pc.max_per_img = post.at("max_per_img").integer();
  if (pc.max_per_img < 1) post.fail("'postprocess.max_per_img' must be positive");

  // The engine contract: images (+ masks when mask == "padding") in; boxes, scores, labels out.
  const size_t want_inputs = pp.padding_mask ? 2 : 1;
  if (cfg.inputs.size() != want_inputs || cfg.inputs[0].shape.size() != 4 ||
      (pp.padding_mask && cfg.inputs[1].shape.size() != 3))
    root.fail("'inputs' must be [images (B,3,H,W)" + std::string(pp.padding_mask ? ", masks (B,H,W)]" : "]") +
              " for preprocess.mask '" + (pp.padding_mask ? "padding" : "none") + "'");
  if (cfg.inputs[0].dtype != cfg.dtype)
    root.fail("'inputs[0].dtype' (" + cfg.inputs[0].dtype + ") differs from 'dtype' (" + cfg.dtype + ")");
  if (pp.padding_mask && cfg.inputs[1].dtype != "bool") root.fail("'inputs[1].dtype' (masks) must be 'bool'");
  if (cfg.outputs.size() != 3 || cfg.outputs[0].shape.size() != 3 || cfg.outputs[1].shape.size() != 2 ||
      cfg.outputs[2].shape.size() != 2)
    root.fail("'outputs' must be [boxes (B,Q,4), scores (B,Q), labels (B,Q)]");
  return cfg;
}

ModelConfig load_model_config(const std::string& model_dir) {
  if (!std::filesystem::is_directory(model_dir)) throw Error("model directory '" + model_dir + "' does not exist");
  const std::string path = model_dir + "/model.json";
  std::ifstream in(path);
  if (!in) throw Error("cannot open " + path + " (is '" + model_dir + "' a directory written by `codetr export`?)");
  std::stringstream text;
  text << in.rdbuf();
  return parse_model_config(text.str(), path);
}

bool is_coco80(const std::vector<std::string>& classes) {
  if (classes.size() != kCoco80.size()) return false;
  for (size_t i = 0; i < classes.size(); ++i)
    if (classes[i] != kCoco80[i]) return false;
  return true;
}

int coco80_category_id(int class_index) {
  if (class_index < 0 || class_index >= static_cast<int>(kCoco80Ids.size()))
    throw Error("COCO class index " + std::to_string(class_index) + " is outside 0..79");
  return kCoco80Ids[class_index];
}

}  // namespace codetr
