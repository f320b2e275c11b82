#pragma once
// Device helpers shared by the MSDA CUDA kernels: dtype conversions, vector loads and atomics,
// the (b, h, q) group layout, bilinear corner offsets and weights. Included by ms_deform_attn_cuda.cu
// (one translation unit: everything here has internal linkage).

#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "ms_deform_attn/bilinear_sample.h"
#include "ms_deform_attn/cuda/tuning.h"
#include "ms_deform_attn/ms_deform_attn.h"

namespace codetr {
namespace msda {
namespace {


// The launch shapes and thresholds (tuning.h) by their plain names in every kernel file.
using namespace tuning;
namespace cg = cooperative_groups;

unsigned int blocks_for(int64_t threads, int threads_per_block) {
  return static_cast<unsigned int>((threads + threads_per_block - 1) / threads_per_block);
}

template <typename scalar_t>
using acc_type_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename acc_t, typename T>
__device__ __forceinline__ acc_t to_acc(T x) {
  if constexpr (std::is_same_v<T, double>) {
    return static_cast<acc_t>(x);
  } else {
    return static_cast<acc_t>(to_float(x));
  }
}

template <typename T>
__device__ __forceinline__ T from_acc(float x) {
  if constexpr (std::is_same_v<T, __half>) {
    return __float2half_rn(x);
  } else if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    return __float2bfloat16_rn(x);
  } else {
    return static_cast<T>(x);
  }
}
template <typename T>
__device__ __forceinline__ T from_acc(double x) {
  return static_cast<T>(x);
}

// V consecutive elements loaded/stored as one aligned vector.
template <typename T, int V>
struct alignas(sizeof(T) * V) Vec {
  T v[V];
};

template <typename scalar_t, int V, typename acc_t>
__device__ __forceinline__ void load_acc(const scalar_t* ptr, acc_t (&out)[V]) {
  const Vec<scalar_t, V> vec = *reinterpret_cast<const Vec<scalar_t, V>*>(ptr);
#pragma unroll
  for (int i = 0; i < V; ++i) out[i] = to_acc<acc_t>(vec.v[i]);
}

// grad_value_accum[ptr .. ptr+V) += g. Hopper has 16-byte float atomics on global memory.
template <int V, typename acc_t>
__device__ __forceinline__ void atomic_add_vec(acc_t* ptr, const acc_t (&g)[V]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if constexpr (std::is_same_v<acc_t, float> && V % 4 == 0) {
#pragma unroll
    for (int i = 0; i < V; i += 4) {
      atomicAdd(reinterpret_cast<float4*>(ptr + i), make_float4(g[i], g[i + 1], g[i + 2], g[i + 3]));
    }
  } else if constexpr (std::is_same_v<acc_t, float> && V == 2) {
    atomicAdd(reinterpret_cast<float2*>(ptr), make_float2(g[0], g[1]));
  } else
#endif
  {
#pragma unroll
    for (int i = 0; i < V; ++i) atomicAdd(ptr + i, g[i]);
  }
}

struct GroupLayout {
  int lanes_log2;  // lanes per (b, h, q) group = 1 << lanes_log2
  int64_t num_groups;
};

// Groups are numbered head-major, group = (b*H + h)*Q + q: a block then covers consecutive
// queries of one head, whose samples land on neighbouring pixels of the same head's channels,
// so the corner gathers are served by L1 instead of L2 (the value rows of the H heads are
// interleaved, 512 bytes apart for H*D = 256 fp16).
struct GroupIndex {
  int64_t b;
  int h;
  int64_t row;  // (b*Q + q)*H + h: the row of sampling_locations/attention_weights/output
};

__device__ __forceinline__ GroupIndex group_index(int64_t group, const Sizes& sizes) {
  const int64_t Q = sizes.num_queries, H = sizes.num_heads;
  const int64_t q = group % Q;
  const int64_t bh = group / Q;
  GroupIndex g;
  g.b = bh / H;
  g.h = static_cast<int>(bh % H);
  g.row = (g.b * Q + q) * H + g.h;
  return g;
}

// Element offsets (within one level, relative to the level's first pixel) of the four corners,
// and their weights times `scale`. Corners outside the map get weight 0 and a clamped in-map
// offset: the loads are unconditional, so the compiler can issue all of a point's (and, unrolled,
// several points') gathers before the first use. Offsets are 32-bit (the binding checks
// S*H*D < 2^31): fewer instructions in the per-sample address math.
template <typename acc_t>
__device__ __forceinline__ void corner_offsets_and_weights(const BilinearSample<acc_t>& s, acc_t scale,
                                                           int height, int width, int row_stride,
                                                           int (&offset)[4], acc_t (&weight)[4]) {
  const int x0 = min(max(s.x0, 0), width - 1), x1 = min(max(s.x0 + 1, 0), width - 1);
  const int y0 = min(max(s.y0, 0), height - 1), y1 = min(max(s.y0 + 1, 0), height - 1);
  offset[0] = (y0 * width + x0) * row_stride;
  offset[1] = (y0 * width + x1) * row_stride;
  offset[2] = (y1 * width + x0) * row_stride;
  offset[3] = (y1 * width + x1) * row_stride;
  const acc_t one = 1;
  weight[0] = s.valid[0] ? scale * (one - s.fx) * (one - s.fy) : acc_t(0);
  weight[1] = s.valid[1] ? scale * s.fx * (one - s.fy) : acc_t(0);
  weight[2] = s.valid[2] ? scale * (one - s.fx) * s.fy : acc_t(0);
  weight[3] = s.valid[3] ? scale * s.fx * s.fy : acc_t(0);
}


size_t dtype_size(DType t) {
  switch (t) {
    case DType::kFloat32:
      return 4;
    case DType::kFloat16:
    case DType::kBFloat16:
      return 2;
    case DType::kFloat64:
      return 8;
  }
  return 0;
}

bool aligned(const void* ptr, size_t bytes) { return reinterpret_cast<uintptr_t>(ptr) % bytes == 0; }

// The vector-width rule: V channels per lane are one load of at most 16 bytes, V divides the head
// and a head fits one warp (D / V <= 32). plan() adds alignment and lane-byte limits on top.
inline bool vector_width_fits(int width, size_t elem_bytes, int64_t head_dim) {
  return width * elem_bytes <= 16 && head_dim % width == 0 && head_dim / width <= 32;
}

}  // namespace
}  // namespace msda
}  // namespace codetr
