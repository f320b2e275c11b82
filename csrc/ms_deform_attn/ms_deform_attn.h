// Multi-scale deformable attention (MSDA) kernels: torch-free API shared by the CPU and CUDA
// implementations, the torch binding (csrc/torch) and the GoogleTest suite.
//
// Semantics (Deformable-DETR / mmcv): for every (batch b, query q, head h)
//   out[b, q, h*D + c] = sum_{l, p} attn[b, q, h, l, p] * bilinear(value level l, head h, channel c,
//                                                                x = loc_x * w_l - 0.5, y = loc_y * h_l - 0.5)
// where bilinear reads 0 for corners outside [0, h_l) x [0, w_l) (zero padding, align_corners=False)
// and a sample with x <= -1, y <= -1, x >= w_l or y >= h_l contributes nothing (not even gradients).
//
// Layouts, all contiguous, row-major:
//   value              (B, S, H, D)        S = sum_l h_l * w_l, level l starts at row level_start[l]
//   sampling_locations (B, Q, H, L, P, 2)  normalised (x, y)
//   attention_weights  (B, Q, H, L, P)
//   output             (B, Q, H, D)        i.e. (B, Q, H*D)
#pragma once

#include <cstddef>
#include <cstdint>

#ifdef __CUDACC__
#include <cuda_runtime.h>
#endif

namespace codetr {
namespace msda {

constexpr int kMaxLevels = 16;

// Level shapes travel by value (kernel parameter), so the CUDA path needs no host->device copy.
struct LevelShapes {
  int num_levels = 0;
  int height[kMaxLevels] = {};
  int width[kMaxLevels] = {};
  int64_t start[kMaxLevels] = {};  // first row of the level in value's S dimension
};

struct Sizes {
  int64_t batch = 0;        // B
  int64_t num_value = 0;    // S
  int64_t num_heads = 0;    // H
  int64_t head_dim = 0;     // D
  int64_t num_queries = 0;  // Q
  int64_t num_levels = 0;   // L
  int64_t num_points = 0;   // P
};

// ---- CPU ----------------------------------------------------------------------------------
// scalar_t is float or double: coordinates, weights and sums are computed in scalar_t.
// The binding up-casts fp16/bf16 tensors to float for the CPU path.

// Computes output rows for the (b, q, h) groups [group_begin, group_end), group = (b*Q + q)*H + h.
// Disjoint ranges write disjoint outputs, so ranges may run on different threads.
template <typename scalar_t>
void forward_cpu(const scalar_t* value, const scalar_t* sampling_locations,
                 const scalar_t* attention_weights, scalar_t* output, const Sizes& sizes,
                 const LevelShapes& levels, int64_t group_begin, int64_t group_end);

// Gradients for the (b, h) pairs [pair_begin, pair_end), pair = b*H + h. grad_value must be
// zero-filled by the caller and is accumulated into; the other two gradients are overwritten.
// Every write of pair (b, h) lands in grad_value[b, :, h, :] or in rows of that pair, so disjoint
// ranges may run on different threads without races.
template <typename scalar_t>
void backward_cpu(const scalar_t* grad_output, const scalar_t* value,
                  const scalar_t* sampling_locations, const scalar_t* attention_weights,
                  scalar_t* grad_value, scalar_t* grad_sampling_locations,
                  scalar_t* grad_attention_weights, const Sizes& sizes,
                  const LevelShapes& levels, int64_t pair_begin, int64_t pair_end);

// ---- CUDA ---------------------------------------------------------------------------------
enum class DType { kFloat32, kFloat16, kBFloat16, kFloat64 };

// Pointers are device pointers, sampling_locations aligned to one (x, y) pair; value_dtype is the
// dtype of value/output/grad_output/grad_value, coord_dtype that of sampling_locations/
// attention_weights and their gradients (value_dtype or kFloat32).
// Backward: grad_value (value's dtype) is written in full. It is accumulated with atomics in
// grad_value_accum, a 16-byte aligned workspace of B*S*H*D elements of float32 (float64 for
// float64 values) that needs no initialising and may be grad_value itself when value is
// float32/float64. backward_workspace, of backward_cuda_workspace_bytes(args) bytes (16-byte
// aligned, uninitialised), holds the decoder path's sample bins.
struct CudaArgs {
  DType value_dtype = DType::kFloat32;
  DType coord_dtype = DType::kFloat32;
  const void* value = nullptr;
  const void* sampling_locations = nullptr;
  const void* attention_weights = nullptr;
  const void* grad_output = nullptr;   // backward only
  void* output = nullptr;              // forward only
  void* grad_value = nullptr;          // backward only
  void* grad_value_accum = nullptr;    // backward only (workspace, see above)
  void* backward_workspace = nullptr;  // backward only (workspace, see above)
  void* grad_sampling_locations = nullptr;
  void* grad_attention_weights = nullptr;
  Sizes sizes;
  LevelShapes levels;
};

#ifdef __CUDACC__
using CudaStream = cudaStream_t;
using CudaEvent = cudaEvent_t;
#else
using CudaStream = struct CUstream_st*;
using CudaEvent = struct CUevent_st*;
#endif

// A second stream for the independent parts of a backward call (the decoder path: binning and
// output tiles there, beside grad_loc/grad_attn and the small levels on the main stream; other
// calls leave it unused). backward_cuda
// records `fork` on its main stream and makes `stream` wait for it, and before returning records
// `join` on `stream` and makes the main stream wait for it: work queued on the main stream after
// the call sees every result, and a CUDA graph capture of the call gets two joined branches.
// Events should be created with cudaEventDisableTiming. All null: everything on the main stream.
struct CudaSideStream {
  CudaStream stream = nullptr;
  CudaEvent fork = nullptr;
  CudaEvent join = nullptr;
};

// Channels per thread the CUDA kernels would use for this head_dim/dtype, or 0 when the head_dim
// is not supported (it must split into at most 32 lanes of 1, 2, 4 or 8 channels, <= 16 bytes).
int cuda_channels_per_thread(int64_t head_dim, DType value_dtype);

// Launch on `stream`; return the launch's error code (cudaSuccess == 0), never synchronise.
int forward_cuda(const CudaArgs& args, CudaStream stream);
int backward_cuda(const CudaArgs& args, CudaStream stream, const CudaSideStream& side = {});
// Bytes of CudaArgs::backward_workspace the backward of these sizes/levels/dtypes needs (may be 0).
size_t backward_cuda_workspace_bytes(const CudaArgs& args);

}  // namespace msda
}  // namespace codetr
