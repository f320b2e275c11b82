#pragma once
// The general backward: one group of lanes per sample (b, q, h, l, p). grad_sampling_locations and
// grad_attention_weights from group sums; grad_value by fp32 atomics into a zero-filled accumulator
// (grad_value itself for fp32/fp64 values, a workspace cast back by cast_grad_value_kernel for
// fp16/bf16). Chosen for every backward call; for the levels the decoder path tiles
// (backward_tiles.cuh) and for the encoder path (backward_encoder.cuh) it skips grad_value.

#include "ms_deform_attn/cuda/common.cuh"

namespace codetr {
namespace msda {
namespace {


template <typename acc_t>
__device__ __forceinline__ acc_t group_sum(acc_t x, int lanes) {
  for (int offset = lanes >> 1; offset > 0; offset >>= 1) x += __shfl_xor_sync(0xffffffffu, x, offset);
  return x;
}

// ---- general backward: one group of lanes per sample ------------------------------------------
//
// Every corner on a level of `accumulate_levels` (bit l = level l) goes into a zero-filled fp32
// accumulator with its own atomics (grad_value itself for fp32/fp64 values; a workspace cast back
// by cast_grad_value_kernel for fp16/bf16). Calls with few samples per level (the decoder) make the
// large levels' grad_value with grad_value_tile_kernel (backward_tiles.cuh) instead.

// Samples are numbered like sampling_locations' (b, q, h, l, p) entries. index_t is 32-bit when the
// sample count allows: 64-bit division is a long software sequence per thread.
template <typename index_t>
struct SampleIndex {
  index_t b;
  int h;
  int l;
  index_t row;    // (b*Q + q)*H + h, as in GroupIndex
  index_t entry;  // row*L*P + l*P + p: the sample's attention_weights entry
};

template <typename index_t>
__device__ __forceinline__ SampleIndex<index_t> sample_index(index_t sample, const Sizes& sizes) {
  const index_t LP = static_cast<index_t>(sizes.num_levels * sizes.num_points);
  SampleIndex<index_t> s;
  s.entry = sample;
  s.row = sample / LP;
  s.l = static_cast<int>((sample - s.row * LP) / static_cast<index_t>(sizes.num_points));
  const index_t bq = s.row / static_cast<index_t>(sizes.num_heads);
  s.h = static_cast<int>(s.row - bq * static_cast<index_t>(sizes.num_heads));
  s.b = bq / static_cast<index_t>(sizes.num_queries);
  return s;
}

// Element offset of grad_value row (b, pixel, head) of corner k of a sample on level l.
template <typename index_t>
__device__ __forceinline__ int64_t corner_offset(const SampleIndex<index_t>& si, int x0, int y0, int k, int width,
                                                 const Sizes& sizes, const LevelShapes& levels) {
  const int64_t pixel = levels.start[si.l] + static_cast<int64_t>(y0 + k / 2) * width + x0 + k % 2;
  return ((static_cast<int64_t>(si.b) * sizes.num_value + pixel) * sizes.num_heads + si.h) * sizes.head_dim;
}

// One group of lanes per sample: the backward has no per-(b, q, h) sum (grad_loc and grad_attn
// are per sample, grad_value goes through atomics), so splitting the L*P samples over groups gives
// the Q=900 decoder 20x the threads a per-query loop would have, to hide the gathers' latency.
template <typename scalar_t, typename coord_t, typename index_t, int V>
__global__ void __launch_bounds__(kBackwardThreadsPerBlock)
    backward_kernel(const scalar_t* __restrict__ grad_output, const scalar_t* __restrict__ value,
                    const coord_t* __restrict__ sampling_locations,
                    const coord_t* __restrict__ attention_weights,
                    acc_type_t<scalar_t>* __restrict__ grad_value_accum,
                    coord_t* __restrict__ grad_sampling_locations,
                    coord_t* __restrict__ grad_attention_weights, const Sizes sizes,
                    const LevelShapes levels, const GroupLayout layout, const unsigned int accumulate_levels) {
  using acc_t = acc_type_t<scalar_t>;
  const int64_t thread = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t group = thread >> layout.lanes_log2;
  const int lanes = 1 << layout.lanes_log2;
  const int lane = static_cast<int>(thread & (lanes - 1));
  const int D = static_cast<int>(sizes.head_dim);
  const int c0 = lane * V;
  // Lanes past the end or past D stay for the group shuffles (every lane of a warp must reach
  // them) but load and write nothing. Groups never straddle warps.
  const bool group_ok = group < layout.num_groups;
  const bool lane_ok = group_ok && c0 < D;

  const SampleIndex<index_t> si = sample_index(static_cast<index_t>(group_ok ? group : 0), sizes);
  const int height = levels.height[si.l], width = levels.width[si.l];
  const Vec<coord_t, 2> xy = *reinterpret_cast<const Vec<coord_t, 2>*>(sampling_locations + 2 * si.entry);
  const auto s = make_bilinear_sample<acc_t>(to_acc<acc_t>(xy.v[0]), to_acc<acc_t>(xy.v[1]), height, width);
  const acc_t a = to_acc<acc_t>(attention_weights[si.entry]);
  acc_t grad_a = 0, grad_fx = 0, grad_fy = 0;
  if (lane_ok && s.inside) {
    acc_t grad_out[V];
    load_acc<scalar_t, V>(grad_output + static_cast<int64_t>(si.row) * D + c0, grad_out);
    const acc_t corner_weight[4] = {(1 - s.fx) * (1 - s.fy), s.fx * (1 - s.fy), (1 - s.fx) * s.fy, s.fx * s.fy};
    acc_t v[4][V];
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      if (s.valid[k]) {
        const int64_t offset = corner_offset(si, s.x0, s.y0, k, width, sizes, levels) + c0;
        load_acc<scalar_t, V>(value + offset, v[k]);
        if ((accumulate_levels >> si.l) & 1u) {
          acc_t gv[V];
#pragma unroll
          for (int i = 0; i < V; ++i) gv[i] = a * corner_weight[k] * grad_out[i];
          atomic_add_vec<V>(grad_value_accum + offset, gv);
        }
      } else {
#pragma unroll
        for (int i = 0; i < V; ++i) v[k][i] = acc_t(0);
      }
    }
#pragma unroll
    for (int i = 0; i < V; ++i) {
      const acc_t sample = corner_weight[0] * v[0][i] + corner_weight[1] * v[1][i] +
                           corner_weight[2] * v[2][i] + corner_weight[3] * v[3][i];
      grad_a += grad_out[i] * sample;
      grad_fx += grad_out[i] * ((1 - s.fy) * (v[1][i] - v[0][i]) + s.fy * (v[3][i] - v[2][i]));
      grad_fy += grad_out[i] * ((1 - s.fx) * (v[2][i] - v[0][i]) + s.fx * (v[3][i] - v[1][i]));
    }
  }
  grad_a = group_sum(grad_a, lanes);
  grad_fx = group_sum(grad_fx, lanes);
  grad_fy = group_sum(grad_fy, lanes);
  if (group_ok && lane == 0) {
    // x = loc_x * width - 0.5, so d/d loc_x = width * d/dx (likewise y).
    grad_attention_weights[si.entry] = from_acc<coord_t>(grad_a);
    grad_sampling_locations[si.entry * 2] = from_acc<coord_t>(a * grad_fx * static_cast<acc_t>(width));
    grad_sampling_locations[si.entry * 2 + 1] = from_acc<coord_t>(a * grad_fy * static_cast<acc_t>(height));
  }
}

// grad_value = the fp32 accumulator cast to value's dtype, C elements per thread.
template <typename scalar_t, typename acc_t, int C>
__global__ void __launch_bounds__(kBackwardThreadsPerBlock)
    cast_grad_value_kernel(const acc_t* __restrict__ grad_value_accum, scalar_t* __restrict__ grad_value,
                           int64_t num_chunks) {
  const int64_t chunk = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (chunk >= num_chunks) return;
  const Vec<acc_t, C> in = reinterpret_cast<const Vec<acc_t, C>*>(grad_value_accum)[chunk];
  Vec<scalar_t, C> out;
#pragma unroll
  for (int i = 0; i < C; ++i) out.v[i] = from_acc<scalar_t>(in.v[i]);
  reinterpret_cast<Vec<scalar_t, C>*>(grad_value)[chunk] = out;
}


}  // namespace
}  // namespace msda
}  // namespace codetr
