#pragma once
// OpenCV's INTER_LINEAR resize of 8-bit images, one output coordinate at a time: the two source
// taps and their 11-bit fixed-point weights along one axis, the vertical blend, and the exact-2x
// case that OpenCV hands to INTER_AREA. Shared by the host path (core/preprocess.cpp) and the
// fused CUDA kernel (src/preprocess_cuda.cu) so that both round exactly like cv2.resize. On the device the
// arithmetic uses explicitly rounded intrinsics: nvcc would otherwise contract a*b+c into an FMA,
// which rounds once instead of twice and moves some coordinates by one ulp.
#include <cstdint>

#ifdef __CUDACC__
#define CODETR_HOST_DEVICE __host__ __device__
#else
#define CODETR_HOST_DEVICE
#include <cmath>
#endif

namespace codetr::resize {

// OpenCV works in fixed point with 11 fractional bits for 8-bit images.
constexpr int kCoefBits = 11;

struct AxisTap {
  int index0 = 0, index1 = 0;    // source indices, clamped to the image
  int weight0 = 0, weight1 = 0;  // fixed-point weights (sum 2^11)
};

// Source pixels per destination pixel, in double like OpenCV (1 / (out / in), not in / out).
inline double axis_scale(int64_t in_size, int64_t out_size) {
  return 1.0 / (static_cast<double>(out_size) / static_cast<double>(in_size));
}

// saturate_cast<short>(coef * 2^11): round half to even (cvRound), then clamp.
CODETR_HOST_DEVICE inline int coef_to_fixed(float coef) {
#ifdef __CUDA_ARCH__
  const int v = __float2int_rn(__fmul_rn(coef, static_cast<float>(1 << kCoefBits)));
#else
  const long v = std::lrint(coef * static_cast<float>(1 << kCoefBits));
#endif
  return v < INT16_MIN ? INT16_MIN : v > INT16_MAX ? INT16_MAX : static_cast<int>(v);
}

// Taps of destination coordinate `dst` (half-pixel centres). `clamp_weights_at_border`
// reproduces the horizontal pass, which pins the weight of out-of-range taps to the border
// pixel; the vertical pass keeps the fractional weight and clamps the row index instead.
CODETR_HOST_DEVICE inline AxisTap axis_tap(int dst, int in_size, double scale, bool clamp_weights_at_border) {
#ifdef __CUDA_ARCH__
  float f = __double2float_rn(__dsub_rn(__dmul_rn(__dadd_rn(static_cast<double>(dst), 0.5), scale), 0.5));
  int s = static_cast<int>(floorf(f));
  f = __fsub_rn(f, static_cast<float>(s));
#else
  float f = static_cast<float>((dst + 0.5) * scale - 0.5);
  int s = static_cast<int>(std::floor(f));
  f -= static_cast<float>(s);
#endif
  if (clamp_weights_at_border) {
    if (s < 0) f = 0.f, s = 0;
    if (s >= in_size - 1) f = 0.f, s = in_size - 1;
  }
  AxisTap t;
  t.index0 = s < 0 ? 0 : s > in_size - 1 ? in_size - 1 : s;
  t.index1 = s + 1 < 0 ? 0 : s + 1 > in_size - 1 ? in_size - 1 : s + 1;
#ifdef __CUDA_ARCH__
  t.weight0 = coef_to_fixed(__fsub_rn(1.f, f));
#else
  t.weight0 = coef_to_fixed(1.f - f);
#endif
  t.weight1 = coef_to_fixed(f);
  return t;
}

// cv::resize switches INTER_LINEAR to INTER_AREA when both scales are exactly 2 (source size
// twice the destination size on both axes).
CODETR_HOST_DEVICE inline bool is_exact_half(int64_t in_h, int64_t in_w, int64_t out_h, int64_t out_w) {
  return in_h == 2 * out_h && in_w == 2 * out_w;
}

// INTER_AREA's 2x2 average of 8-bit values, rounded half up.
CODETR_HOST_DEVICE inline uint8_t area_half(int a, int b, int c, int d) {
  return static_cast<uint8_t>((a + b + c + d + 2) >> 2);
}

// The vertical pass of OpenCV's 8-bit INTER_LINEAR on two horizontally resized rows (value *
// 2^11): each product is taken as (w * (S >> 4)) >> 16, the two are summed, then (+2) >> 2
// rounds away the remaining 2 bits.
CODETR_HOST_DEVICE inline uint8_t vertical_blend(int32_t top, int32_t bottom, int w0, int w1) {
  const int v = ((((top >> 4) * w0) >> 16) + (((bottom >> 4) * w1) >> 16) + 2) >> 2;
  return static_cast<uint8_t>(v < 0 ? 0 : v > 255 ? 255 : v);
}

}  // namespace codetr::resize
