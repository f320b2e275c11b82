#include "cuda_graph.h"

#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

#include "engine.h"

#ifdef CODETR_RUNTIME_CUDA
#include <ATen/cuda/CUDAEvent.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace codetr::detail {

#ifdef CODETR_RUNTIME_CUDA
struct CudaGraphRunner::State {
  at::cuda::CUDAGraph graph;
  std::vector<torch::Tensor> static_inputs, static_outputs;
};

CudaGraphRunner::CudaGraphRunner(torch::inductor::AOTIModelPackageLoader& loader, const torch::Device& device)
    : loader_(loader), device_(device) {}

CudaGraphRunner::~CudaGraphRunner() = default;

std::vector<torch::Tensor> CudaGraphRunner::run(const std::vector<torch::Tensor>& inputs) {
  std::lock_guard<std::mutex> lock(mutex_);
  const c10::DeviceIndex index = device_.has_index() ? device_.index() : c10::cuda::current_device();
  const c10::cuda::CUDAGuard device_guard(index);
  const c10::cuda::CUDAStream caller_stream = c10::cuda::getCurrentCUDAStream(index);
  if (!state_) {
    auto state = std::make_unique<State>();
    for (const torch::Tensor& t : inputs) state->static_inputs.push_back(t.clone());
    // Warm-up and capture on a side stream (capture is not allowed on the legacy default
    // stream); the events order it after the caller's work and the caller's after it.
    const c10::cuda::CUDAStream side = c10::cuda::getStreamFromPool(/*isHighPriority=*/false, index);
    at::cuda::CUDAEvent inputs_ready;
    inputs_ready.record(caller_stream);
    inputs_ready.block(side);
    {
      const c10::cuda::CUDAStreamGuard stream_guard(side);
      try {
        // Lazy initialisation (allocations, kernel loading) must happen before the capture.
        for (int i = 0; i < 2; ++i) loader_.run(state->static_inputs);
        // The AOTInductor container polls its model instances' completion events
        // (cudaEventQuery) when it hands out an instance: finish the warm-ups so the instance is
        // free, and capture in relaxed mode, where such queries are allowed during a capture.
        side.synchronize();
        state->graph.capture_begin(/*pool=*/{0, 0}, cudaStreamCaptureModeRelaxed);
        state->static_outputs = loader_.run(state->static_inputs);
        state->graph.capture_end();
      } catch (const std::exception& e) {
        throw Error("CUDA graph capture of the engine failed: " + message_of(e));
      }
    }
    at::cuda::CUDAEvent capture_done;
    capture_done.record(side);
    capture_done.block(caller_stream);
    state_ = std::move(state);
  } else {
    for (size_t i = 0; i < inputs.size(); ++i) state_->static_inputs[i].copy_(inputs[i], /*non_blocking=*/true);
  }
  // The capture only recorded the kernels: replay also for the first call.
  state_->graph.replay();
  std::vector<torch::Tensor> outputs;
  outputs.reserve(state_->static_outputs.size());
  for (const torch::Tensor& t : state_->static_outputs) outputs.push_back(t.clone());
  return outputs;
}
#else
struct CudaGraphRunner::State {};

CudaGraphRunner::CudaGraphRunner(torch::inductor::AOTIModelPackageLoader& loader, const torch::Device& device)
    : loader_(loader), device_(device) {
  throw Error("cuda_graphs: this runtime was built against a libtorch without CUDA");
}

CudaGraphRunner::~CudaGraphRunner() = default;

std::vector<torch::Tensor> CudaGraphRunner::run(const std::vector<torch::Tensor>&) {
  throw Error("cuda_graphs: this runtime was built against a libtorch without CUDA");
}
#endif

}  // namespace codetr::detail
