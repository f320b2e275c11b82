#include <gtest/gtest.h>

#include <filesystem>
#include <string>

#include <sys/stat.h>
#include <unistd.h>

#include "codetr/error.h"
#include "codetr/model_config.h"

namespace {

const std::string kValid = R"({
  "format_version": 2, "preset": "tiny", "engine": {"format": "aoti", "file": "model.pt2"},
  "device": "cpu", "dtype": "float16", "torch_version": "2.11.0+cu130", "codetr_version": "0.1.0",
  "classes": ["a", "b"],
  "input": {"batch": 2, "dynamic": false, "height": 64, "width": 96, "multiple": 32},
  "inputs": [{"name": "images", "shape": [2, 3, 64, 96], "dtype": "float16"},
             {"name": "masks", "shape": [2, 64, 96], "dtype": "bool"}],
  "outputs": [{"name": "boxes", "shape": [2, 300, 4], "dtype": "float32"},
              {"name": "scores", "shape": [2, 300], "dtype": "float32"},
              {"name": "labels", "shape": [2, 300], "dtype": "int64"}],
  "preprocess": {"bgr_to_rgb": true,
                 "resize": {"scale": [800, 1333], "keep_ratio": true, "interpolation": "bilinear"},
                 "pad": {"size": [64, 96]}, "pad_value": 114, "pad_stage": "before_normalize",
                 "mean": [1, 2, 3], "std": [4, 5, 6], "mask": "padding"},
  "postprocess": {"score_thr": 0.25,
                  "nms": {"type": "soft_nms", "iou_threshold": 0.8, "method": "gaussian", "sigma": 0.5,
                          "min_score": 0.001},
                  "max_per_img": 300, "clip": false}
})";

// Replaces the first occurrence of `from` in kValid (the test fails if it is absent).
std::string edit(const std::string& from, const std::string& to) {
  std::string text = kValid;
  const size_t pos = text.find(from);
  EXPECT_NE(pos, std::string::npos) << from;
  return text.replace(pos, from.size(), to);
}

std::string error_of(const std::string& text) {
  try {
    codetr::parse_model_config(text, "dir/model.json");
  } catch (const codetr::Error& e) {
    return e.what();
  }
  return "";
}

TEST(ModelConfig, ParsesEveryField) {
  const codetr::ModelConfig c = codetr::parse_model_config(kValid);
  EXPECT_EQ(c.preset, "tiny");
  EXPECT_EQ(c.dtype, "float16");
  EXPECT_EQ(c.classes.size(), 2u);
  EXPECT_EQ(c.input.batch, 2);
  EXPECT_EQ(c.input.min_batch, 2);
  EXPECT_EQ(c.input.height, 64);
  EXPECT_EQ(c.inputs[1].shape, (std::vector<int64_t>{2, 64, 96}));
  EXPECT_EQ(c.preprocess.scale_long, 1333);  // (long, short) whatever the order in the file
  EXPECT_EQ(c.preprocess.scale_short, 800);
  EXPECT_EQ(c.preprocess.pad_height, 64);
  EXPECT_EQ(c.preprocess.pad_width, 96);
  EXPECT_EQ(c.preprocess.scale_w, 800);  // mmdet's scale as written, (w, h)
  EXPECT_EQ(c.preprocess.scale_h, 1333);
  EXPECT_EQ(c.input.multiple, 32);
  EXPECT_FALSE(c.postprocess.clip);
  EXPECT_EQ(c.preprocess.pad_stage, codetr::PadStage::kBeforeNormalize);
  EXPECT_FLOAT_EQ(c.preprocess.pad_value, 114.f);
  EXPECT_FLOAT_EQ(c.preprocess.std[2], 6.f);
  EXPECT_TRUE(c.preprocess.padding_mask);
  EXPECT_FLOAT_EQ(c.postprocess.score_thr, 0.25f);
  EXPECT_EQ(c.postprocess.nms.type, codetr::NmsType::kSoft);
  EXPECT_EQ(c.postprocess.nms.method, codetr::SoftNmsMethod::kGaussian);
  EXPECT_FLOAT_EQ(c.postprocess.nms.iou_threshold, 0.8f);
}

