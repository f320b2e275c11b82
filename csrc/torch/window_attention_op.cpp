// codetr::window_attention: input checks and the CPU kernel, a plain ATen reference of the fused
// CUDA kernel's contract (fp32 logits and softmax, probabilities rounded to the input dtype before
// they multiply v). The model itself runs its own PyTorch formulation on the CPU.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>

#include "torch/window_attention_checks.h"
#include "window_attention/window_attention.h"

namespace codetr {

WindowAttentionProblem check_window_attention_inputs(const at::Tensor& qkv, const at::Tensor& bias,
                                                     const std::optional<at::Tensor>& regions,
                                                     int64_t num_heads, double scale) {
  const char* op = "codetr::window_attention";
  TORCH_CHECK(qkv.dim() == 3, op, ": qkv must be 3-D (num_windows, N, 3*C), got shape ", qkv.sizes());
  TORCH_CHECK(num_heads > 0, op, ": num_heads must be > 0, got ", num_heads);
  TORCH_CHECK(qkv.size(2) % (3 * num_heads) == 0, op, ": qkv's last dim (", qkv.size(2),
              ") must be 3 * num_heads * head_dim with num_heads = ", num_heads);
  TORCH_CHECK(std::isfinite(scale), op, ": scale must be finite, got ", scale);
  const auto dtype = qkv.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16 || dtype == at::kDouble, op,
              ": qkv must be float32, float16, bfloat16 or float64, got ", dtype);
  WindowAttentionProblem p{qkv.size(0), qkv.size(1), num_heads, qkv.size(2) / (3 * num_heads), 1};
  TORCH_CHECK(bias.dim() == 3 && bias.size(0) == p.heads && bias.size(1) == p.tokens && bias.size(2) == p.tokens, op,
              ": bias must be (num_heads, N, N) = [", p.heads, ", ", p.tokens, ", ", p.tokens, "], got ",
              bias.sizes());
  TORCH_CHECK(bias.scalar_type() == dtype, op, ": bias must have qkv's dtype (", dtype, "), got ",
              bias.scalar_type());
  TORCH_CHECK(bias.device() == qkv.device(), op, ": bias must be on qkv's device (", qkv.device(), "), got ",
              bias.device());
  if (regions.has_value()) {
    const at::Tensor& r = *regions;
    TORCH_CHECK(r.dim() == 2 && r.size(1) == p.tokens && r.size(0) > 0, op,
                ": regions must be (num_mask_windows, N) with N = ", p.tokens, ", got ", r.sizes());
    TORCH_CHECK(r.scalar_type() == at::kInt, op, ": regions must be int32, got ", r.scalar_type());
    TORCH_CHECK(r.device() == qkv.device(), op, ": regions must be on qkv's device (", qkv.device(), "), got ",
                r.device());
    TORCH_CHECK(p.windows % r.size(0) == 0, op, ": qkv's num_windows (", p.windows,
                ") must be a multiple of regions' num_mask_windows (", r.size(0), ")");
    p.mask_windows = r.size(0);
  }
  return p;
}

namespace {

at::Tensor window_attention_cpu(const at::Tensor& qkv, const at::Tensor& bias, const std::optional<at::Tensor>& regions,
                                int64_t num_heads, double scale) {
  const auto p = check_window_attention_inputs(qkv, bias, regions, num_heads, scale);
  TORCH_CHECK(qkv.device().is_cpu(), "codetr::window_attention: CPU kernel called with qkv on ", qkv.device());
  const auto compute = qkv.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const auto parts = qkv.to(compute).view({p.windows, p.tokens, 3, p.heads, p.head_dim}).permute({2, 0, 3, 1, 4});
  auto logits = at::matmul(parts[0], parts[1].transpose(-2, -1)) * scale + bias.to(compute).unsqueeze(0);
  if (regions.has_value()) {
    const auto differ = regions->unsqueeze(2) != regions->unsqueeze(1);  // (nW, N, N)
    const auto mask = at::where(differ, at::scalar_tensor(winattn::kShiftMaskValue, logits.options()),
                                at::scalar_tensor(0.0, logits.options()));
    logits = (logits.view({-1, p.mask_windows, p.heads, p.tokens, p.tokens}) + mask.unsqueeze(1))
                 .view({p.windows, p.heads, p.tokens, p.tokens});
  }
  const auto probabilities = logits.softmax(-1).to(qkv.scalar_type()).to(compute);
  return at::matmul(probabilities, parts[2])
      .transpose(1, 2)
      .reshape({p.windows, p.tokens, p.heads * p.head_dim})
      .to(qkv.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(codetr, CPU, m) { m.impl("window_attention", &window_attention_cpu); }

}  // namespace codetr
