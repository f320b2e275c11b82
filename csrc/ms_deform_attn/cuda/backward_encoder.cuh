#pragma once
// The encoder backward for grad_value by per-block window sums (see the section comment below).
// Chosen by plan_encoder_backward: queries are the value's own pixels (Q == S), fp32 accumulation.

#include "ms_deform_attn/cuda/backward_samples.cuh"

namespace codetr {
namespace msda {
namespace {

// ---- encoder backward: per-block sums of grad_value in shared memory ---------------------------
//
// backward_kernel above adds every corner of every sample to grad_value with its own fp32 atomic:
// 47 M 128-byte atomics on the 768x1152 encoder, which keep L2 busy most of the time and make the
// backward several times the forward. In the encoder (Q == S: query i is pixel i
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

constexpr int kEncoderCorners = 4 / kEncoderLanes;  // corners each lane books
constexpr int kEncoderThreads = kEncoderLanes * kEncoderSamples;
// 1024 resident threads per SM: at most 64 registers.
constexpr int kEncoderMinBlocks = 1024 / kEncoderThreads;

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


}  // namespace
}  // namespace msda
}  // namespace codetr
