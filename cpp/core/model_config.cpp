#include "codetr/model_config.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "core.h"

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

void read_input(const Reader& input, InputGeometry& geo) {
  geo.dynamic = input.at("dynamic").boolean();
  if (input.has("batch")) {
    geo.batch = geo.min_batch = geo.max_batch = input.at("batch").integer();
  } else {
    geo.min_batch = input.at("min_batch").integer();
    geo.max_batch = input.at("max_batch").integer();
    geo.batch = -1;
  }
  if (geo.min_batch < 1 || geo.max_batch < geo.min_batch)
    input.fail("'input' batch range is invalid (min_batch " + std::to_string(geo.min_batch) + ", max_batch " +
               std::to_string(geo.max_batch) + ")");
  if (geo.dynamic) {
    geo.min_height = input.at("min_height").integer();
    geo.max_height = input.at("max_height").integer();
    geo.min_width = input.at("min_width").integer();
    geo.max_width = input.at("max_width").integer();
    if (geo.min_height < 1 || geo.max_height < geo.min_height || geo.min_width < 1 || geo.max_width < geo.min_width)
      input.fail("'input' height/width ranges are invalid");
  } else {
    geo.height = input.at("height").integer();
    geo.width = input.at("width").integer();
    if (geo.height < 1 || geo.width < 1) input.fail("'input.height'/'input.width' must be positive");
  }
  geo.multiple = input.at("multiple").integer();
  if (geo.multiple < 1) input.fail("'input.multiple' must be positive");
}

void read_preprocess(const Reader& pre, PreprocessConfig& pp) {
  pp.bgr_to_rgb = pre.at("bgr_to_rgb").boolean();
  const Reader resize = pre.at("resize");
  auto scale = resize.at("scale").array();
  if (scale.size() != 2) resize.fail("'preprocess.resize.scale' must be [w, h] (mmdet's scale)");
  pp.scale_w = scale[0].integer();
  pp.scale_h = scale[1].integer();
  if (pp.scale_w < 1 || pp.scale_h < 1) resize.fail("'preprocess.resize.scale' values must be positive");
  pp.scale_long = std::max(pp.scale_w, pp.scale_h);
  pp.scale_short = std::min(pp.scale_w, pp.scale_h);
  pp.keep_ratio = resize.at("keep_ratio").boolean();
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
    if (pp.pad_height < 1 || pp.pad_width < 1) pad.fail("'preprocess.pad.size' values must be positive");
  } else {
    pad.fail("'preprocess.pad' needs 'size_divisor' or 'size'");
  }
  pp.pad_value = static_cast<float>(pre.at("pad_value").number());
  pp.pad_stage = pre.at("pad_stage").one_of({"after_normalize", "before_normalize"}) == "after_normalize"
                     ? PadStage::kAfterNormalize
                     : PadStage::kBeforeNormalize;
  if (pp.pad_stage == PadStage::kBeforeNormalize &&
      (pp.pad_value < 0 || pp.pad_value > 255 || pp.pad_value != std::round(pp.pad_value)))
    pre.fail("'preprocess.pad_value' " + std::to_string(pp.pad_value) +
             " must be an integer in 0..255 when the uint8 image is padded (pad_stage before_normalize)");
  if (pp.pad_stage == PadStage::kBeforeNormalize && pp.pad_height == 0)
    pre.fail("'preprocess.pad_stage' before_normalize needs a fixed 'preprocess.pad.size'");
  read_triple(pre.at("mean"), pp.mean);
  read_triple(pre.at("std"), pp.std);
  for (int c = 0; c < 3; ++c)
    if (!(pp.std[c] > 0)) pre.fail("'preprocess.std' values must be positive");
  pp.padding_mask = pre.at("mask").one_of({"padding", "none"}) == "padding";
}

void read_postprocess(const Reader& post, PostprocessConfig& pc) {
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
    if (pc.nms.method == SoftNmsMethod::kGaussian && !(pc.nms.sigma > 0))
      nms.fail("'postprocess.nms.sigma' must be positive for gaussian soft-NMS");
  }
  pc.max_per_img = post.at("max_per_img").integer();
  if (pc.max_per_img < 1) post.fail("'postprocess.max_per_img' must be positive");
  pc.clip = post.at("clip").boolean();
}

json parse_json(const std::string& json_text, const std::string& source) {
  try {
    return json::parse(json_text);
  } catch (const json::parse_error& e) {
    throw Error(source + ": not valid JSON (" + e.what() + ")");
  }
}

void read_pipeline(const Reader& root, ModelConfig& cfg) {
  cfg.dtype = root.at("dtype").one_of({"float32", "float16", "bfloat16"});
  read_input(root.at("input"), cfg.input);
  read_preprocess(root.at("preprocess"), cfg.preprocess);
  read_postprocess(root.at("postprocess"), cfg.postprocess);
}

