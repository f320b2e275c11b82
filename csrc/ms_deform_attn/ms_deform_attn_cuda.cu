// CUDA kernels for multi-scale deformable attention (see ms_deform_attn.h for the contract).
//
// Work split (forward): one "group" of lanes per (batch, head, query); the backward kernels below
// split differently (per sample, or per block of encoder queries). Each lane owns V consecutive
// channels (one 16-byte load per bilinear corner for fp16/bf16 with V = 8, fp32 with V = 4), so a
// group of D/V lanes (rounded up to a power of two, at most 32, never straddling a warp) covers the
// head. Every lane walks all L*P samples itself: coordinates and corner weights are recomputed
// per lane, which costs a few FMAs and broadcast loads but needs no shuffles in the forward.
// Coordinates, corner weights and sums are fp32 (fp64 for fp64 values).
#include "ms_deform_attn/ms_deform_attn.h"

#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <type_traits>

#include "ms_deform_attn/bilinear_sample.h"

namespace codetr {
namespace msda {

namespace {

namespace cg = cooperative_groups;

// 256 threads: measured on an H100 (2026-11-24), 1024-thread forward blocks were slower on the
// 768x1152 encoder in fp16 (416 vs 372 us) and starved the Q=900 decoder of blocks (27 vs 15 us).
constexpr int kForwardThreadsPerBlock = 256;
constexpr int kBackwardThreadsPerBlock = 256;
// Bytes of value per lane and corner in backward_kernel (see plan()).
#ifndef CODETR_MSDA_BACKWARD_LANE_BYTES
#define CODETR_MSDA_BACKWARD_LANE_BYTES 16
#endif
constexpr size_t kBackwardLaneBytes = CODETR_MSDA_BACKWARD_LANE_BYTES;

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
// large levels' grad_value with grad_value_tile_kernel below instead.
// Tried and dropped (H100, 2026-11-24, decoder Q=900 at 768x1152): zeroing and casting only the
// ~1/3 of the accumulator rows the decoder reaches. Flagging those rows takes one more pass over
// the 576 K corners, and a pass over the corners costs about as much as the whole-buffer zero-fill
// it saves (36 us for the flagging pass vs 23 us for the memset; fp16 backward 114 vs ~102 us).

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

// ---- decoder backward: grad_value gathered per output tile ---------------------------------------
//
// With few samples per (b, h, level) (the decoder: Q = 900 queries x 4 points) and fp16/bf16 values,
// backward_kernel spends most of the backward on its dense fp32 accumulator: zero-filling it and
// casting it back cost 62 of 113.5 us on the 768x1152 decoder (H100, 2026-11-24), while the samples
// touch ~1/3 of its rows. Instead, the large levels are cut into tiles of pixels. Two small
// kernels sort the samples into per-(b, h, tile) bins (count, then scatter; a sample whose
// corners straddle tiles goes into each); then one block per tile puts its bin's corners on
// per-pixel lists in shared memory, sums them in registers (fp32) and writes the whole tile of
// grad_value once, in value's dtype, zeros included: no memset, no global atomics, no cast. A
// tile's hits are summed by one block, so only levels with few expected hits per tile are tiled;
// the small levels keep backward_kernel's atomics into a zero-filled accumulator, which is small
// for them.
// Measured (same device, fp16 decoder backward, graph): 94.4 us (5.5x the forward) vs 113.5 dense;
// per call: tile kernel 29, backward_kernel 34, binning 20, memset + cast of the small levels 6.
// Then (session 5) the binning and the tiles moved to the caller's side stream, beside
// backward_kernel, and the binning to two launches: 75-78 us, vs 88-90 on one stream in the same runs.
// Tried and dropped then: staging each round's grad_output rows in shared memory (64 registers,
// 78.1 vs 76.2 us), 128-pixel tiles (90.7 us), one group per (b, q, h, level) in backward_kernel
// (77.1 vs 75.4 us), the small levels by tiles too, summed per round of 256 entries by a block each
// and added with one atomic per reached (pixel, 4 channels) (90.4 vs 78.2 us).
// Tried first: every tile block scanning all of its level's samples itself, without bins (207 us:
// 15 dependent rounds per block), and summing in shared memory with float atomics (48 us for the
// tile kernel alone: they compile to compare-and-swap loops).
// Tried in session 6 (same runs against this code at 74-77 us; BENCHMARKS.md): fixed-capacity bins
// filled by one kernel that also stores each sample's location, weight and query, so the tile kernel
// reloads nothing (73-75 us: no gain worth its cliff, since a full bin spills into an overflow list
// that every tile block of the head must scan); that filing done inside backward_kernel (90-96 us:
// backward_kernel needs 80 registers then); 512-thread tile blocks (77-90 us); fp16 values kept
// packed in backward_kernel's registers, with 5 or 6 resident blocks per SM (74-77 / 87 us); two
// samples per lane group with all their loads in flight (87-89 us: 80-115 registers).
// Tried in session 7 (against this code at 74-76 us): the tiles also making the tiled levels'
// grad_loc/grad_attn from per-record G = grad_output . value sums (107-111 us); persistent tile
// blocks prefetching the next bin (81-85 us); grad_loc/grad_attn by one lane group per (b, q, h) as
// in the forward, to leave the tiles the SMs' registers (80-82 us); level 2 tiled too (kTileMaxHits
// 1200: fp16 71.5-74.2, bf16 75.4-75.6 us, within the runs' spread).
constexpr int kTileThreads = 256;
constexpr int kTileMaxSamples = 16384;   // Q*P per (b, h, level) up to which tiles are considered
constexpr int kTileAccumFloats = 8192;   // fp32 sums per block (in registers): tile pixels = this / D
constexpr int kTileMaxHits = 512;        // expected corner hits per tile up to which a level is tiled
constexpr int kTileMaxTilesPerHead = 8192;  // the scatter keeps a (b, h)'s bin offsets in shared memory

struct TileLayout {
  int tile_pixels;
  int total_tiles;                 // per (b, h), over the tiled levels
  int first_tile[kMaxLevels + 1];  // prefix sums of the levels' tile counts (0 for untiled levels)
  unsigned int tiled_levels;       // bit l: level l is made here
  int num_tiled_levels;
  int tiled_level[kMaxLevels];     // the tiled levels, in order
};

// The bins, per (b, h): counts[t] and cursor[t] per tile, offsets[t + 1] (written by the scatter),
// and room for entries_per_head entries (4 per sample, the most a sample can make), each
// (i << 4) | corner mask with i = q * P + p the sample within its (b, h, level). Arrays are indexed
// by bh * total_tiles + t, offsets by bh * (total_tiles + 1) + t, entries from bh * entries_per_head.
struct TileBins {
  int* counts;
  int* cursor;
  int* offsets;
  int* entries;
  int64_t num_bins;
  int entries_per_head;
};

// Calls f(tile, corner mask) once per tile that corners of sample i = q * P + p of (b, h, level l)
// land in.
template <typename coord_t, typename F>
__device__ __forceinline__ void for_each_tile_of_sample(const coord_t* sampling_locations, int64_t entry, int l,
                                                        const LevelShapes& levels, const TileLayout& tiles, F&& f) {
  const int height = levels.height[l], width = levels.width[l];
  const Vec<coord_t, 2> xy = *reinterpret_cast<const Vec<coord_t, 2>*>(sampling_locations + 2 * entry);
  const auto s = make_bilinear_sample<float>(to_acc<float>(xy.v[0]), to_acc<float>(xy.v[1]), height, width);
  int tile_of[4];
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    tile_of[k] = s.valid[k] ? tiles.first_tile[l] + ((s.y0 + k / 2) * width + s.x0 + k % 2) / tiles.tile_pixels : -1;
  }
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    bool first = tile_of[k] >= 0;
#pragma unroll
    for (int j = 0; j < k; ++j) first = first && tile_of[j] != tile_of[k];
    if (!first) continue;
    int mask = 0;
#pragma unroll
    for (int j = 0; j < 4; ++j) mask |= (tile_of[j] == tile_of[k]) << j;
    f(tile_of[k], mask);
  }
}

// offsets[0 .. n] = exclusive prefix sum of counts[0 .. n) (offsets[n] = the total), by one block.
__device__ void block_exclusive_scan(const int* counts, int n, int* offsets) {
  __shared__ int warp_sums[kTileThreads / 32];
  const int per_thread = (n + kTileThreads - 1) / kTileThreads;
  const int begin = min(n, static_cast<int>(threadIdx.x) * per_thread), end = min(n, begin + per_thread);
  int sum = 0;
  for (int k = begin; k < end; ++k) sum += counts[k];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  int inclusive = sum;
  for (int offset = 1; offset < 32; offset <<= 1) {
    const int up = __shfl_up_sync(0xffffffffu, inclusive, offset);
    if (lane >= offset) inclusive += up;
  }
  if (lane == 31) warp_sums[warp] = inclusive;
  __syncthreads();
  int running = inclusive - sum;
  for (int w = 0; w < warp; ++w) running += warp_sums[w];
  for (int k = begin; k < end; ++k) {
    offsets[k] = running;
    running += counts[k];
  }
  if (threadIdx.x == kTileThreads - 1) offsets[n] = running;
}

// Thread per sample of the tiled levels of (b, h) = blockIdx.y: kCount counts its bins' entries;
// else (after the count) writes them, each block first scanning its (b, h)'s counts itself, and
// block 0 of each (b, h) storing the offsets for the tile kernel. That leaves no separate
// prefix-sum launch between the two passes.
template <typename coord_t, bool kCount>
__global__ void __launch_bounds__(kTileThreads)
    bin_samples_kernel(const coord_t* __restrict__ sampling_locations, const Sizes sizes, const LevelShapes levels,
                       const TileLayout tiles, TileBins bins) {
  extern __shared__ int bin_offsets[];  // [total_tiles + 1], scatter pass only
  const int Q = static_cast<int>(sizes.num_queries), P = static_cast<int>(sizes.num_points);
  const int H = static_cast<int>(sizes.num_heads), L = static_cast<int>(sizes.num_levels);
  const int64_t bh = blockIdx.y;
  const int T = tiles.total_tiles;
  if constexpr (!kCount) {
    block_exclusive_scan(bins.counts + bh * T, T, bin_offsets);
    __syncthreads();
    if (blockIdx.x == 0) {
      for (int t = threadIdx.x; t <= T; t += kTileThreads) bins.offsets[bh * (T + 1) + t] = bin_offsets[t];
    }
  }
  const int64_t per_level = static_cast<int64_t>(Q) * P;
  const int64_t sample = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;  // within (b, h)
  if (sample >= tiles.num_tiled_levels * per_level) return;
  const int i = static_cast<int>(sample % per_level);
  const int l = tiles.tiled_level[sample / per_level];
  const int h = static_cast<int>(bh % H);
  const int64_t b = bh / H;
  const int q = i / P, p = i - q * P;
  const int64_t entry = ((b * Q + q) * H + h) * L * P + l * P + p;
  for_each_tile_of_sample(sampling_locations, entry, l, levels, tiles, [&](int tile, int mask) {
    // One atomic per bin and warp: a query's points, and neighbouring queries, share bins.
    const auto peers = cg::labeled_partition(cg::coalesced_threads(), static_cast<unsigned int>(tile));
    const int64_t bin = bh * T + tile;
    if constexpr (kCount) {
      if (peers.thread_rank() == 0) atomicAdd(&bins.counts[bin], static_cast<int>(peers.size()));
    } else {
      int base = 0;
      if (peers.thread_rank() == 0) base = atomicAdd(&bins.cursor[bin], static_cast<int>(peers.size()));
      bins.entries[bh * bins.entries_per_head + bin_offsets[tile] + peers.shfl(base, 0) + peers.thread_rank()] =
          (i << 4) | mask;
    }
  });
}

// A corner on a tile pixel's list: a * corner weight, the sample's query, the next record on the
// list (or -1), and padding to one 16-byte shared load.
struct alignas(16) TileRecord {
  float weight;
  int query, next, padding;
};

// One block per (b, h, tile). The bin's entries are taken kTileThreads at a time: each corner in
// the tile becomes a record (weight a * corner weight, query) pushed onto its pixel's list in
// shared memory with an integer atomicExch (sm_90 has no native shared fp32 atomic add). Then each
// thread walks the lists of the (pixel, C channels) items it owns and adds weight * grad_output
// into registers: no float atomics, and each output element is written once at the end.
template <typename scalar_t, typename coord_t, int C>
__global__ void __launch_bounds__(kTileThreads)
    grad_value_tile_kernel(const scalar_t* __restrict__ grad_output, const coord_t* __restrict__ sampling_locations,
                           const coord_t* __restrict__ attention_weights, scalar_t* __restrict__ grad_value,
                           const Sizes sizes, const LevelShapes levels, const TileLayout tiles, const TileBins bins) {
  constexpr int kItems = kTileAccumFloats / kTileThreads / C;  // (pixel, C channels) items per thread
  extern __shared__ __align__(16) unsigned char tile_smem[];
  TileRecord* records = reinterpret_cast<TileRecord*>(tile_smem);                          // [4 * kTileThreads]
  int* head = reinterpret_cast<int*>(tile_smem + sizeof(TileRecord) * 4 * kTileThreads);  // [tile_pixels]

  const int H = static_cast<int>(sizes.num_heads), D = static_cast<int>(sizes.head_dim);
  const int L = static_cast<int>(sizes.num_levels), P = static_cast<int>(sizes.num_points);
  const int Q = static_cast<int>(sizes.num_queries);
  const int64_t bin = blockIdx.x;
  const int tile = static_cast<int>(bin % tiles.total_tiles);
  const int64_t bh = bin / tiles.total_tiles;
  const int h = static_cast<int>(bh % H);
  const int64_t b = bh / H;
  int l = 0;
  while (tile >= tiles.first_tile[l + 1]) ++l;
  const int height = levels.height[l], width = levels.width[l];
  const int first_pixel = (tile - tiles.first_tile[l]) * tiles.tile_pixels;
  const int num_pixels = min(tiles.tile_pixels, height * width - first_pixel);
  const int chunks = D / C;

  float sum[kItems][C];
#pragma unroll
  for (int k = 0; k < kItems; ++k) {
#pragma unroll
    for (int j = 0; j < C; ++j) sum[k][j] = 0.f;
  }
  const int* offsets = bins.offsets + bh * (tiles.total_tiles + 1) + tile;
  const int* bin_entries = bins.entries + bh * bins.entries_per_head + offsets[0];
  const int num_entries = offsets[1] - offsets[0];
  for (int base = 0; base < num_entries; base += kTileThreads) {
    for (int px = threadIdx.x; px < num_pixels; px += blockDim.x) head[px] = -1;
    __syncthreads();
    const int e = base + static_cast<int>(threadIdx.x);
    if (e < num_entries) {
      const int packed = bin_entries[e];
      const int i = packed >> 4, q = i / P, p = i - q * P;
      const int64_t entry = ((b * Q + q) * H + h) * L * P + l * P + p;
      const Vec<coord_t, 2> xy = *reinterpret_cast<const Vec<coord_t, 2>*>(sampling_locations + 2 * entry);
      const auto s = make_bilinear_sample<float>(to_acc<float>(xy.v[0]), to_acc<float>(xy.v[1]), height, width);
      const float a = to_acc<float>(attention_weights[entry]);
      const float corner_weight[4] = {(1 - s.fx) * (1 - s.fy), s.fx * (1 - s.fy), (1 - s.fx) * s.fy, s.fx * s.fy};
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        if (packed & (1 << k)) {
          const int r = 4 * static_cast<int>(threadIdx.x) + k;
          const int px = (s.y0 + k / 2) * width + s.x0 + k % 2 - first_pixel;
          records[r] = TileRecord{a * corner_weight[k], q, atomicExch(&head[px], r), 0};
        }
      }
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < kItems; ++k) {
      const int item = static_cast<int>(threadIdx.x) + k * kTileThreads;
      const int px = item / chunks, c = (item - px * chunks) * C;
      if (px >= num_pixels) continue;
      for (int r = head[px]; r >= 0;) {
        const TileRecord rec = records[r];
        float g[C];
        load_acc<scalar_t, C>(grad_output + ((b * Q + rec.query) * H + h) * D + c, g);
#pragma unroll
        for (int j = 0; j < C; ++j) sum[k][j] += rec.weight * g[j];
        r = rec.next;
      }
    }
    __syncthreads();  // before the next batch resets the lists
  }
  const int64_t row_stride = static_cast<int64_t>(H) * D;
  scalar_t* out = grad_value + (b * sizes.num_value + levels.start[l] + first_pixel) * row_stride + h * D;
#pragma unroll
  for (int k = 0; k < kItems; ++k) {
    const int item = static_cast<int>(threadIdx.x) + k * kTileThreads;
    const int px = item / chunks, c = (item - px * chunks) * C;
    if (px >= num_pixels) continue;
    Vec<scalar_t, C> v;
#pragma unroll
    for (int j = 0; j < C; ++j) v.v[j] = from_acc<scalar_t>(sum[k][j]);
    *reinterpret_cast<Vec<scalar_t, C>*>(out + px * row_stride + c) = v;
  }
}

