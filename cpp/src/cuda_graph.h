#pragma once
// Runs an AOTInductor package as one captured CUDA graph (DetectorOptions::cuda_graphs): the first
// run warms the package up twice on a side stream and captures one run; later runs copy their
// inputs into the graph's static input tensors, replay it and return copies of its static outputs.
// Replays are serialised (the graph has one set of static tensors).
#include <memory>
#include <mutex>
#include <vector>

#include <torch/types.h>

namespace torch::inductor {
class AOTIModelPackageLoader;
}

namespace codetr::detail {

class CudaGraphRunner {
 public:
  // Throws codetr::Error when this runtime was built without CUDA code.
  CudaGraphRunner(torch::inductor::AOTIModelPackageLoader& loader, const torch::Device& device);
  ~CudaGraphRunner();
  std::vector<torch::Tensor> run(const std::vector<torch::Tensor>& inputs);

 private:
  struct State;
  torch::inductor::AOTIModelPackageLoader& loader_;
  torch::Device device_;
  std::mutex mutex_;
  std::unique_ptr<State> state_;
};

}  // namespace codetr::detail