json tensor_specs_json(const std::vector<TensorSpec>& specs) {
  json list = json::array();
  for (const TensorSpec& s : specs) list.push_back({{"name", s.name}, {"shape", s.shape}, {"dtype", s.dtype}});
  return list;
}

}  // namespace

ModelConfig parse_pipeline_config(const std::string& json_text, const std::string& source) {
  const json doc = parse_json(json_text, source);
  ModelConfig cfg;
  read_pipeline(Reader(doc, "", source), cfg);
  return cfg;
}

ModelConfig parse_model_config(const std::string& json_text, const std::string& source) {
  const json doc = parse_json(json_text, source);
  const Reader root(doc, "", source);
  ModelConfig cfg;

  cfg.format_version = static_cast<int>(root.at("format_version").integer());
  if (cfg.format_version != kModelJsonVersion)
    root.fail("format_version " + std::to_string(cfg.format_version) + " is not supported by this runtime (it reads " +
              std::to_string(kModelJsonVersion) + "); re-export the model with this codetr");
  cfg.preset = root.at("preset").str();
  const Reader engine = root.at("engine");
  cfg.engine_format = engine.at("format").one_of({"aoti", "onnx"});
  cfg.engine_file = engine.at("file").str();
  if (cfg.engine_file.empty() || cfg.engine_file.find('/') != std::string::npos)
    engine.fail("'engine.file' must be a file name inside the model directory (got '" + cfg.engine_file + "')");
  cfg.device = root.at("device").one_of({"cuda", "cpu"});
  cfg.torch_version = root.at("torch_version").str();
  cfg.codetr_version = root.at("codetr_version").str();
  for (const Reader& c : root.at("classes").array()) cfg.classes.push_back(c.str());
  if (cfg.classes.empty()) root.fail("'classes' is empty");
  read_pipeline(root, cfg);
  cfg.inputs = read_tensor_specs(root.at("inputs"));
  cfg.outputs = read_tensor_specs(root.at("outputs"));

  // The engine contract: images (+ masks when mask == "padding") in; boxes, scores, labels out.
  const PreprocessConfig& pp = cfg.preprocess;
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
  // The declared input shapes must agree with the geometry the preprocessing plans for.
  const InputGeometry& geo = cfg.input;
  const std::vector<int64_t>& img = cfg.inputs[0].shape;
  const int64_t want_batch = geo.min_batch == geo.max_batch ? geo.max_batch : -1;
  const int64_t want_h = geo.dynamic ? -1 : geo.height, want_w = geo.dynamic ? -1 : geo.width;
  if (img[0] != want_batch || img[1] != 3 || img[2] != want_h || img[3] != want_w)
    root.fail("'inputs[0].shape' [" + std::to_string(img[0]) + ", " + std::to_string(img[1]) + ", " +
              std::to_string(img[2]) + ", " + std::to_string(img[3]) + "] disagrees with 'input' (batch " +
              std::to_string(want_batch) + ", 3, " + std::to_string(want_h) + ", " + std::to_string(want_w) + ")");
  return cfg;
}

std::string model_config_to_json(const ModelConfig& cfg) {
  const InputGeometry& geo = cfg.input;
  json input = {{"dynamic", geo.dynamic}, {"multiple", geo.multiple}};
  if (geo.min_batch == geo.max_batch && geo.batch > 0) {
    input["batch"] = geo.batch;
  } else {
    input["min_batch"] = geo.min_batch;
    input["max_batch"] = geo.max_batch;
  }
  if (geo.dynamic) {
    input["min_height"] = geo.min_height, input["max_height"] = geo.max_height;
    input["min_width"] = geo.min_width, input["max_width"] = geo.max_width;
  } else {
    input["height"] = geo.height, input["width"] = geo.width;
  }
  const PreprocessConfig& pp = cfg.preprocess;
  json pad = pp.pad_height > 0 ? json{{"size", {pp.pad_height, pp.pad_width}}} : json{{"size_divisor", pp.pad_size_divisor}};
  json pre = {{"bgr_to_rgb", pp.bgr_to_rgb},
              {"resize", {{"scale", {pp.scale_w, pp.scale_h}}, {"keep_ratio", pp.keep_ratio}, {"interpolation", "bilinear"}}},
              {"pad", pad},
              {"pad_value", pp.pad_value},
              {"pad_stage", pp.pad_stage == PadStage::kAfterNormalize ? "after_normalize" : "before_normalize"},
              {"mean", {pp.mean[0], pp.mean[1], pp.mean[2]}},
              {"std", {pp.std[0], pp.std[1], pp.std[2]}},
              {"mask", pp.padding_mask ? "padding" : "none"}};
  const PostprocessConfig& pc = cfg.postprocess;
  json nms = {{"type", pc.nms.type == NmsType::kSoft ? "soft_nms" : pc.nms.type == NmsType::kHard ? "nms" : "none"}};
  if (pc.nms.type != NmsType::kNone) nms["iou_threshold"] = pc.nms.iou_threshold;
  if (pc.nms.type == NmsType::kSoft) {
    nms["method"] = pc.nms.method == SoftNmsMethod::kLinear     ? "linear"
                    : pc.nms.method == SoftNmsMethod::kGaussian ? "gaussian"
                                                                 : "naive";
    nms["sigma"] = pc.nms.sigma;
    nms["min_score"] = pc.nms.min_score;
  }
  json post = {{"score_thr", pc.score_thr}, {"nms", nms}, {"max_per_img", pc.max_per_img}, {"clip", pc.clip}};
  json doc = {{"format_version", cfg.format_version},
              {"preset", cfg.preset},
              {"engine", {{"format", cfg.engine_format}, {"file", cfg.engine_file}}},
              {"device", cfg.device},
              {"dtype", cfg.dtype},
              {"torch_version", cfg.torch_version},
              {"codetr_version", cfg.codetr_version},
              {"classes", cfg.classes},
              {"input", input},
              {"inputs", tensor_specs_json(cfg.inputs)},
              {"outputs", tensor_specs_json(cfg.outputs)},
              {"preprocess", pre},
              {"postprocess", post}};
  return doc.dump();
}

