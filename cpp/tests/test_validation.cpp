#include <gtest/gtest.h>

#include "core.h"
#include "engine.h"

namespace {

namespace core = codetr::core;

// A static batch-2 8x12 float16 engine with a padding mask.
codetr::ModelConfig config() {
  codetr::ModelConfig c;
  c.dtype = "float16";
  c.input.batch = c.input.min_batch = c.input.max_batch = 2;
  c.input.height = 8;
  c.input.width = 12;
  c.input.multiple = 4;
  c.inputs = {{"images", {2, 3, 8, 12}, "float16"}, {"masks", {2, 8, 12}, "bool"}};
  c.outputs = {{"boxes", {2, 300, 4}, "float32"}, {"scores", {2, 300}, "float32"}, {"labels", {2, 300}, "int64"}};
  return c;
}

// A dynamic engine: batch 1..4, H 8..64, W 8..96, multiples of 4.
codetr::ModelConfig dynamic_config() {
  codetr::ModelConfig c = config();
  c.input.dynamic = true;
  c.input.batch = -1;
  c.input.min_batch = 1, c.input.max_batch = 4;
  c.input.min_height = 8, c.input.max_height = 64, c.input.min_width = 8, c.input.max_width = 96;
  c.inputs = {{"images", {-1, 3, -1, -1}, "float16"}, {"masks", {-1, -1, -1}, "bool"}};
  return c;
}

std::string error_of(const std::vector<torch::Tensor>& inputs, const codetr::ModelConfig& cfg = config(),
                     const torch::Device& device = torch::kCPU) {
  try {
    codetr::detail::validate_engine_inputs(inputs, cfg, device);
  } catch (const codetr::Error& e) {
    return e.what();
  }
  return "";
}

torch::Tensor images(std::vector<int64_t> shape, torch::ScalarType t = torch::kHalf) { return torch::zeros(shape, t); }
torch::Tensor masks(std::vector<int64_t> shape) { return torch::zeros(shape, torch::kBool); }

TEST(ValidateInputs, AcceptsMatchingTensors) {
  EXPECT_EQ(error_of({images({2, 3, 8, 12}), masks({2, 8, 12})}), "");
  EXPECT_EQ(error_of({images({3, 3, 16, 36}), masks({3, 16, 36})}, dynamic_config()), "");
}

TEST(ValidateInputs, NamesTheWrongBatchShapeDtypeCountAndLayout) {
  const auto mask = masks({2, 8, 12});
  std::string msg = error_of({images({1, 3, 8, 12}), mask});
  EXPECT_NE(msg.find("engine input 'images': batch is 1, the engine takes 2"), std::string::npos) << msg;
  msg = error_of({images({2, 3, 8, 12}, torch::kFloat), mask});
  EXPECT_NE(msg.find("'images': expected dtype float16, got float32"), std::string::npos) << msg;
  msg = error_of({images({2, 3, 8, 12})});
  EXPECT_NE(msg.find("expects 2 inputs"), std::string::npos) << msg;
  msg = error_of({images({2, 3, 12, 8}).transpose(2, 3), mask});
  EXPECT_NE(msg.find("must be contiguous"), std::string::npos) << msg;
  msg = error_of({images({2, 3, 8, 12}), torch::zeros({2, 8, 12}, torch::kFloat)});
  EXPECT_NE(msg.find("'masks': expected dtype bool, got float32"), std::string::npos) << msg;
  msg = error_of({images({2, 3, 8}), mask});
  EXPECT_NE(msg.find("expected rank 4"), std::string::npos) << msg;
}

TEST(ValidateInputs, DynamicDimensionsHonourRangesAndMultiples) {
  const codetr::ModelConfig c = dynamic_config();
  std::string msg = error_of({images({5, 3, 16, 16}), masks({5, 16, 16})}, c);
  EXPECT_NE(msg.find("batch is 5, the engine takes [1, 4]"), std::string::npos) << msg;
  msg = error_of({images({1, 3, 68, 16}), masks({1, 68, 16})}, c);
  EXPECT_NE(msg.find("height is 68, the engine takes [8, 64]"), std::string::npos) << msg;
  msg = error_of({images({1, 3, 16, 18}), masks({1, 16, 18})}, c);
  EXPECT_NE(msg.find("width 18 is not a multiple of 4"), std::string::npos) << msg;
  msg = error_of({images({1, 4, 16, 16}), masks({1, 16, 16})}, c);
  EXPECT_NE(msg.find("channels is 4, the engine takes 3"), std::string::npos) << msg;
  msg = error_of({images({1, 3, 16, 16}), masks({1, 16, 20})}, c);
  EXPECT_NE(msg.find("'masks': shape [1, 16, 20] does not match images"), std::string::npos) << msg;
}

TEST(ValidateInputs, WrongDeviceIsNamed) {
  const std::string msg = error_of({images({2, 3, 8, 12}), masks({2, 8, 12})}, config(), torch::Device(torch::kCUDA, 0));
  EXPECT_NE(msg.find("is on cpu, the engine runs on cuda:0"), std::string::npos) << msg;
}

TEST(ValidateOutputs, ChecksShapeDtypeAndAgreement) {
  const codetr::ModelConfig c = config();
  const auto ok = std::vector<torch::Tensor>{torch::zeros({2, 300, 4}), torch::zeros({2, 300}), torch::zeros({2, 300}, torch::kLong)};
  EXPECT_NO_THROW(codetr::detail::validate_engine_outputs(ok, c.outputs, 2));
  auto bad = ok;
  bad[2] = torch::zeros({2, 300}, torch::kInt);
  EXPECT_THROW(codetr::detail::validate_engine_outputs(bad, c.outputs, 2), codetr::Error);
  EXPECT_THROW(codetr::detail::validate_engine_outputs(ok, c.outputs, 3), codetr::Error);  // batch
}

// The contract a package records (what export writes) vs model.json.
std::string contract(const std::string& dtype, int64_t height) {
  return R"({"dtype": ")" + dtype + R"(", "input": {"batch": 2, "dynamic": false, "height": )" + std::to_string(height) +
         R"(, "width": 12, "multiple": 4}, "inputs": [{"name": "images", "shape": [2, 3, )" + std::to_string(height) +
         R"(, 12], "dtype": ")" + dtype + R"("}, {"name": "masks", "shape": [2, )" + std::to_string(height) +
         R"(, 12], "dtype": "bool"}], "outputs": [{"name": "boxes", "shape": [2, 300, 4], "dtype": "float32"},
         {"name": "scores", "shape": [2, 300], "dtype": "float32"}, {"name": "labels", "shape": [2, 300], "dtype": "int64"}]})";
}

std::string contract_error(const std::string& recorded) {
  try {
    core::check_engine_contract(recorded, config(), "m/model.pt2", "m/model.json");
  } catch (const codetr::Error& e) {
    return e.what();
  }
  return "";
}

TEST(EngineContract, EqualContractPasses) { EXPECT_EQ(contract_error(contract("float16", 8)), ""); }

TEST(EngineContract, NamesBothValues) {
  std::string msg = contract_error(contract("float32", 8));
  EXPECT_NE(msg.find("m/model.json says dtype float16, but m/model.pt2 was compiled for float32"), std::string::npos) << msg;
  msg = contract_error(contract("float16", 16));
  EXPECT_NE(msg.find("says inputs[0] 'images' shape [2, 3, 8, 12], but m/model.pt2 was compiled for [2, 3, 16, 12]"),
            std::string::npos) << msg;
  msg = contract_error("{not json");
  EXPECT_NE(msg.find("not valid JSON"), std::string::npos) << msg;
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
