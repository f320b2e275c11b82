// Input validation shared by the CPU and CUDA kernels of codetr::window_attention.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

namespace codetr {

struct WindowAttentionProblem {
  int64_t windows;       // Bw
  int64_t tokens;        // N
  int64_t heads;         // H
  int64_t head_dim;      // C / H
  int64_t mask_windows;  // nW (1 without regions)
};

// Errors name the argument and the expected shape, dtype or device.
WindowAttentionProblem check_window_attention_inputs(const at::Tensor& qkv, const at::Tensor& bias,
                                                     const std::optional<at::Tensor>& regions,
                                                     int64_t num_heads, double scale);

}  // namespace codetr