void core::validate_input_shapes(const std::vector<std::vector<int64_t>>& shapes,
                                 const std::vector<std::string>& dtypes, const ModelConfig& cfg) {
  auto shape_str = [](const std::vector<int64_t>& shape) {
    std::string s = "[";
    for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + "]";
  };
  if (shapes.size() != cfg.inputs.size() || dtypes.size() != cfg.inputs.size())
    throw Error("engine expects " + std::to_string(cfg.inputs.size()) + " inputs (model.json 'inputs'), got " +
                std::to_string(shapes.size()));
  const InputGeometry& geo = cfg.input;
  for (size_t i = 0; i < shapes.size(); ++i) {
    const TensorSpec& spec = cfg.inputs[i];
    const std::vector<int64_t>& shape = shapes[i];
    const std::string what = "engine input '" + spec.name + "'";
    if (shape.size() != spec.shape.size())
      throw Error(what + ": expected rank " + std::to_string(spec.shape.size()) + " " + shape_str(spec.shape) +
                  ", got shape " + shape_str(shape));
    if (dtypes[i] != spec.dtype) throw Error(what + ": expected dtype " + spec.dtype + ", got " + dtypes[i]);
    // images (B,3,H,W), masks (B,H,W): the batch first, H and W last.
    const size_t h_axis = shape.size() - 2, w_axis = shape.size() - 1;
    for (size_t d = 0; d < shape.size(); ++d) {
      const char* axis = d == 0 ? "batch" : d == h_axis ? "height" : d == w_axis ? "width" : "channels";
      const int64_t v = shape[d];
      int64_t lo = spec.shape[d], hi = spec.shape[d];
      if (spec.shape[d] == -1) {
        lo = d == 0 ? geo.min_batch : d == h_axis ? geo.min_height : geo.min_width;
        hi = d == 0 ? geo.max_batch : d == h_axis ? geo.max_height : geo.max_width;
      }
      if (v < lo || v > hi)
        throw Error(what + ": " + axis + " is " + std::to_string(v) + ", the engine takes " +
                    (lo == hi ? std::to_string(lo) : "[" + std::to_string(lo) + ", " + std::to_string(hi) + "]") +
                    " (shape " + shape_str(shape) + " vs model.json " + shape_str(spec.shape) + ")");
      if (spec.shape[d] == -1 && d != 0 && v % geo.multiple != 0)
        throw Error(what + ": " + axis + " " + std::to_string(v) + " is not a multiple of " +
                    std::to_string(geo.multiple) + " (model.json input.multiple)");
    }
  }
  if (shapes.size() == 2 && (shapes[1][0] != shapes[0][0] || shapes[1][1] != shapes[0][2] || shapes[1][2] != shapes[0][3]))
    throw Error("engine input 'masks': shape " + shape_str(shapes[1]) + " does not match images (B, H, W) = [" +
                std::to_string(shapes[0][0]) + ", " + std::to_string(shapes[0][2]) + ", " + std::to_string(shapes[0][3]) + "]");
}

