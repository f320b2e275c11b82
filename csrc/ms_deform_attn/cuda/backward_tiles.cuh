#pragma once
// The decoder backward for grad_value by output tiles (see the section comment below). Chosen by
// plan_grad_value_tiles: fp16/bf16 values and few samples per (b, h, level), per level.

#include "ms_deform_attn/cuda/backward_samples.cuh"

namespace codetr {
namespace msda {
namespace {

// ---- decoder backward: grad_value gathered per output tile ---------------------------------------
//
// With few samples per (b, h, level) (the decoder: Q = 900 queries x 4 points) and fp16/bf16 values,
// backward_kernel spends most of the backward on its dense fp32 accumulator: zero-filling it and
// casting it back cost over half of the decoder's backward, while the samples touch ~1/3 of its
// rows. Instead, the large levels are cut into tiles of pixels. Two small
// kernels sort the samples into per-(b, h, tile) bins (count, then scatter; a sample whose
// corners straddle tiles goes into each); then one block per tile puts its bin's corners on
// per-pixel lists in shared memory, sums them in registers (fp32) and writes the whole tile of
// grad_value once, in value's dtype, zeros included: no memset, no global atomics, no cast. A
// tile's hits are summed by one block, so only levels with few expected hits per tile are tiled;
// the small levels keep backward_kernel's atomics into a zero-filled accumulator, which is small
// for them.

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
// slower for them.
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


}  // namespace
}  // namespace msda
}  // namespace codetr
