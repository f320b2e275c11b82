// CUDA launchers for multi-scale deformable attention (contract: ms_deform_attn.h): planning and
// dispatch over dtypes and vector widths. The kernels, by job: cuda/forward.cuh, cuda/backward_samples.cuh
// (every backward), cuda/backward_tiles.cuh (decoder grad_value), cuda/backward_encoder.cuh (encoder
// grad_value); shared device helpers in cuda/common.cuh, launch shapes and thresholds in cuda/tuning.h.
// One translation unit: the kernels have internal linkage.
#include "ms_deform_attn/ms_deform_attn.h"

#include <algorithm>

#include "ms_deform_attn/cuda/backward_encoder.cuh"
#include "ms_deform_attn/cuda/backward_tiles.cuh"
#include "ms_deform_attn/cuda/forward.cuh"

namespace codetr {
namespace msda {
namespace {

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


// Widest V the pointers' alignment allows, then lanes = next power of two >= D/V.
// max_lane_bytes: 16 for the forward, kBackwardLaneBytes (tuning.h) for the backward.
bool plan(const CudaArgs& args, std::initializer_list<const void*> vector_pointers, size_t max_lane_bytes,
          int* V, GroupLayout* layout) {
  const size_t elem = dtype_size(args.value_dtype);
  const int64_t D = args.sizes.head_dim;
  for (int width = 8; width >= 1; width /= 2) {
    if (!vector_width_fits(width, elem, D)) continue;
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
  for (int width = 8; width >= 1; width /= 2)
    if (vector_width_fits(width, dtype_size(value_dtype), head_dim)) return width;
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

namespace {

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