TEST(ModelConfig, MissingKeyIsNamedWithItsPath) {
  const std::string msg = error_of(edit(R"("mean": [1, 2, 3], )", ""));
  EXPECT_NE(msg.find("dir/model.json"), std::string::npos) << msg;
  EXPECT_NE(msg.find("missing key 'preprocess.mean'"), std::string::npos) << msg;
}

TEST(ModelConfig, WrongTypeIsNamed) {
  const std::string msg = error_of(edit(R"("height": 64)", R"("height": "64")"));
  EXPECT_NE(msg.find("'input.height' must be an integer (got string)"), std::string::npos) << msg;
  const std::string msg2 = error_of(edit(R"("bgr_to_rgb": true)", R"("bgr_to_rgb": 1)"));
  EXPECT_NE(msg2.find("'preprocess.bgr_to_rgb' must be a boolean"), std::string::npos) << msg2;
  const std::string msg3 = error_of(edit(R"("shape": [2, 300], "dtype": "float32")", R"("shape": 7, "dtype": "float32")"));
  EXPECT_NE(msg3.find("'outputs[1].shape' must be an array"), std::string::npos) << msg3;
}

TEST(ModelConfig, BadEnumValueListsTheAllowedOnes) {
  const std::string msg = error_of(edit(R"("type": "soft_nms")", R"("type": "fast_nms")"));
  EXPECT_NE(msg.find("'postprocess.nms.type' is 'fast_nms'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("'soft_nms'"), std::string::npos) << msg;
}

TEST(ModelConfig, RejectsOtherFormatVersionsAndBrokenJson) {
  EXPECT_NE(error_of(edit(R"("format_version": 2)", R"("format_version": 1)")).find("format_version 1 is not supported"),
            std::string::npos);
  EXPECT_NE(error_of("{\"format_version\": 2,").find("not valid JSON"), std::string::npos);
}

TEST(ModelConfig, EveryContractKeyIsRequired) {
  // No silent defaults: the one writer always writes these.
  EXPECT_NE(error_of(edit(R"(, "multiple": 32)", "")).find("missing key 'input.multiple'"), std::string::npos);
  EXPECT_NE(error_of(edit(R"(, "clip": false)", "")).find("missing key 'postprocess.clip'"), std::string::npos);
  EXPECT_NE(error_of(edit(R"("codetr_version": "0.1.0",)", "")).find("missing key 'codetr_version'"), std::string::npos);
}

TEST(ModelConfig, InputShapesMustAgreeWithTheGeometry) {
  const std::string msg = error_of(edit(R"("height": 64)", R"("height": 32)"));
  EXPECT_NE(msg.find("'inputs[0].shape' [2, 3, 64, 96] disagrees with 'input' (batch 2, 3, 32, 96)"), std::string::npos)
      << msg;
  const std::string msg2 = error_of(edit(R"("pad": {"size": [64, 96]})", R"("pad": {"size_divisor": 32})"));
  EXPECT_NE(msg2.find("before_normalize needs a fixed 'preprocess.pad.size'"), std::string::npos) << msg2;
  const std::string msg3 = error_of(edit(R"("file": "model.pt2")", R"("file": "../elsewhere/model.pt2")"));
  EXPECT_NE(msg3.find("'engine.file' must be a file name inside the model directory"), std::string::npos) << msg3;
}

TEST(ModelConfig, RoundTripsThroughItsSerialiser) {
  const codetr::ModelConfig a = codetr::parse_model_config(kValid);
  const std::string text = codetr::model_config_to_json(a);
  const codetr::ModelConfig b = codetr::parse_model_config(text);
  EXPECT_EQ(codetr::model_config_to_json(b), text);
  EXPECT_EQ(b.preprocess.scale_w, 800);
  EXPECT_EQ(b.postprocess.nms.method, codetr::SoftNmsMethod::kGaussian);
  EXPECT_EQ(b.inputs[1].shape, a.inputs[1].shape);
}

TEST(ModelConfig, PipelineSectionsParseAlone) {
  const codetr::ModelConfig p = codetr::parse_pipeline_config(R"({"dtype": "float32",
    "input": {"dynamic": true, "min_batch": 1, "max_batch": 8, "min_height": 1, "max_height": 4096,
              "min_width": 1, "max_width": 4096, "multiple": 1},
    "preprocess": {"bgr_to_rgb": true, "resize": {"scale": [1333, 800], "keep_ratio": false, "interpolation": "bilinear"},
                   "pad": {"size_divisor": 1}, "pad_value": 0, "pad_stage": "after_normalize",
                   "mean": [1, 2, 3], "std": [1, 1, 1], "mask": "padding"},
    "postprocess": {"score_thr": 0, "nms": {"type": "none"}, "max_per_img": 100, "clip": true}})");
  EXPECT_FALSE(p.preprocess.keep_ratio);
  EXPECT_EQ(p.preprocess.scale_w, 1333);
  EXPECT_TRUE(p.postprocess.clip);
  EXPECT_TRUE(p.engine_file.empty());
}

TEST(ModelConfig, AFifoIsRefusedNotRead) {
  // POSIX calls: this binary also links libtorch, whose exported std::filesystem::remove_all
  // copy crashes when called from here.
  char dir_template[] = "/tmp/codetr_test_fifo_XXXXXX";
  ASSERT_NE(mkdtemp(dir_template), nullptr);
  const std::string dir = dir_template, fifo = dir + "/model.json";
  ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
  try {
    codetr::load_model_config(dir);
    ADD_FAILURE() << "no error";
  } catch (const codetr::Error& e) {
    EXPECT_NE(std::string(e.what()).find("is not a regular file"), std::string::npos) << e.what();
  }
  unlink(fifo.c_str());
  rmdir(dir.c_str());
}

TEST(ModelConfig, ChecksTheEngineContract) {
  // mask "padding" needs the masks input
  const std::string msg = error_of(edit(R"("mask": "padding")", R"("mask": "none")"));
  EXPECT_NE(msg.find("'inputs' must be [images (B,3,H,W)]"), std::string::npos) << msg;
  const std::string msg2 = error_of(edit(R"("name": "images", "shape": [2, 3, 64, 96], "dtype": "float16")",
                                         R"("name": "images", "shape": [2, 3, 64, 96], "dtype": "float32")"));
  EXPECT_NE(msg2.find("differs from 'dtype'"), std::string::npos) << msg2;
}

TEST(ModelConfig, MissingDirOrFileIsNamed) {
  try {
    codetr::load_model_config("/nonexistent/dir");
    FAIL() << "no error";
  } catch (const codetr::Error& e) {
    EXPECT_NE(std::string(e.what()).find("model directory '/nonexistent/dir' does not exist"), std::string::npos)
        << e.what();
  }
  const std::filesystem::path empty = std::filesystem::temp_directory_path() / "codetr_test_empty_model_dir";
  std::filesystem::create_directories(empty);
  try {
    codetr::load_model_config(empty.string());
    FAIL() << "no error";
  } catch (const codetr::Error& e) {
    EXPECT_NE(std::string(e.what()).find("cannot open " + empty.string() + "/model.json"), std::string::npos) << e.what();
  }
}

TEST(ModelConfig, Coco80Mapping) {
  EXPECT_EQ(codetr::coco80_category_id(0), 1);
  EXPECT_EQ(codetr::coco80_category_id(11), 13);  // stop sign: id 12 is unused by COCO
  EXPECT_EQ(codetr::coco80_category_id(79), 90);
  EXPECT_THROW(codetr::coco80_category_id(80), codetr::Error);
  EXPECT_FALSE(codetr::is_coco80({"a", "b"}));
}

}  // namespace
