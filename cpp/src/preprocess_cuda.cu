#include "preprocess_cuda.h"

#include <string>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "codetr/error.h"
#include "resize_taps.h"

namespace codetr::cuda {
namespace {

template <typename T>
__device__ T from_float(float v);
template <>
__device__ float from_float<float>(float v) {
  return v;
}
template <>
__device__ __half from_float<__half>(float v) {
  return __float2half_rn(v);
}
template <>
__device__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// One thread per output pixel (all three channels and the mask). The taps are recomputed per
// pixel rather than read from tables: a handful of fp64 operations per thread is cheaper than
// uploading tables for every new image size. `scale_x`/`scale_y`: resize::axis_scale.
template <typename Out>
__global__ void preprocess_kernel(const PreprocessLaunch p, double scale_x, double scale_y) {
  const int x = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  const int y = static_cast<int>(blockIdx.y * blockDim.y + threadIdx.y);
  if (x >= p.pad_width || y >= p.pad_height) return;
  const int64_t plane = static_cast<int64_t>(p.pad_height) * p.pad_width;
  const int64_t offset = static_cast<int64_t>(y) * p.pad_width + x;
  Out* out = static_cast<Out*>(p.output);
  const bool inside = x < p.resized_width && y < p.resized_height;
  if (p.mask != nullptr) p.mask[offset] = !inside;
  if (!inside) {
    for (int c = 0; c < 3; ++c) out[c * plane + offset] = from_float<Out>(p.pad_output[c]);
    return;
  }
  if (resize::is_exact_half(p.in_height, p.in_width, p.resized_height, p.resized_width)) {
    const uint8_t* row0 = p.image + static_cast<int64_t>(2 * y) * p.row_stride + 6 * x;
    const uint8_t* row1 = row0 + p.row_stride;
    for (int c = 0; c < 3; ++c) {
      const int src = p.flip_channels ? 2 - c : c;
      const int v = resize::area_half(row0[src], row0[3 + src], row1[src], row1[3 + src]);
      out[c * plane + offset] = from_float<Out>(__fdiv_rn(__fsub_rn(static_cast<float>(v), p.mean[c]), p.std[c]));
    }
    return;
  }
  const resize::AxisTap tx = resize::axis_tap(x, p.in_width, scale_x, /*clamp_weights_at_border=*/true);
  const resize::AxisTap ty = resize::axis_tap(y, p.in_height, scale_y, /*clamp_weights_at_border=*/false);
  const uint8_t* row0 = p.image + ty.index0 * p.row_stride;
  const uint8_t* row1 = p.image + ty.index1 * p.row_stride;
  for (int c = 0; c < 3; ++c) {
    const int src = p.flip_channels ? 2 - c : c;
    // Horizontal pass (pixel * 2^11), then OpenCV's 8-bit vertical blend.
    const int top = row0[tx.index0 * 3 + src] * tx.weight0 + row0[tx.index1 * 3 + src] * tx.weight1;
    const int bottom = row1[tx.index0 * 3 + src] * tx.weight0 + row1[tx.index1 * 3 + src] * tx.weight1;
    const int v = resize::vertical_blend(top, bottom, ty.weight0, ty.weight1);
    out[c * plane + offset] = from_float<Out>(__fdiv_rn(__fsub_rn(static_cast<float>(v), p.mean[c]), p.std[c]));
  }
}

}  // namespace

void launch_preprocess(const PreprocessLaunch& p, cudaStream_t stream) {
  if (p.image == nullptr || p.output == nullptr || p.in_height < 1 || p.in_width < 1 || p.resized_height < 1 ||
      p.resized_width < 1 || p.resized_height > p.pad_height || p.resized_width > p.pad_width ||
      p.row_stride < static_cast<int64_t>(p.in_width) * 3)
    throw Error("preprocess (CUDA): bad launch: image " + std::to_string(p.in_height) + "x" + std::to_string(p.in_width) +
                " (row stride " + std::to_string(p.row_stride) + "), resized " + std::to_string(p.resized_height) + "x" +
                std::to_string(p.resized_width) + ", padded " + std::to_string(p.pad_height) + "x" +
                std::to_string(p.pad_width));
  const double scale_x = resize::axis_scale(p.in_width, p.resized_width);
  const double scale_y = resize::axis_scale(p.in_height, p.resized_height);
  const dim3 block(32, 8);
  const dim3 grid((p.pad_width + block.x - 1) / block.x, (p.pad_height + block.y - 1) / block.y);
  switch (p.dtype) {
    case ImageDtype::kFloat32: preprocess_kernel<float><<<grid, block, 0, stream>>>(p, scale_x, scale_y); break;
    case ImageDtype::kFloat16: preprocess_kernel<__half><<<grid, block, 0, stream>>>(p, scale_x, scale_y); break;
    case ImageDtype::kBFloat16: preprocess_kernel<__nv_bfloat16><<<grid, block, 0, stream>>>(p, scale_x, scale_y); break;
  }
  const cudaError_t status = cudaGetLastError();
  if (status != cudaSuccess)
    throw Error(std::string("preprocess (CUDA): kernel launch failed: ") + cudaGetErrorName(status) + ": " +
                cudaGetErrorString(status));
}

}  // namespace codetr::cuda
