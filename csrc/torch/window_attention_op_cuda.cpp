// codetr::window_attention: binding of the fused CUDA kernel. Launches on the current stream; no
// synchronisation (CUDA-graph capturable).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "torch/aligned.h"
#include "torch/window_attention_checks.h"
#include "window_attention/window_attention.h"

namespace codetr {

namespace {

at::Tensor window_attention_cuda(const at::Tensor& qkv, const at::Tensor& bias,
                                 const std::optional<at::Tensor>& regions, int64_t num_heads, double scale) {
  const char* op = "codetr::window_attention";
  const auto p = check_window_attention_inputs(qkv, bias, regions, num_heads, scale);
  TORCH_CHECK(qkv.device().is_cuda(), op, ": CUDA kernel called with qkv on ", qkv.device());
  TORCH_CHECK(qkv.scalar_type() == at::kHalf || qkv.scalar_type() == at::kBFloat16, op,
              ": the CUDA kernel takes float16 or bfloat16 qkv, got ", qkv.scalar_type());
  TORCH_CHECK(winattn::cuda_supported(p.tokens, p.head_dim), op, ": the CUDA kernel needs head_dim = ",
              winattn::kHeadDim, " and N = 16, 64 or 144 (4x4, 8x8, 12x12 windows), got head_dim = ", p.head_dim,
              ", N = ", p.tokens);
  TORCH_CHECK(p.windows * p.heads <= INT32_MAX, op, ": num_windows * num_heads = ", p.windows * p.heads,
              " exceeds the kernel's grid");
  const c10::cuda::CUDAGuard device_guard(qkv.device());
  // The kernel stages qkv rows with 16-byte loads and reads q and bias as element pairs.
  const auto q = aligned_to(qkv.contiguous(), 16);
  const auto b = aligned_to(bias.contiguous(), 2 * bias.element_size());
  std::optional<at::Tensor> r;
  if (regions.has_value()) r = regions->contiguous();
  auto out = at::empty({p.windows, p.tokens, p.heads * p.head_dim}, q.options());
  if (out.numel() == 0) return out;
  winattn::CudaArgs args;
  args.dtype = q.scalar_type() == at::kHalf ? winattn::DType::kFloat16 : winattn::DType::kBFloat16;
  args.qkv = q.const_data_ptr();
  args.bias = b.const_data_ptr();
  args.regions = r.has_value() ? r->const_data_ptr<int32_t>() : nullptr;
  args.out = out.data_ptr();
  args.num_windows = p.windows;
  args.num_mask_windows = p.mask_windows;
  args.tokens = static_cast<int>(p.tokens);
  args.heads = static_cast<int>(p.heads);
  args.scale = static_cast<float>(scale);
  C10_CUDA_CHECK(static_cast<cudaError_t>(winattn::forward_cuda(args, at::cuda::getCurrentCUDAStream().stream())));
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(codetr, CUDA, m) { m.impl("window_attention", &window_attention_cuda); }

}  // namespace codetr
