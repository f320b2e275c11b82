// CUDA kernel of the fused Swin window attention (contract in window_attention.h).
//
// One block per (window, head), heads fastest: the H blocks of a window read the same qkv rows.
// The block stages K (row-major) and V (transposed) of its head in shared memory; each warp then
// owns 16 query rows at a time and runs both matmuls on the tensor cores (mma.sync m16n8k16, fp32
// accumulators). The 16 x N logits stay in registers in the accumulator layout, where bias, mask
// and the softmax are applied; the probabilities are repacked in place as the A operand of P @ V
// (the accumulator and A layouts match pairwise), so nothing but K, V^T and the region ids goes
// through shared memory and the N x N logits are never written out.
//
// Fragment layouts (PTX ISA, mma.m16n8k16 with 16-bit A/B): lane = 4 * g + t.
//   A (16 x 16, row-major): a0 = (g, 2t..2t+1), a1 = (g+8, 2t..), a2 = (g, 2t+8..), a3 = (g+8, 2t+8..)
//   B (16 x 8, k x n):      b0 = (k 2t..2t+1, n g), b1 = (k 2t+8..2t+9, n g)
//   C (16 x 8, fp32):       c0, c1 = (g, 2t..2t+1), c2, c3 = (g+8, 2t..2t+1)
#include "window_attention/window_attention.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cfloat>
#include <cstdint>
#include <type_traits>

namespace codetr {
namespace winattn {

namespace {

// Warps per block: each loops over the window's 16-row query tiles (3 x 3 tiles for 12x12
// windows). Fewer, longer-lived warps than one per tile: at ~100 registers per thread, a
// 9-warp block would leave room for one block per SM.
constexpr int kWarps = 3;

__device__ __forceinline__ uint32_t load_pair(const void* p) { return *reinterpret_cast<const uint32_t*>(p); }

template <typename T>
__device__ __forceinline__ uint32_t pack_pair(float lo, float hi) {
  if constexpr (std::is_same_v<T, __half>) {
    const __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&h);
  } else {
    const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&h);
  }
}

template <typename T>
__device__ __forceinline__ float2 unpack_pair(uint32_t bits) {
  if constexpr (std::is_same_v<T, __half>) {
    return __half22float2(*reinterpret_cast<const __half2*>(&bits));
  } else {
    return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&bits));
  }
}