// Which levels grad_value_tile_kernel makes: fp16/bf16 values, few samples per (b, h, level) (their
// index packs into 27 bits), and on the level few expected corner hits per tile (~4 corners per
// sample, spread evenly). fp32 values keep the atomics: they need no cast pass, and the tiles were
// slower for them (H100, decoder: 116 vs 88.8 us; 80.3 vs 75.9 us with the side stream).
bool plan_grad_value_tiles(const CudaArgs& args, TileLayout* tiles) {
  const Sizes& sz = args.sizes;
  *tiles = TileLayout{};
  const bool half_value = args.value_dtype == DType::kFloat16 || args.value_dtype == DType::kBFloat16;
  if (!half_value || sz.num_queries * sz.num_points > kTileMaxSamples ||
      sz.head_dim > kTileAccumFloats || sz.num_levels > kMaxLevels) {
    return false;
  }
  tiles->tile_pixels = static_cast<int>(kTileAccumFloats / sz.head_dim);
  int64_t total = 0;
  for (int l = 0; l < sz.num_levels; ++l) {
    tiles->first_tile[l] = static_cast<int>(total);
    const int64_t pixels = static_cast<int64_t>(args.levels.height[l]) * args.levels.width[l];
    const int64_t tile_pixels = std::min<int64_t>(tiles->tile_pixels, pixels);
    if (4 * sz.num_queries * sz.num_points * tile_pixels <= kTileMaxHits * pixels) {
      tiles->tiled_levels |= 1u << l;
      tiles->tiled_level[tiles->num_tiled_levels++] = l;
      total += (pixels + tiles->tile_pixels - 1) / tiles->tile_pixels;
    }
  }
  tiles->first_tile[sz.num_levels] = static_cast<int>(total);
  tiles->total_tiles = static_cast<int>(total);
  // The binning grid has a y block per (b, h), and its scatter scans a (b, h)'s bin counts in shared
  // memory. (A (b, h)'s bin entries, at most 4 per sample, are few enough for int offsets.)
  return total > 0 && total <= kTileMaxTilesPerHead && sz.batch * sz.num_heads <= 65535;
}

