#pragma once
// libcodetr's internal engine adapter: an AOTInductor package behind the model.json contract.
// Not part of the public API (codetr/codetr.h has no torch types); the GoogleTests use it.
#include <memory>
#include <string>
#include <vector>

#include <torch/types.h>

#include "core.h"

namespace torch::inductor {
class AOTIModelPackageLoader;
}

namespace codetr::detail {

class CudaGraphRunner;

// c10::Error::what() carries a C++ backtrace; users need the message.
std::string message_of(const std::exception& e);

torch::ScalarType dtype_from_name(const std::string& name);
std::string dtype_name(torch::ScalarType type);

// core::validate_input_shapes on the tensors' shapes and dtypes, plus device and contiguity.
void validate_engine_inputs(const std::vector<torch::Tensor>& inputs, const ModelConfig& config,
                            const torch::Device& device);

// Checks engine outputs against model.json's "outputs" (count, shape, dtype) and each other
// (batch, number of queries).
void validate_engine_outputs(const std::vector<torch::Tensor>& outputs, const std::vector<TensorSpec>& specs,
                             int64_t batch);

// One engine batch after preprocessing: the package's inputs and where each image sits.
struct EngineBatch {
  std::vector<torch::Tensor> inputs;  // images (B,3,H,W) [, masks (B,H,W)] on the engine's device
  core::BatchPlan plan;
};

// Preprocesses `images` (one padded size) for the engine: on CUDA engines with the fused kernel of
// preprocess_cuda.cu, else core::preprocess_host into the input tensors (uploaded for CUDA).
EngineBatch preprocess_batch(const std::vector<ImageView>& images, const ModelConfig& config, const torch::Device& device);

// The package, loaded once and checked against model.json (device, recorded contract).
class Engine {
 public:
  Engine(const std::string& package, const ModelConfig& config, const std::string& model_json, const torch::Device& device,
         size_t num_runners, bool cuda_graphs);
  ~Engine();
  // Validates inputs, runs the package (or its CUDA graph), validates the outputs.
  std::vector<torch::Tensor> run(const std::vector<torch::Tensor>& inputs) const;

 private:
  const ModelConfig& config_;
  torch::Device device_;
  std::unique_ptr<torch::inductor::AOTIModelPackageLoader> loader_;
  std::unique_ptr<CudaGraphRunner> graph_;
};

}  // namespace codetr::detail