// d += a * b on the tensor cores, fp32 accumulators.
template <typename T>
__device__ __forceinline__ void mma_16x8x16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (std::is_same_v<T, __half>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

template <typename T, int kTiles>
__global__ void __launch_bounds__(kWarps * 32)
    window_attention_kernel(const T* __restrict__ qkv, const T* __restrict__ bias,
                            const int32_t* __restrict__ regions, T* __restrict__ out,
                            int64_t num_mask_windows, int heads, float scale) {
  constexpr int N = kTiles * 16;
  constexpr int D = kHeadDim;
  // Row strides in elements, padded by 16 bytes so that the fragment loads (8 rows x 4 lanes)
  // hit 32 different banks.
  constexpr int kKStride = D + 8;
  constexpr int kVStride = N + 8;
  __shared__ alignas(16) T k_s[N * kKStride];
  __shared__ alignas(16) T vt_s[D * kVStride];
  __shared__ int32_t region_s[N];

  const int h = static_cast<int>(blockIdx.x % heads);
  const int64_t window = blockIdx.x / heads;
  const int C = heads * D;
  const int64_t row_stride = 3 * static_cast<int64_t>(C);
  const T* q_head = qkv + window * N * row_stride + h * D;
  const T* k_head = q_head + C;
  const T* v_head = q_head + 2 * C;

  constexpr int kChunks = D / 8;  // 16-byte chunks per row of one head
  for (int i = threadIdx.x; i < N * kChunks; i += blockDim.x) {
    const int n = i / kChunks, c = (i % kChunks) * 8;
    *reinterpret_cast<uint4*>(k_s + n * kKStride + c) = *reinterpret_cast<const uint4*>(k_head + n * row_stride + c);
    const uint4 v = *reinterpret_cast<const uint4*>(v_head + n * row_stride + c);
    const T* ve = reinterpret_cast<const T*>(&v);
#pragma unroll
    for (int e = 0; e < 8; ++e) vt_s[(c + e) * kVStride + n] = ve[e];
  }
  const bool masked = regions != nullptr;
  if (masked) {
    const int32_t* window_regions = regions + (window % num_mask_windows) * N;
    for (int i = threadIdx.x; i < N; i += blockDim.x) region_s[i] = window_regions[i];
  }
  __syncthreads();

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const T* bias_head = bias + static_cast<int64_t>(h) * N * N;
  for (int tile = warp; tile < kTiles; tile += kWarps) {
    const int r0 = tile * 16 + g, r1 = r0 + 8;
    // S = Q K^T (the scale is applied in fp32 below).
    float s[2 * kTiles][4];
#pragma unroll
    for (int j = 0; j < 2 * kTiles; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D; kk += 16) {
      const uint32_t a[4] = {load_pair(q_head + r0 * row_stride + kk + 2 * t),
                             load_pair(q_head + r1 * row_stride + kk + 2 * t),
                             load_pair(q_head + r0 * row_stride + kk + 8 + 2 * t),
                             load_pair(q_head + r1 * row_stride + kk + 8 + 2 * t)};
#pragma unroll
      for (int j = 0; j < 2 * kTiles; ++j) {
        const T* k_row = k_s + (j * 8 + g) * kKStride + kk + 2 * t;
        mma_16x8x16<T>(s[j], a, load_pair(k_row), load_pair(k_row + 8));
      }
    }
    // Logits: scale, relative-position bias, shift mask; then the row softmax. Each row's N
    // values are spread over the 4 lanes of a quad (t), two per n-tile.
    const int region0 = masked ? region_s[r0] : 0, region1 = masked ? region_s[r1] : 0;
    float max0 = -FLT_MAX, max1 = -FLT_MAX;
#pragma unroll
    for (int j = 0; j < 2 * kTiles; ++j) {
      const int col = j * 8 + 2 * t;
      const float2 b0 = unpack_pair<T>(load_pair(bias_head + r0 * N + col));
      const float2 b1 = unpack_pair<T>(load_pair(bias_head + r1 * N + col));
      s[j][0] = s[j][0] * scale + b0.x;
      s[j][1] = s[j][1] * scale + b0.y;
      s[j][2] = s[j][2] * scale + b1.x;
      s[j][3] = s[j][3] * scale + b1.y;
      if (masked) {
        const int c0 = region_s[col], c1 = region_s[col + 1];
        s[j][0] += c0 != region0 ? kShiftMaskValue : 0.f;
        s[j][1] += c1 != region0 ? kShiftMaskValue : 0.f;
        s[j][2] += c0 != region1 ? kShiftMaskValue : 0.f;
        s[j][3] += c1 != region1 ? kShiftMaskValue : 0.f;
      }
      max0 = fmaxf(max0, fmaxf(s[j][0], s[j][1]));
      max1 = fmaxf(max1, fmaxf(s[j][2], s[j][3]));
    }
#pragma unroll
    for (int offset = 1; offset < 4; offset <<= 1) {
      max0 = fmaxf(max0, __shfl_xor_sync(0xffffffffu, max0, offset));
      max1 = fmaxf(max1, __shfl_xor_sync(0xffffffffu, max1, offset));
    }
    float sum0 = 0.f, sum1 = 0.f;
#pragma unroll
    for (int j = 0; j < 2 * kTiles; ++j) {
      s[j][0] = __expf(s[j][0] - max0), s[j][1] = __expf(s[j][1] - max0);
      s[j][2] = __expf(s[j][2] - max1), s[j][3] = __expf(s[j][3] - max1);
      sum0 += s[j][0] + s[j][1];
      sum1 += s[j][2] + s[j][3];
    }
#pragma unroll
    for (int offset = 1; offset < 4; offset <<= 1) {
      sum0 += __shfl_xor_sync(0xffffffffu, sum0, offset);
      sum1 += __shfl_xor_sync(0xffffffffu, sum1, offset);
    }
    const float inv0 = 1.f / sum0, inv1 = 1.f / sum1;
    // O = P V: the probabilities of n-tiles 2kc and 2kc+1 are the A operand of key chunk kc.
    float o[D / 8][4];
#pragma unroll
    for (int nt = 0; nt < D / 8; ++nt) o[nt][0] = o[nt][1] = o[nt][2] = o[nt][3] = 0.f;
#pragma unroll
    for (int kc = 0; kc < kTiles; ++kc) {
      const uint32_t a[4] = {pack_pair<T>(s[2 * kc][0] * inv0, s[2 * kc][1] * inv0),
                             pack_pair<T>(s[2 * kc][2] * inv1, s[2 * kc][3] * inv1),
                             pack_pair<T>(s[2 * kc + 1][0] * inv0, s[2 * kc + 1][1] * inv0),
                             pack_pair<T>(s[2 * kc + 1][2] * inv1, s[2 * kc + 1][3] * inv1)};
#pragma unroll
      for (int nt = 0; nt < D / 8; ++nt) {
        const T* v_row = vt_s + (nt * 8 + g) * kVStride + kc * 16 + 2 * t;
        mma_16x8x16<T>(o[nt], a, load_pair(v_row), load_pair(v_row + 8));
      }
    }
    T* out0 = out + (window * N + r0) * C + h * D;
    T* out1 = out0 + 8 * static_cast<int64_t>(C);
#pragma unroll
    for (int nt = 0; nt < D / 8; ++nt) {
      const int col = nt * 8 + 2 * t;
      *reinterpret_cast<uint32_t*>(out0 + col) = pack_pair<T>(o[nt][0], o[nt][1]);
      *reinterpret_cast<uint32_t*>(out1 + col) = pack_pair<T>(o[nt][2], o[nt][3]);
    }
  }
}

template <typename T, int kTiles>
int launch(const CudaArgs& args, CudaStream stream) {
  const int64_t blocks = args.num_windows * args.heads;
  if (blocks == 0) return static_cast<int>(cudaSuccess);
  if (blocks > INT32_MAX) return static_cast<int>(cudaErrorInvalidConfiguration);
  window_attention_kernel<T, kTiles><<<static_cast<unsigned int>(blocks), kWarps * 32, 0, stream>>>(
      static_cast<const T*>(args.qkv), static_cast<const T*>(args.bias), args.regions, static_cast<T*>(args.out),
      args.num_mask_windows, args.heads, args.scale);
  return static_cast<int>(cudaGetLastError());
}

template <typename T>
int dispatch_tokens(const CudaArgs& args, CudaStream stream) {
  switch (args.tokens) {
    case 16: return launch<T, 1>(args, stream);
    case 64: return launch<T, 4>(args, stream);
    case 144: return launch<T, 9>(args, stream);
  }
  return static_cast<int>(cudaErrorInvalidValue);
}

}  // namespace

int forward_cuda(const CudaArgs& args, CudaStream stream) {
  if (!cuda_supported(args.tokens, kHeadDim) || args.heads <= 0 || args.num_mask_windows <= 0) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  return args.dtype == DType::kFloat16 ? dispatch_tokens<__half>(args, stream)
                                       : dispatch_tokens<__nv_bfloat16>(args, stream);
}

}  // namespace winattn
}  // namespace codetr