// Where the bins lie in backward_workspace, in ints from its start; every array starts on 16 bytes.
struct TileBinsPlacement {
  int64_t num_bins, cursor, offsets, entries, total_ints;
  int entries_per_head;
};

TileBinsPlacement place_tile_bins(const Sizes& sz, const TileLayout& tiles) {
  auto aligned_ints = [](int64_t count) { return (count + 3) / 4 * 4; };
  TileBinsPlacement place{};
  const int64_t heads = sz.batch * sz.num_heads;
  place.num_bins = heads * tiles.total_tiles;
  place.cursor = aligned_ints(place.num_bins);  // counts start at 0
  place.offsets = place.cursor + aligned_ints(place.num_bins);
  place.entries = place.offsets + aligned_ints(heads * (tiles.total_tiles + 1));
  place.entries_per_head = static_cast<int>(4 * tiles.num_tiled_levels * sz.num_queries * sz.num_points);
  place.total_ints = place.entries + heads * place.entries_per_head;
  return place;
}

template <typename scalar_t, typename coord_t>
int grad_value_by_tiles(const CudaArgs& args, const TileLayout& tiles, CudaStream stream) {
  const Sizes& sz = args.sizes;
  const TileBinsPlacement place = place_tile_bins(sz, tiles);
  int* workspace = static_cast<int*>(args.backward_workspace);
  const TileBins bins{workspace, workspace + place.cursor, workspace + place.offsets, workspace + place.entries,
                      place.num_bins, place.entries_per_head};
  // counts and cursor start at 0.
  int status = static_cast<int>(cudaMemsetAsync(bins.counts, 0, sizeof(int) * place.offsets, stream));
  if (status != cudaSuccess) return status;
  const auto coords = static_cast<const coord_t*>(args.sampling_locations);
  const dim3 bin_grid(blocks_for(tiles.num_tiled_levels * sz.num_queries * sz.num_points, kTileThreads),
                      static_cast<unsigned int>(sz.batch * sz.num_heads));
  bin_samples_kernel<coord_t, true><<<bin_grid, kTileThreads, 0, stream>>>(coords, sz, args.levels, tiles, bins);
  if ((status = static_cast<int>(cudaGetLastError())) != cudaSuccess) return status;
  bin_samples_kernel<coord_t, false><<<bin_grid, kTileThreads, sizeof(int) * (tiles.total_tiles + 1), stream>>>(
      coords, sz, args.levels, tiles, bins);
  if ((status = static_cast<int>(cudaGetLastError())) != cudaSuccess) return status;
  const size_t smem = sizeof(TileRecord) * 4 * kTileThreads + sizeof(int) * tiles.tile_pixels;  // records, heads
  auto kernel = sz.head_dim % 4 == 0 ? grad_value_tile_kernel<scalar_t, coord_t, 4>
                                     : grad_value_tile_kernel<scalar_t, coord_t, 1>;
  kernel<<<static_cast<unsigned int>(bins.num_bins), kTileThreads, smem, stream>>>(
      static_cast<const scalar_t*>(args.grad_output), coords, static_cast<const coord_t*>(args.attention_weights),
      static_cast<scalar_t*>(args.grad_value), sz, args.levels, tiles, bins);
  return static_cast<int>(cudaGetLastError());
}

