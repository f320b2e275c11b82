#include <gtest/gtest.h>

#include <limits>

#include "codetr/detector.h"
#include "codetr/error.h"

namespace {

std::vector<codetr::TensorSpec> specs() {
  return {{"images", {2, 3, 8, 12}, "float16"}, {"masks", {2, 8, 12}, "bool"}};
}

std::string error_of(const std::vector<torch::Tensor>& inputs) {
  try {
    codetr::validate_engine_inputs(inputs, specs(), torch::kCPU);
  } catch (const codetr::Error& e) {
    return e.what();
  }
  return "";
}

TEST(ValidateInputs, AcceptsMatchingTensors) {
  EXPECT_EQ(error_of({torch::zeros({2, 3, 8, 12}, torch::kHalf), torch::zeros({2, 8, 12}, torch::kBool)}), "");
}

TEST(ValidateInputs, NamesTheWrongBatchShapeDtypeCountAndLayout) {
  const auto mask = torch::zeros({2, 8, 12}, torch::kBool);
  std::string msg = error_of({torch::zeros({1, 3, 8, 12}, torch::kHalf), mask});
  EXPECT_NE(msg.find("'images': shape [1, 3, 8, 12] does not match model.json [2, 3, 8, 12]"), std::string::npos) << msg;
  msg = error_of({torch::zeros({2, 3, 8, 12}, torch::kFloat), mask});
  EXPECT_NE(msg.find("'images': dtype float32 does not match model.json float16"), std::string::npos) << msg;
  msg = error_of({torch::zeros({2, 3, 8, 12}, torch::kHalf)});
  EXPECT_NE(msg.find("expects 2 inputs"), std::string::npos) << msg;
  msg = error_of({torch::zeros({2, 3, 12, 8}, torch::kHalf).transpose(2, 3), mask});
  EXPECT_NE(msg.find("must be contiguous"), std::string::npos) << msg;
  msg = error_of({torch::zeros({2, 3, 8, 12}, torch::kHalf), torch::zeros({2, 8, 12}, torch::kFloat)});
  EXPECT_NE(msg.find("'masks': dtype float32"), std::string::npos) << msg;
}

TEST(ValidateInputs, DynamicDimensionsAcceptAnySize) {
  std::vector<codetr::TensorSpec> dyn = {{"images", {-1, 3, -1, -1}, "float32"}};
  EXPECT_NO_THROW(codetr::validate_engine_inputs({torch::zeros({3, 3, 64, 32})}, dyn, torch::kCPU));
  EXPECT_THROW(codetr::validate_engine_inputs({torch::zeros({3, 4, 64, 32})}, dyn, torch::kCPU), codetr::Error);
  EXPECT_THROW(codetr::validate_engine_inputs({torch::zeros({3, 64, 32})}, dyn, torch::kCPU), codetr::Error);
}

TEST(ValidateInputs, WrongDeviceIsNamed) {
  std::vector<codetr::TensorSpec> s = {{"images", {1, 3, 4, 4}, "float32"}};
  try {
    codetr::validate_engine_inputs({torch::zeros({1, 3, 4, 4})}, s, torch::Device(torch::kCUDA, 0));
    FAIL() << "no error";
  } catch (const codetr::Error& e) {
    EXPECT_NE(std::string(e.what()).find("is on cpu, the engine runs on cuda:0"), std::string::npos) << e.what();
  }
}

TEST(ValidateOutputs, ChecksShapeAndDtype) {
  std::vector<codetr::TensorSpec> s = {{"boxes", {1, 300, 4}, "float32"}, {"labels", {1, 300}, "int64"}};
  EXPECT_NO_THROW(codetr::validate_engine_outputs({torch::zeros({1, 300, 4}), torch::zeros({1, 300}, torch::kLong)}, s));
  EXPECT_THROW(codetr::validate_engine_outputs({torch::zeros({1, 300, 4}), torch::zeros({1, 300}, torch::kInt)}, s),
               codetr::Error);
}

std::string finite_error_of(const torch::Tensor& boxes, const torch::Tensor& scores, const std::string& dtype) {
  try {
    codetr::check_finite_outputs(boxes, scores, dtype);
  } catch (const codetr::Error& e) {
    return e.what();
  }
  return "";
}

TEST(CheckFiniteOutputs, AcceptsFiniteOutputsOfEveryDtype) {
  for (auto t : {torch::kFloat, torch::kHalf, torch::kBFloat16})
    EXPECT_EQ(finite_error_of(torch::rand({2, 300, 4}).to(t), torch::rand({2, 300}).to(t), "float16"), "");
}

TEST(CheckFiniteOutputs, NamesTheOutputTheCountAndTheFixForFloat16) {
  auto scores = torch::rand({2, 300});
  scores[1][7] = std::numeric_limits<float>::quiet_NaN();
  scores[0][0] = std::numeric_limits<float>::infinity();
  std::string msg = finite_error_of(torch::rand({2, 300, 4}), scores, "float16");
  EXPECT_NE(msg.find("engine output 'scores' has 2 non-finite value(s) (NaN/inf) out of 600"), std::string::npos) << msg;
  EXPECT_NE(msg.find("float16 model overflowed"), std::string::npos) << msg;
  EXPECT_NE(msg.find("--dtype bfloat16"), std::string::npos) << msg;

  auto boxes = torch::rand({1, 300, 4}).to(torch::kHalf);
  boxes[0][3][2] = -std::numeric_limits<float>::infinity();
  msg = finite_error_of(boxes, torch::rand({1, 300}), "float32");
  EXPECT_NE(msg.find("engine output 'boxes' has 1 non-finite value(s)"), std::string::npos) << msg;
  EXPECT_NE(msg.find("a float32 model should not overflow; check the checkpoint"), std::string::npos) << msg;
  EXPECT_EQ(msg.find("overflowed"), std::string::npos) << msg;
}

TEST(Detector, MissingModelDirIsAClearError) {
  try {
    codetr::Detector d("/nonexistent/model_dir");
    FAIL() << "no error";
  } catch (const codetr::Error& e) {
    EXPECT_NE(std::string(e.what()).find("'/nonexistent/model_dir' does not exist"), std::string::npos) << e.what();
  }
}

}  // namespace
