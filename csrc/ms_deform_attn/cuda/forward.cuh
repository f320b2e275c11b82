#pragma once
// The forward kernel: one group of lanes per (batch, head, query) (group_index in common.cuh); each
// lane owns V consecutive channels (one 16-byte load per bilinear corner for fp16/bf16 with V = 8,
// fp32 with V = 4) and walks all L*P samples itself: coordinates and corner weights are recomputed
// per lane, which costs a few FMAs and broadcast loads but needs no shuffles. Coordinates, corner
// weights and sums are fp32 (fp64 for fp64 values). Chosen for every forward call (forward_cuda).

#include "ms_deform_attn/cuda/common.cuh"

namespace codetr {
namespace msda {
namespace {

// kPoints > 0: P is a compile-time constant (the point loop is fully unrolled); 0: runtime P.
template <typename scalar_t, typename coord_t, int V, int kPoints>
__global__ void __launch_bounds__(kForwardThreadsPerBlock)
    forward_kernel(const scalar_t* __restrict__ value, const coord_t* __restrict__ sampling_locations,
                   const coord_t* __restrict__ attention_weights, scalar_t* __restrict__ output,
                   const Sizes sizes, const LevelShapes levels, const GroupLayout layout) {
  using acc_t = acc_type_t<scalar_t>;
  const int64_t thread = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t group = thread >> layout.lanes_log2;
  const int lane = static_cast<int>(thread & ((1 << layout.lanes_log2) - 1));
  const int D = static_cast<int>(sizes.head_dim);
  const int c0 = lane * V;
  if (group >= layout.num_groups || c0 >= D) return;  // the forward has no shuffles

  const int L = static_cast<int>(sizes.num_levels);
  const int P = kPoints > 0 ? kPoints : static_cast<int>(sizes.num_points);
  const GroupIndex g = group_index(group, sizes);
  const int64_t row_stride = sizes.num_heads * D;
  const scalar_t* value_bh = value + g.b * sizes.num_value * row_stride + g.h * D + c0;
  const coord_t* loc = sampling_locations + g.row * L * P * 2;
  const coord_t* attn = attention_weights + g.row * L * P;

  acc_t acc[V];
#pragma unroll
  for (int i = 0; i < V; ++i) acc[i] = acc_t(0);

  for (int l = 0; l < L; ++l) {
    const int height = levels.height[l], width = levels.width[l];
    const scalar_t* value_level = value_bh + levels.start[l] * row_stride;
#pragma unroll
    for (int p = 0; p < P; ++p) {
      const int lp = l * P + p;
      const Vec<coord_t, 2> xy = *reinterpret_cast<const Vec<coord_t, 2>*>(loc + 2 * lp);
      const auto s = make_bilinear_sample<acc_t>(to_acc<acc_t>(xy.v[0]), to_acc<acc_t>(xy.v[1]), height, width);
      int offset[4];
      acc_t weight[4];
      corner_offsets_and_weights(s, to_acc<acc_t>(attn[lp]), height, width, static_cast<int>(row_stride),
                                 offset, weight);
      acc_t v[4][V];
#pragma unroll
      for (int k = 0; k < 4; ++k) load_acc<scalar_t, V>(value_level + offset[k], v[k]);
#pragma unroll
      for (int k = 0; k < 4; ++k) {
#pragma unroll
        for (int i = 0; i < V; ++i) acc[i] += weight[k] * v[k][i];
      }
    }
  }
  Vec<scalar_t, V> out;
#pragma unroll
  for (int i = 0; i < V; ++i) out.v[i] = from_acc<scalar_t>(acc[i]);
  *reinterpret_cast<Vec<scalar_t, V>*>(output + g.row * D + c0) = out;
}

}  // namespace
}  // namespace msda
}  // namespace codetr