// ---- encoder backward: per-block sums of grad_value in shared memory ---------------------------
//
// backward_kernel above adds every corner of every sample to grad_value with its own fp32 atomic:
// 47 M 128-byte atomics on the 768x1152 encoder, which keep the H100's L2 ~87 % busy (ncu,
// 2026-11-24) and make the backward 6.8x the forward. In the encoder (Q == S: query i is pixel i
// of the flattened levels), a block's consecutive queries are neighbouring pixels of one row, and
// their samples land in a small window around the matching spot of every level. This kernel sums
// the contributions that land in that window per pixel in shared memory, then adds each touched
// pixel once. sm_90 has no native shared-memory fp32 atomic add (it compiles to a compare-and-swap
// loop), so the sum is made without float atomics: each in-window corner is pushed onto its pixel's
// linked list (an integer atomicExch), and after one barrier a thread per (pixel, 4 channels)
// walks the list. Corners outside the window are added directly, as in backward_kernel.
//
// Layout: kEncoderLanes lanes per sample (lane k: channels [k*D/lanes, (k+1)*D/lanes) and the
// bookkeeping of corners k*4/lanes ...), kEncoderSamples samples = Qb queries x P points per block,
// one (b, h) per block.
// Tuning knobs (compile definitions; tools/device/msda_variants.sh times builds side by side).
// Measured on an H100 (2026-11-24, encoder 768x1152, fp16/fp32 backward): 2 lanes x 64 samples
// 1511/1750 us; 2 x 128: 1547/1806; 2 x 32: 1604/1918; 4 x 128: 1922/2032; 1 x 128: 1755/2352;
// margin 5 / 8 instead of 6: 1547 / 1524 us (fp16). Later (session 6, 1280x1920 fp16): 8 channels
// per flushing thread instead of 4 took 5026 vs 4033 us; 10 / 12 resident blocks per SM (48 / 40
// registers, with spills) 4445-4459 / 5441-5450 vs 4029-4045 us. Session 7: the accumulator's
// zero-fill and the cast done by the blocks themselves, pair by pair with done counters and ticket
// order, 5162 vs 4034 us (fp32, no cast: 5428 vs 4605): the fences and counter round trips cost each
// ~40 us block ~9 us, more than the memset and cast they replace (BENCHMARKS.md). Also session 7:
// the kernel in two launches of half the pairs, the second half's zero-fill and the first half's
// cast on the side stream beside them: 4246 vs 4036 us (they slow the kernel beside them).
#ifndef CODETR_MSDA_ENCODER_SAMPLES
#define CODETR_MSDA_ENCODER_SAMPLES 64
#endif
#ifndef CODETR_MSDA_ENCODER_LANES
#define CODETR_MSDA_ENCODER_LANES 2
#endif
#ifndef CODETR_MSDA_ENCODER_MARGIN
#define CODETR_MSDA_ENCODER_MARGIN 6
#endif
constexpr int kEncoderSamples = CODETR_MSDA_ENCODER_SAMPLES;
constexpr int kEncoderLanes = CODETR_MSDA_ENCODER_LANES;  // lanes per sample: 1, 2 or 4
constexpr int kEncoderCorners = 4 / kEncoderLanes;        // corners each lane books
constexpr int kEncoderThreads = kEncoderLanes * kEncoderSamples;
// 1024 resident threads per SM: at most 64 registers.
constexpr int kEncoderMinBlocks = 1024 / kEncoderThreads;
constexpr int kEncoderWindowSlots = 1024;  // window pixels per level
// Window margin in pixels of the sampled level: sampling offsets beyond it are added directly.
constexpr int kEncoderWindowMargin = CODETR_MSDA_ENCODER_MARGIN;
constexpr int kEncoderGradOutBytes = 16384;

struct EncoderLayout {
  int queries_per_block;  // Qb
  int64_t blocks_per_head;
};

struct alignas(16) Window {  // 16-byte aligned: one shared-memory load per level
  int x0, y0, width, height;  // in pixels of the sampled level; width * height <= kEncoderWindowSlots
};

// Byte offsets of encoder_backward_kernel's shared-memory arrays (the launch sizes the allocation
// with `bytes`): grad_output rows [Qb][D] float | per-level windows [kMaxLevels] | corner records
// [4N] int4 | list heads [2][kEncoderWindowSlots] int | touched pixels [2][4N] int | touched counts
// [2] int. Heads, touched lists and counts are double-buffered by level parity so that one level's
// lists are cleared while the next level fills the other buffer.
struct EncoderShared {
  size_t windows, records, heads, touched, touched_count, bytes;
  __host__ __device__ EncoderShared(int Qb, int D, int N) {
    windows = sizeof(float) * Qb * D;  // D % 8 == 0: 16-byte aligned
    records = windows + sizeof(Window) * kMaxLevels;
    heads = records + sizeof(int4) * 4 * N;
    touched = heads + sizeof(int) * 2 * kEncoderWindowSlots;
    touched_count = touched + sizeof(int) * 2 * 4 * N;
    bytes = touched_count + sizeof(int) * 2;
  }
};

// a[j] for a runtime j < 4 through selects: indexing a register array with a lane-dependent j
// would move the array to local memory.
template <typename T>
__device__ __forceinline__ T pick4(const T (&a)[4], int j) {
  return j == 0 ? a[0] : j == 1 ? a[1] : j == 2 ? a[2] : a[3];
}

// Where a block's queries sit: a run [col_first, col_last] of one row of level `level` (only the
// part of them in the first query's row: a block that straddles a row end adds the rest directly).
struct QueryRun {
  int level, row, col_first, col_last;
};

__device__ __forceinline__ QueryRun query_run(int64_t q_first, int64_t q_last, const LevelShapes& levels) {
  int lq = 0;
  while (lq + 1 < levels.num_levels && q_first >= levels.start[lq + 1]) ++lq;
  const int wq = levels.width[lq];
  const int first = static_cast<int>(q_first - levels.start[lq]);  // < S < 2^31
  const int row = first / wq;
  const int64_t last = q_last - levels.start[lq] - static_cast<int64_t>(row) * wq;
  return {lq, row, first - row * wq, static_cast<int>(min(last, static_cast<int64_t>(wq - 1)))};
}

