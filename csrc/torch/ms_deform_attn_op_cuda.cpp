// codetr::ms_deform_attn: binding of the CUDA kernels. Launches on the current stream; no
// synchronisation and no host->device copies (level shapes travel as a kernel parameter), so the
// op can be captured in a CUDA graph.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <unordered_map>

#include "ms_deform_attn/ms_deform_attn.h"
#include "torch/aligned.h"
#include "torch/ms_deform_attn_checks.h"

namespace codetr {

namespace {

msda::DType to_kernel_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return msda::DType::kFloat32;
    case at::kHalf:
      return msda::DType::kFloat16;
    case at::kBFloat16:
      return msda::DType::kBFloat16;
    case at::kDouble:
      return msda::DType::kFloat64;
    default:
      TORCH_CHECK(false, "codetr::ms_deform_attn: unsupported dtype ", t);
  }
}

// The kernels load value/grad_output rows as 16-byte vectors and each (x, y) pair as one vector.
constexpr size_t kVectorBytes = 16;

void check_cuda(const char* op, const at::Tensor& value, const msda::Sizes& sizes) {
  TORCH_CHECK(value.device().is_cuda(), op, ": CUDA kernel called with value on ", value.device());
  TORCH_CHECK(msda::cuda_channels_per_thread(sizes.head_dim, to_kernel_dtype(value.scalar_type())) > 0,
              op, ": head dim D=", sizes.head_dim, " of value (B, S, H, D) is not supported by the CUDA ",
              "kernels for ", value.scalar_type(), " (D must be at most 32 lanes of 1, 2, 4 or 8 channels)");
  TORCH_CHECK(sizes.num_value * sizes.num_heads * sizes.head_dim <= INT32_MAX, op,
              ": value (B, S, H, D) is too large for the CUDA kernels: S*H*D = ",
              sizes.num_value * sizes.num_heads * sizes.head_dim, " must be < 2^31 (32-bit offsets)");
}


// Kernel arguments shared by the forward and backward launches: dtypes, the operands (already
// contiguous and aligned) and the problem shape.
msda::CudaArgs operand_args(const at::Tensor& value, const at::Tensor& sampling_locations,
                            const at::Tensor& attention_weights, const MsDeformAttnProblem& problem) {
  msda::CudaArgs args;
  args.value_dtype = to_kernel_dtype(value.scalar_type());
  args.coord_dtype = to_kernel_dtype(sampling_locations.scalar_type());
  args.value = value.data_ptr();
  args.sampling_locations = sampling_locations.data_ptr();
  args.attention_weights = attention_weights.data_ptr();
  args.sizes = problem.sizes;
  args.levels = problem.levels;
  return args;
}

// The side stream runs at high priority: the branch it runs (binning and output tiles) is the
// longer one (docs/perf-history.md has the timings).
constexpr bool kSideStreamHighPriority = true;

// A pool stream and two events for backward_cuda's independent branch. The events are created once
// per thread and device and reused for the life of the thread: a wait takes the event's latest
// record at the time it is queued, and under CUDA graph capture a record/wait pair only becomes a
// dependency edge. The branch reads the op's inputs and writes buffers the op allocated on the
// current stream, and the current stream waits for the branch before anything queued after the op,
// so the caching allocator needs no record_stream.
msda::CudaSideStream side_stream(c10::DeviceIndex device) {
  struct Events {
    cudaEvent_t fork = nullptr, join = nullptr;
  };
  thread_local std::unordered_map<c10::DeviceIndex, Events> events;
  Events& e = events[device];
  if (e.fork == nullptr) {
    C10_CUDA_CHECK(cudaEventCreateWithFlags(&e.fork, cudaEventDisableTiming));
    C10_CUDA_CHECK(cudaEventCreateWithFlags(&e.join, cudaEventDisableTiming));
  }
  return {c10::cuda::getStreamFromPool(kSideStreamHighPriority, device).stream(), e.fork, e.join};
}