void core::check_engine_contract(const std::string& contract_json, const ModelConfig& cfg, const std::string& package,
                                 const std::string& model_json) {
  const std::string source = package + " (its recorded '" + kEngineContractKey + "')";
  const json doc = parse_json(contract_json, source);
  const Reader root(doc, "", source);
  ModelConfig rec;
  rec.dtype = root.at("dtype").one_of({"float32", "float16", "bfloat16"});
  read_input(root.at("input"), rec.input);
  rec.inputs = read_tensor_specs(root.at("inputs"));
  rec.outputs = read_tensor_specs(root.at("outputs"));
  auto differ = [&](const std::string& field, const std::string& json_value, const std::string& package_value) {
    throw Error(model_json + " says " + field + " " + json_value + ", but " + package + " was compiled for " +
                package_value + ": model.json and the package do not belong together (re-export the model)");
  };
  auto shape_str = [](const std::vector<int64_t>& shape) {
    std::string s = "[";
    for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + "]";
  };
  if (cfg.dtype != rec.dtype) differ("dtype", cfg.dtype, rec.dtype);
  for (const auto* lists : {&cfg.inputs, &cfg.outputs}) {
    const std::vector<TensorSpec>& mine = *lists;
    const std::vector<TensorSpec>& theirs = lists == &cfg.inputs ? rec.inputs : rec.outputs;
    const std::string kind = lists == &cfg.inputs ? "inputs" : "outputs";
    if (mine.size() != theirs.size())
      differ("the number of " + kind, std::to_string(mine.size()), std::to_string(theirs.size()));
    for (size_t i = 0; i < mine.size(); ++i) {
      const std::string name = kind + "[" + std::to_string(i) + "] '" + mine[i].name + "'";
      if (mine[i].name != theirs[i].name) differ(kind + "[" + std::to_string(i) + "] name", mine[i].name, theirs[i].name);
      if (mine[i].shape != theirs[i].shape) differ(name + " shape", shape_str(mine[i].shape), shape_str(theirs[i].shape));
      if (mine[i].dtype != theirs[i].dtype) differ(name + " dtype", mine[i].dtype, theirs[i].dtype);
    }
  }
  const InputGeometry &a = cfg.input, &b = rec.input;
  const std::pair<const char*, std::pair<int64_t, int64_t>> fields[] = {
      {"input.dynamic", {a.dynamic, b.dynamic}},       {"input.min_batch", {a.min_batch, b.min_batch}},
      {"input.max_batch", {a.max_batch, b.max_batch}}, {"input.height", {a.height, b.height}},
      {"input.width", {a.width, b.width}},             {"input.min_height", {a.min_height, b.min_height}},
      {"input.max_height", {a.max_height, b.max_height}}, {"input.min_width", {a.min_width, b.min_width}},
      {"input.max_width", {a.max_width, b.max_width}}, {"input.multiple", {a.multiple, b.multiple}}};
  for (const auto& [field, values] : fields)
    if (values.first != values.second) differ(field, std::to_string(values.first), std::to_string(values.second));
}

std::string core::result_record_json(const ImageResult& r, const std::vector<std::string>& classes) {
  json rec = {{"file", r.file}, {"image_id", r.image_id}};
  if (r.frame >= 0) rec["frame"] = r.frame, rec["timestamp_ms"] = r.timestamp_ms;
  rec["height"] = r.height, rec["width"] = r.width;
  if (!r.error.empty()) {
    rec["error"] = r.error;
  } else {
    const bool coco = is_coco80(classes);
    json dets = json::array();
    for (const Detection& d : r.detections) {
      const bool known = d.label >= 0 && d.label < static_cast<int64_t>(classes.size());
      dets.push_back({{"bbox", {d.x1, d.y1, d.x2, d.y2}},
                      {"score", d.score},
                      {"label", d.label},
                      {"class", known ? classes[d.label] : ""},
                      {"category_id", coco && known ? coco80_category_id(static_cast<int>(d.label)) : d.label}});
    }
    rec["detections"] = std::move(dets);
  }
  return rec.dump(-1, ' ', false, json::error_handler_t::replace);
}

ModelConfig load_model_config(const std::string& model_dir) {
  namespace fs = std::filesystem;
  if (!fs::is_directory(model_dir)) throw Error("model directory '" + model_dir + "' does not exist");
  const std::string path = model_dir + "/model.json";
  // A FIFO or device would block the read forever.
  if (fs::exists(path) && !fs::is_regular_file(path)) throw Error(path + " is not a regular file");
  std::ifstream in(path);
  if (!in) throw Error("cannot open " + path + " (is '" + model_dir + "' a directory written by `codetr export`?)");
  std::stringstream text;
  text << in.rdbuf();
  return parse_model_config(text.str(), path);
}

const std::vector<std::string>& coco80_classes() {
  static const std::vector<std::string> names(kCoco80.begin(), kCoco80.end());
  return names;
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