// The run's window on level l: its pixels mapped to level l, plus kEncoderWindowMargin, cut to the
// map and to kEncoderWindowSlots pixels.
__device__ __forceinline__ Window encoder_window(const QueryRun& run, int l, const LevelShapes& levels) {
  const int w = levels.width[l], h = levels.height[l];
  const float sx = static_cast<float>(w) / levels.width[run.level];
  const float sy = static_cast<float>(h) / levels.height[run.level];
  int x_lo = static_cast<int>(floorf((run.col_first + 0.5f) * sx - 0.5f)) - kEncoderWindowMargin;
  int x_hi = static_cast<int>(floorf((run.col_last + 0.5f) * sx - 0.5f)) + 1 + kEncoderWindowMargin;
  const int y_centre = static_cast<int>(floorf((run.row + 0.5f) * sy - 0.5f));
  int y_lo = y_centre - kEncoderWindowMargin, y_hi = y_centre + 1 + kEncoderWindowMargin;
  x_lo = max(x_lo, 0), y_lo = max(y_lo, 0), x_hi = min(x_hi, w - 1), y_hi = min(y_hi, h - 1);
  Window win{x_lo, y_lo, max(x_hi - x_lo + 1, 0), max(y_hi - y_lo + 1, 0)};
  if (win.width > kEncoderWindowSlots) {
    win.x0 += (win.width - kEncoderWindowSlots) / 2, win.width = kEncoderWindowSlots;
  }
  if (win.width * win.height > kEncoderWindowSlots) {
    const int rows = kEncoderWindowSlots / win.width;
    win.y0 += (win.height - rows) / 2, win.height = rows;
  }
  return win;
}