at::Tensor ms_deform_attn_cuda(const at::Tensor& value, at::IntArrayRef spatial_shapes,
                               const at::Tensor& sampling_locations,
                               const at::Tensor& attention_weights) {
  const char* op = "codetr::ms_deform_attn";
  const auto problem =
      check_ms_deform_attn_inputs(op, value, spatial_shapes, sampling_locations, attention_weights);
  check_cuda(op, value, problem.sizes);
  const c10::cuda::CUDAGuard device_guard(value.device());
  const auto& sz = problem.sizes;
  auto output = at::empty({sz.batch, sz.num_queries, sz.num_heads * sz.head_dim}, value.options());
  if (output.numel() == 0) return output;
  const auto v = aligned_to(value.contiguous(), kVectorBytes);
  const auto loc = aligned_to(sampling_locations.contiguous(), 2 * sampling_locations.element_size());
  const auto attn = attention_weights.contiguous();
  msda::CudaArgs args = operand_args(v, loc, attn, problem);
  args.output = output.data_ptr();
  C10_CUDA_CHECK(static_cast<cudaError_t>(
      msda::forward_cuda(args, at::cuda::getCurrentCUDAStream().stream())));
  return output;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& value, at::IntArrayRef spatial_shapes,
    const at::Tensor& sampling_locations, const at::Tensor& attention_weights) {
  const char* op = "codetr::ms_deform_attn_backward";
  const auto problem = check_ms_deform_attn_backward_inputs(grad_output, value, spatial_shapes,
                                                            sampling_locations, attention_weights);
  check_cuda(op, value, problem.sizes);
  const c10::cuda::CUDAGuard device_guard(value.device());
  const auto v = aligned_to(value.contiguous(), kVectorBytes);
  const auto loc = aligned_to(sampling_locations.contiguous(), 2 * sampling_locations.element_size());
  const auto attn = attention_weights.contiguous();
  const auto grad_out = aligned_to(grad_output.contiguous(), kVectorBytes);
  // grad_value is accumulated with atomics in fp32 (fp64 for fp64 values): in place for fp32/fp64,
  // in a workspace for fp16/bf16. The kernels write every element; no buffer needs zeroing here.
  auto grad_value = at::empty_like(v);
  const bool accumulate_in_place = value.scalar_type() == at::kFloat || value.scalar_type() == at::kDouble;
  auto grad_value_accum = accumulate_in_place ? grad_value : at::empty(v.sizes(), v.options().dtype(at::kFloat));
  // Every (b, q, h, l, p) entry is written by the kernel.
  auto grad_loc = at::empty_like(loc);
  auto grad_attn = at::empty_like(attn);
  if (grad_out.numel() > 0) {
    msda::CudaArgs args = operand_args(v, loc, attn, problem);
    args.grad_output = grad_out.data_ptr();
    args.grad_value = grad_value.data_ptr();
    args.grad_value_accum = grad_value_accum.data_ptr();
    // The decoder path's sample bins (0 bytes for other calls). That path alone uses a side stream.
    const int64_t workspace_bytes = static_cast<int64_t>(msda::backward_cuda_workspace_bytes(args));
    const auto workspace = at::empty({workspace_bytes}, v.options().dtype(at::kByte));
    args.backward_workspace = workspace.data_ptr();
    args.grad_sampling_locations = grad_loc.data_ptr();
    args.grad_attention_weights = grad_attn.data_ptr();
    const msda::CudaSideStream side = workspace_bytes > 0 ? side_stream(value.get_device()) : msda::CudaSideStream{};
    C10_CUDA_CHECK(static_cast<cudaError_t>(msda::backward_cuda(args, at::cuda::getCurrentCUDAStream().stream(), side)));
  } else {
    grad_value.zero_();
    grad_loc.zero_();
    grad_attn.zero_();
  }
  return {grad_value, grad_loc, grad_attn};
}

}  // namespace

TORCH_LIBRARY_IMPL(codetr, CUDA, m) {
  m.impl("ms_deform_attn", &ms_deform_attn_cuda);
  m.impl("ms_deform_attn_backward", &ms_deform_attn_backward_cuda);
}

}  // namespace codetr
