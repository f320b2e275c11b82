// Swin window attention, fused: for every window w and head h,
//   out[w, i, h*32 + :] = sum_j softmax_j(scale * q_i . k_j + bias[h, i, j] + mask_w(i, j)) v_j
// with q, k, v read from the qkv projection's output (Bw, N, 3, H, 32) as it is laid out in
// memory, the logits, softmax and sums in fp32, and the probabilities rounded to the input dtype
// before they multiply v (as `softmax(-1).to(v.dtype) @ v` does). mask_w(i, j) is Swin's shift
// mask: -100 where the tokens' regions differ (regions[w % nW, i] != regions[w % nW, j]), else 0;
// no regions, no mask. Kernels only (no torch); the op binding is csrc/torch/window_attention_op*.cpp.
#pragma once

#include <cstdint>

#ifdef __CUDACC__
#include <cuda_runtime.h>
#endif

namespace codetr {
namespace winattn {

constexpr int kHeadDim = 32;       // Swin-T/S/B/L: 32 channels per head
constexpr float kShiftMaskValue = -100.0f;

enum class DType { kFloat16, kBFloat16 };

struct CudaArgs {
  DType dtype = DType::kFloat16;
  const void* qkv = nullptr;       // (Bw, N, 3 * H * 32), contiguous
  const void* bias = nullptr;      // (H, N, N), contiguous, dtype of qkv
  const int32_t* regions = nullptr;  // (nW, N) or nullptr
  void* out = nullptr;             // (Bw, N, H * 32)
  int64_t num_windows = 0;         // Bw (batch x windows per image)
  int64_t num_mask_windows = 1;    // nW: Bw is a multiple of it
  int tokens = 0;                  // N
  int heads = 0;                   // H
  float scale = 1.0f;
};

// Whether the CUDA kernel handles windows of `tokens` tokens and heads of `head_dim` channels:
// 4x4, 8x8 and 12x12 windows (Co-DINO's Swin-L: 12x12), whose token counts are whole 16-row tiles.
inline bool cuda_supported(int64_t tokens, int64_t head_dim) {
  return head_dim == kHeadDim && (tokens == 16 || tokens == 64 || tokens == 144);
}

#ifdef __CUDACC__
using CudaStream = cudaStream_t;
#else
using CudaStream = struct CUstream_st*;
#endif

// Launches on `stream`; returns a cudaError_t value (0 on success). The caller validates shapes.
int forward_cuda(const CudaArgs& args, CudaStream stream);

}  // namespace winattn
}  // namespace codetr