template <typename scalar_t, typename coord_t, int V>
__global__ void __launch_bounds__(kEncoderThreads, kEncoderMinBlocks)
    encoder_backward_kernel(const scalar_t* __restrict__ grad_output, const scalar_t* __restrict__ value,
                            const coord_t* __restrict__ sampling_locations,
                            const coord_t* __restrict__ attention_weights, float* __restrict__ grad_value_accum,
                            coord_t* __restrict__ grad_sampling_locations,
                            coord_t* __restrict__ grad_attention_weights, const Sizes sizes,
                            const LevelShapes levels, const EncoderLayout layout) {
  extern __shared__ __align__(16) unsigned char encoder_smem[];
  const int D = static_cast<int>(sizes.head_dim), L = static_cast<int>(sizes.num_levels);
  const int P = static_cast<int>(sizes.num_points), H = static_cast<int>(sizes.num_heads);
  const int64_t Q = sizes.num_queries;
  const int Qb = layout.queries_per_block, N = Qb * P;
  const EncoderShared shared(Qb, D, N);
  float* grad_out_s = reinterpret_cast<float*>(encoder_smem);
  Window* windows = reinterpret_cast<Window*>(encoder_smem + shared.windows);
  // A corner on a window pixel's list: (attn * bilinear weight as float bits, offset of its query's
  // grad_output row, next corner on the list or -1, unused); one 16-byte shared load in the walk.
  int4* record = reinterpret_cast<int4*>(encoder_smem + shared.records);
  int* heads = reinterpret_cast<int*>(encoder_smem + shared.heads);
  int* touched = reinterpret_cast<int*>(encoder_smem + shared.touched);
  int* touched_count = reinterpret_cast<int*>(encoder_smem + shared.touched_count);

  const int64_t bh = blockIdx.x / layout.blocks_per_head;
  const int64_t q_begin = (blockIdx.x % layout.blocks_per_head) * Qb;
  const int64_t q_last = min(q_begin + Qb, Q) - 1;
  const int64_t b = bh / H;
  const int h = static_cast<int>(bh % H);
  const int t = threadIdx.x;
  for (int i = t; i < Qb * D; i += kEncoderThreads) {
    const int64_t q = q_begin + i / D;
    grad_out_s[i] = q < Q ? to_float(grad_output[((b * Q + q) * H + h) * D + i % D]) : 0.f;
  }
  for (int i = t; i < 2 * kEncoderWindowSlots; i += kEncoderThreads) heads[i] = -1;
  if (t < 2) touched_count[t] = 0;
  const QueryRun run = query_run(q_begin, q_last, levels);
  if (t < L) windows[t] = encoder_window(run, t, levels);
  __syncthreads();

  const int row_stride = H * D;
  const int64_t bh_offset = b * sizes.num_value * row_stride + h * D;
  const int k = t % kEncoderLanes;  // lane within the sample: its channel part and corners
  const int sample = t / kEncoderLanes;
  const int q_local = sample / P, p = sample % P;
  const int64_t q = q_begin + q_local;
  const bool active = sample < N && q < Q;
  const int part = D / kEncoderLanes, c_begin = k * part;
  const float* g = grad_out_s + q_local * D;
  const int64_t lp_base = ((b * Q + q) * H + h) * L * P + p;
  // Flush mapping, fixed for the block: thread -> (first window pixel, 4-channel chunk).
  const int chunks = D / 4;  // float4 chunks of a grad_value row
  const int slot_step = kEncoderThreads / chunks;
  const int flush_slot = t / chunks, flush_channel = (t % chunks) * 4;
  int previous_touched = 0;  // pixels touched on the previous level

  for (int l = 0; l < L; ++l) {
    const int height = levels.height[l], width = levels.width[l];
    const scalar_t* value_level = value + bh_offset + levels.start[l] * row_stride;
    float* accum_level = grad_value_accum + bh_offset + levels.start[l] * row_stride;
    const Window win = windows[l];
    const int cur = l & 1, other = cur ^ 1;
    int* head = heads + cur * kEncoderWindowSlots;
    int* touched_cur = touched + cur * 4 * N;
    // Level l - 1's buffer was walked before the last barrier: clear it for level l + 1.
    for (int i = t; i < previous_touched; i += kEncoderThreads) {
      heads[other * kEncoderWindowSlots + touched[other * 4 * N + i]] = -1;
    }
    if (t == 0) touched_count[other] = 0;

    const int64_t lp_index = lp_base + l * P;
    float a = 0.f;
    BilinearSample<float> s{};
    if (active) {
      const Vec<coord_t, 2> xy = *reinterpret_cast<const Vec<coord_t, 2>*>(sampling_locations + 2 * lp_index);
      s = make_bilinear_sample<float>(to_float(xy.v[0]), to_float(xy.v[1]), height, width);
      a = to_float(attention_weights[lp_index]);
    }
    int pixel[4];
    float bilinear[4];
    corner_offsets_and_weights(s, 1.f, height, width, 1, pixel, bilinear);
    // G_j = sum_c grad_out[c] * value_j[c] per corner j; the three gradients are linear in them:
    // grad_attn = sum_j bilinear_j G_j, d/dx = (1-fy)(G1-G0) + fy(G3-G2), d/dy = (1-fx)(G2-G0) + fx(G3-G1)
    // (4 FMAs per channel instead of 12).
    float G[4] = {0.f, 0.f, 0.f, 0.f};
    if (s.inside) {
#pragma unroll 1  // one chunk's 4 loads in flight; unrolled, the chunks' loads spill (64 registers)
      for (int c = c_begin; c < c_begin + part; c += V) {
        float gc[V];
        if constexpr (V % 4 == 0) {  // c is a multiple of V: 16-byte aligned shared loads
#pragma unroll
          for (int i = 0; i < V; i += 4) *reinterpret_cast<float4*>(gc + i) = *reinterpret_cast<const float4*>(g + c + i);
        } else {
#pragma unroll
          for (int i = 0; i < V; ++i) gc[i] = g[c + i];
        }
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          float v[V];
          load_acc<scalar_t, V>(value_level + pixel[j] * row_stride + c, v);
#pragma unroll
          for (int i = 0; i < V; ++i) G[j] += gc[i] * v[i];
        }
      }
    }
    // A sample's lanes are adjacent lanes of one warp; every lane of the block gets here.
#pragma unroll
    for (int offset = 1; offset < kEncoderLanes; offset <<= 1) {
#pragma unroll
      for (int j = 0; j < 4; ++j) G[j] += __shfl_xor_sync(0xffffffffu, G[j], offset);
    }
#pragma unroll
    for (int j = 0; j < 4; ++j) G[j] = s.valid[j] ? G[j] : 0.f;  // clamped loads of off-map corners read 0
    if (active) {
      if (k == 0) {
        const float grad_a = bilinear[0] * G[0] + bilinear[1] * G[1] + bilinear[2] * G[2] + bilinear[3] * G[3];
        grad_attention_weights[lp_index] = from_acc<coord_t>(grad_a);
      }
      if (k == kEncoderLanes - 1) {
        // x = loc_x * width - 0.5, so d/d loc_x = width * d/dx (likewise y).
        const float grad_fx = (1.f - s.fy) * (G[1] - G[0]) + s.fy * (G[3] - G[2]);
        const float grad_fy = (1.f - s.fx) * (G[2] - G[0]) + s.fx * (G[3] - G[1]);
        grad_sampling_locations[2 * lp_index] = from_acc<coord_t>(a * grad_fx * static_cast<float>(width));
        grad_sampling_locations[2 * lp_index + 1] = from_acc<coord_t>(a * grad_fy * static_cast<float>(height));
      }
    }
    // This lane's corners j = k * kEncoderCorners + m: onto their window pixel's list, or added
    // directly by the sample's lanes together (each its channel part: coalesced 16-byte atomics).
    const int lane = t & 31;
    const int group_base = lane & ~(kEncoderLanes - 1);  // first lane of this sample in the warp
#pragma unroll
    for (int m = 0; m < kEncoderCorners; ++m) {
      const int j = k * kEncoderCorners + m;
      const int corner = 4 * sample + j;
      const int cx = s.x0 + (j & 1), cy = s.y0 + (j >> 1);
      const bool valid = pick4(s.valid, j);
      const bool in_window = valid && cx >= win.x0 && cx < win.x0 + win.width && cy >= win.y0 &&
                             cy < win.y0 + win.height;
      const int slot = (cy - win.y0) * win.width + cx - win.x0;
      int previous = 0;
      if (in_window) {
        const float w = a * pick4(bilinear, j);
        previous = atomicExch(&head[slot], corner);
        record[corner] = make_int4(__float_as_int(w), q_local * D, previous, 0);
      }
      // First corner on a pixel: append the pixel to the touched list (one counter atomic per warp).
      const unsigned first = __ballot_sync(0xffffffffu, in_window && previous < 0);
      if (first != 0) {
        int base = 0;
        if (lane == __ffs(first) - 1) base = atomicAdd(&touched_count[cur], __popc(first));
        base = __shfl_sync(0xffffffffu, base, __ffs(first) - 1);
        if (first & (1u << lane)) touched_cur[base + __popc(first & ((1u << lane) - 1))] = slot;
      }
      const unsigned direct = __ballot_sync(0xffffffffu, valid && !in_window);
#pragma unroll
      for (int r = 0; r < kEncoderLanes; ++r) {
        if (direct & (1u << (group_base + r))) {
          const int jr = r * kEncoderCorners + m;  // the corner lane r booked
          const float w = a * pick4(bilinear, jr);
          float* dst = accum_level + pick4(pixel, jr) * row_stride + c_begin;
          for (int c = 0; c + 4 <= part; c += 4) {
            const float x[4] = {w * g[c_begin + c], w * g[c_begin + c + 1], w * g[c_begin + c + 2], w * g[c_begin + c + 3]};
            atomic_add_vec<4>(dst + c, x);
          }
        }
      }
    }
    __syncthreads();
    // One thread per (window pixel, 4 channels): walk the pixel's list, one atomic for the sum.
    previous_touched = touched_count[cur];
    const int num_touched = flush_slot < slot_step ? previous_touched : 0;  // t past whole chunks idle
    for (int i = flush_slot; i < num_touched; i += slot_step) {
      const int pixel_slot = touched_cur[i];
      int e = head[pixel_slot];
      // Before the walk, so that the division overlaps the list's shared-memory latency.
      const int window_row = pixel_slot / win.width;
      const int pixel_index = (win.y0 + window_row) * width + win.x0 + pixel_slot - window_row * win.width;
      float sum[4] = {0.f, 0.f, 0.f, 0.f};
      do {
        const int4 r = record[e];
        const float w = __int_as_float(r.x);
        const float4 gv = *reinterpret_cast<const float4*>(grad_out_s + r.y + flush_channel);
        sum[0] += w * gv.x, sum[1] += w * gv.y, sum[2] += w * gv.z, sum[3] += w * gv.w;
        e = r.z;
      } while (e >= 0);
      atomic_add_vec<4>(accum_level + pixel_index * row_stride + flush_channel, sum);
    }
    __syncthreads();
  }
}

template <typename T>
struct Tag {
  using type = T;
};

// Calls f(Tag<scalar_t>, Tag<coord_t>) for the runtime dtypes (the binding has validated them).
template <typename F>
int dispatch_dtypes(DType value_dtype, DType coord_dtype, F&& f) {
  const bool fp32_coords = coord_dtype == DType::kFloat32;
  switch (value_dtype) {
    case DType::kFloat32:
      return f(Tag<float>{}, Tag<float>{});
    case DType::kFloat16:
      return fp32_coords ? f(Tag<__half>{}, Tag<float>{}) : f(Tag<__half>{}, Tag<__half>{});
    case DType::kBFloat16:
      return fp32_coords ? f(Tag<__nv_bfloat16>{}, Tag<float>{})
                         : f(Tag<__nv_bfloat16>{}, Tag<__nv_bfloat16>{});
    case DType::kFloat64:
      return fp32_coords ? f(Tag<double>{}, Tag<float>{}) : f(Tag<double>{}, Tag<double>{});
  }
  return static_cast<int>(cudaErrorInvalidValue);
}

template <int V>
using Width = std::integral_constant<int, V>;

template <typename scalar_t, typename F>
int dispatch_width(int V, F&& f) {
  switch (V) {
    case 8:
      if constexpr (8 * sizeof(scalar_t) <= 16) return f(Width<8>{});
      break;
    case 4:
      if constexpr (4 * sizeof(scalar_t) <= 16) return f(Width<4>{});
      break;
    case 2:
      return f(Width<2>{});
    case 1:
      return f(Width<1>{});
  }
  return static_cast<int>(cudaErrorInvalidValue);
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

// Widest V the pointers' alignment allows, then lanes = next power of two >= D/V.
// max_lane_bytes: 16 for the forward; kBackwardLaneBytes for the backward, also 16 since its
// decoder calls moved their large levels to output tiles. 8 (twice the threads, to hide the latency
// of grad_value atomics) was faster when every corner went through atomics; on the H100 (session 5,
// decoder, side stream) 16 took fp32 from 85.4 to 73.8 us and fp16 from 81.9 to 80.1 us.
bool plan(const CudaArgs& args, std::initializer_list<const void*> vector_pointers, size_t max_lane_bytes,
          int* V, GroupLayout* layout) {
  const size_t elem = dtype_size(args.value_dtype);
  const int64_t D = args.sizes.head_dim;
  for (int width = 8; width >= 1; width /= 2) {
    if (width * elem > 16 || D % width != 0 || D / width > 32) continue;
    if (width > 1 && width * elem > max_lane_bytes && D / (width / 2) <= 32) continue;
    bool ok = true;
    for (const void* p : vector_pointers) ok = ok && aligned(p, width * elem);
    if (!ok) continue;
    int lanes_log2 = 0;
    while ((int64_t{1} << lanes_log2) < D / width) ++lanes_log2;
    *V = width;
    layout->lanes_log2 = lanes_log2;
    layout->num_groups = args.sizes.batch * args.sizes.num_queries * args.sizes.num_heads;
    return true;
  }
  return false;
}

unsigned int num_blocks(const GroupLayout& layout, int threads_per_block) {
  return blocks_for(layout.num_groups << layout.lanes_log2, threads_per_block);
}

}  // namespace

int cuda_channels_per_thread(int64_t head_dim, DType value_dtype) {
  const size_t elem = dtype_size(value_dtype);
  for (int width = 8; width >= 1; width /= 2) {
    if (width * elem <= 16 && head_dim % width == 0 && head_dim / width <= 32) return width;
  }
  return 0;
}

int forward_cuda(const CudaArgs& args, CudaStream stream) {
  int V = 0;
  GroupLayout layout{};
  if (!plan(args, {args.value, args.output}, 16, &V, &layout)) return static_cast<int>(cudaErrorInvalidValue);
  if (layout.num_groups == 0 || args.sizes.head_dim == 0) return static_cast<int>(cudaSuccess);
  return dispatch_dtypes(args.value_dtype, args.coord_dtype, [&](auto scalar_tag, auto coord_tag) {
    using scalar_t = typename decltype(scalar_tag)::type;
    using coord_t = typename decltype(coord_tag)::type;
    return dispatch_width<scalar_t>(V, [&](auto width) {
      constexpr int kV = decltype(width)::value;
      // Deformable-DETR models use 4 points: that case gets a fully unrolled point loop.
      auto kernel = args.sizes.num_points == 4 ? forward_kernel<scalar_t, coord_t, kV, 4>
                                               : forward_kernel<scalar_t, coord_t, kV, 0>;
      kernel<<<num_blocks(layout, kForwardThreadsPerBlock), kForwardThreadsPerBlock, 0, stream>>>(
          static_cast<const scalar_t*>(args.value), static_cast<const coord_t*>(args.sampling_locations),
          static_cast<const coord_t*>(args.attention_weights), static_cast<scalar_t*>(args.output),
          args.sizes, args.levels, layout);
      return static_cast<int>(cudaGetLastError());
    });
  });
}

// The encoder kernel's conditions: queries are the value's own pixels (Q == S), fp32 accumulation,
// whole float4 chunks per lane (D % (4 * lanes) == 0) and a block holds at least one query's samples.
bool plan_encoder_backward(const CudaArgs& args, int* V, EncoderLayout* layout) {
  const Sizes& sz = args.sizes;
  if (sz.num_queries != sz.num_value || args.value_dtype == DType::kFloat64 || sz.head_dim % (4 * kEncoderLanes) != 0 ||
      sz.num_points > kEncoderSamples) {
    return false;
  }
  const size_t elem = dtype_size(args.value_dtype);
  const int64_t part = sz.head_dim / kEncoderLanes;
  *V = 1;
  for (int width = 8; width > 1; width /= 2) {
    if (width * elem <= 16 && part % width == 0 && aligned(args.value, width * elem)) {
      *V = width;
      break;
    }
  }
  layout->queries_per_block = static_cast<int>(std::min<int64_t>(
      kEncoderSamples / sz.num_points, std::max<int64_t>(1, kEncoderGradOutBytes / (4 * sz.head_dim))));
  layout->blocks_per_head = (sz.num_queries + layout->queries_per_block - 1) / layout->queries_per_block;
  return sz.batch * sz.num_heads * layout->blocks_per_head <= INT32_MAX;
}

namespace {

// Calls f(first_element, num_elements) for every run of consecutive levels in `level_mask`, per
// batch entry: the grad_value rows of those levels are contiguous there.
template <typename F>
int for_each_level_run(const CudaArgs& args, unsigned int level_mask, F&& f) {
  const Sizes& sz = args.sizes;
  const int64_t row = sz.num_heads * sz.head_dim;
  for (int64_t b = 0; b < sz.batch; ++b) {
    for (int l = 0; l < sz.num_levels;) {
      if (!((level_mask >> l) & 1u)) {
        ++l;
        continue;
      }
      int end = l;
      int64_t pixels = 0;
      while (end < sz.num_levels && ((level_mask >> end) & 1u)) {
        pixels += static_cast<int64_t>(args.levels.height[end]) * args.levels.width[end];
        ++end;
      }
      const int status = f((b * sz.num_value + args.levels.start[l]) * row, pixels * row);
      if (status != cudaSuccess) return status;
      l = end;
    }
  }
  return static_cast<int>(cudaSuccess);
}

// grad_value = the fp32 accumulator cast to value's dtype, for elements [first, first + count).
template <typename scalar_t, typename acc_t>
int cast_grad_value(const CudaArgs& args, int64_t first, int64_t count, CudaStream stream) {
  if (args.grad_value == args.grad_value_accum || count == 0) return static_cast<int>(cudaSuccess);
  auto launch = [&](auto chunk) {
    constexpr int kC = decltype(chunk)::value;
    cast_grad_value_kernel<scalar_t, acc_t, kC><<<blocks_for(count / kC, kBackwardThreadsPerBlock),
                                                   kBackwardThreadsPerBlock, 0, stream>>>(
        static_cast<const acc_t*>(args.grad_value_accum) + first, static_cast<scalar_t*>(args.grad_value) + first,
        count / kC);
    return static_cast<int>(cudaGetLastError());
  };
  return first % 4 == 0 && count % 4 == 0 ? launch(Width<4>{}) : launch(Width<1>{});
}

// Whether backward_cuda uses the caller's side stream (tools/device/msda_variants.sh times both).
#ifndef CODETR_MSDA_SIDE_STREAM
#define CODETR_MSDA_SIDE_STREAM 1
#endif
constexpr bool kUseSideStream = CODETR_MSDA_SIDE_STREAM != 0;

int fork_side_stream(const CudaSideStream& side, CudaStream stream) {
  int status = static_cast<int>(cudaEventRecord(side.fork, stream));
  if (status == cudaSuccess) status = static_cast<int>(cudaStreamWaitEvent(side.stream, side.fork, 0));
  return status;
}

// Joins the side stream back into `stream` whatever `status` the work between fork and join ended
// with (its launches may already be queued), and returns the first error.
int join_side_stream(const CudaSideStream& side, CudaStream stream, int status) {
  int joined = static_cast<int>(cudaEventRecord(side.join, side.stream));
  if (joined == cudaSuccess) joined = static_cast<int>(cudaStreamWaitEvent(stream, side.join, 0));
  return status != cudaSuccess ? status : joined;
}

}  // namespace

size_t backward_cuda_workspace_bytes(const CudaArgs& args) {
  int encoder_V = 0;
  EncoderLayout encoder{};
  TileLayout tiles{};
  if (plan_encoder_backward(args, &encoder_V, &encoder) || !plan_grad_value_tiles(args, &tiles)) return 0;
  return sizeof(int) * static_cast<size_t>(place_tile_bins(args.sizes, tiles).total_ints);
}

int backward_cuda(const CudaArgs& args, CudaStream stream, const CudaSideStream& side) {
  const Sizes& sz = args.sizes;
  const int64_t elements = sz.batch * sz.num_value * sz.num_heads * sz.head_dim;
  const size_t accum_bytes = static_cast<size_t>(elements) * (args.value_dtype == DType::kFloat64 ? 8 : 4);
  int V = 0;
  GroupLayout layout{};
  if (!plan(args, {args.value, args.grad_output}, kBackwardLaneBytes, &V, &layout)) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  if (accum_bytes == 0) return static_cast<int>(cudaSuccess);
  int encoder_V = 0;
  EncoderLayout encoder{};
  const bool use_encoder_kernel = plan_encoder_backward(args, &encoder_V, &encoder);
  return dispatch_dtypes(args.value_dtype, args.coord_dtype, [&](auto scalar_tag, auto coord_tag) {
    using scalar_t = typename decltype(scalar_tag)::type;
    using coord_t = typename decltype(coord_tag)::type;
    using acc_t = acc_type_t<scalar_t>;
    int status = static_cast<int>(cudaSuccess);
    if constexpr (std::is_same_v<acc_t, float>) {
      if (use_encoder_kernel) {
        status = static_cast<int>(cudaMemsetAsync(args.grad_value_accum, 0, accum_bytes, stream));
        if (status != cudaSuccess) return status;
        status = dispatch_width<scalar_t>(encoder_V, [&](auto width) {
          constexpr int kV = decltype(width)::value;
          const int Qb = encoder.queries_per_block;
          const int D = static_cast<int>(sz.head_dim);
          const size_t smem = EncoderShared(Qb, D, Qb * static_cast<int>(sz.num_points)).bytes;
          const int64_t blocks = sz.batch * sz.num_heads * encoder.blocks_per_head;
          encoder_backward_kernel<scalar_t, coord_t, kV>
              <<<static_cast<unsigned int>(blocks), kEncoderThreads, smem, stream>>>(
              static_cast<const scalar_t*>(args.grad_output), static_cast<const scalar_t*>(args.value),
              static_cast<const coord_t*>(args.sampling_locations),
              static_cast<const coord_t*>(args.attention_weights), static_cast<float*>(args.grad_value_accum),
              static_cast<coord_t*>(args.grad_sampling_locations),
              static_cast<coord_t*>(args.grad_attention_weights), sz, args.levels, encoder);
          return static_cast<int>(cudaGetLastError());
        });
        return status != cudaSuccess ? status : cast_grad_value<scalar_t, acc_t>(args, 0, elements, stream);
      }
    }
    GroupLayout per_sample = layout;
    per_sample.num_groups = layout.num_groups * sz.num_levels * sz.num_points;
    // grad_loc and grad_attn of every sample, and grad_value of `accumulate_levels` through atomics
    // into their zero-filled accumulator rows, cast back afterwards.
    auto backward_by_samples = [&](unsigned int accumulate_levels) {
      int result = for_each_level_run(args, accumulate_levels, [&](int64_t first, int64_t count) {
        return static_cast<int>(cudaMemsetAsync(static_cast<acc_t*>(args.grad_value_accum) + first, 0,
                                                count * sizeof(acc_t), stream));
      });
      if (result != cudaSuccess) return result;
      result = per_sample.num_groups == 0 ? result : dispatch_width<scalar_t>(V, [&](auto width) {
        constexpr int kV = decltype(width)::value;
        auto launch = [&](auto index_tag) {
          using index_t = typename decltype(index_tag)::type;
          backward_kernel<scalar_t, coord_t, index_t, kV>
              <<<num_blocks(per_sample, kBackwardThreadsPerBlock), kBackwardThreadsPerBlock, 0, stream>>>(
              static_cast<const scalar_t*>(args.grad_output), static_cast<const scalar_t*>(args.value),
              static_cast<const coord_t*>(args.sampling_locations),
              static_cast<const coord_t*>(args.attention_weights), static_cast<acc_t*>(args.grad_value_accum),
              static_cast<coord_t*>(args.grad_sampling_locations),
              static_cast<coord_t*>(args.grad_attention_weights), sz, args.levels, per_sample, accumulate_levels);
          return static_cast<int>(cudaGetLastError());
        };
        // 2 * sample + 1 (the grad_loc entry) must fit the index type.
        return per_sample.num_groups <= INT32_MAX ? launch(Tag<uint32_t>{}) : launch(Tag<int64_t>{});
      });
      if (result != cudaSuccess) return result;
      return for_each_level_run(args, accumulate_levels, [&](int64_t first, int64_t count) {
        return cast_grad_value<scalar_t, acc_t>(args, first, count, stream);
      });
    };
    const unsigned int all_levels = sz.num_levels >= 32 ? ~0u : (1u << sz.num_levels) - 1u;
    TileLayout tiles{};
    bool forked = false;
    if constexpr (std::is_same_v<scalar_t, __half> || std::is_same_v<scalar_t, __nv_bfloat16>) {  // tiles' dtypes
      if (plan_grad_value_tiles(args, &tiles)) {
        // The tiles share no buffer with the rest below: with a side stream they run beside it.
        forked = kUseSideStream && side.stream != nullptr;
        if (forked && (status = fork_side_stream(side, stream)) != cudaSuccess) return status;
        status = grad_value_by_tiles<scalar_t, coord_t>(args, tiles, forked ? side.stream : stream);
      }
    }
    if (status == cudaSuccess) status = backward_by_samples(all_levels & ~tiles.tiled_levels);
    return forked ? join_side_stream(side, stream, status) : status;
  });
}

}  // namespace msda
}  // namespace codetr
