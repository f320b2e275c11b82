// The bilinear sampling rule shared by the CPU and CUDA kernels (host and device code).
#pragma once

#if defined(__CUDACC__)
#define CODETR_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define CODETR_HOST_DEVICE inline
#endif

#include <cmath>

namespace codetr {
namespace msda {

// One sample point on one level: the top-left corner (x0, y0), the fractional offsets and which of
// the four corners lie inside the map. Corners: 0 = (y0, x0), 1 = (y0, x0+1), 2 = (y0+1, x0),
// 3 = (y0+1, x0+1). Corner weights: (1-fx)(1-fy), fx(1-fy), (1-fx)fy, fx*fy.
template <typename acc_t>
struct BilinearSample {
  bool inside;  // false: the sample contributes nothing (and gets no gradient)
  int x0, y0;
  acc_t fx, fy;
  bool valid[4];
};

// loc_x, loc_y are normalised; pixel = loc * size - 0.5 (align_corners=False).
template <typename acc_t>
CODETR_HOST_DEVICE BilinearSample<acc_t> make_bilinear_sample(acc_t loc_x, acc_t loc_y, int height,
                                                               int width) {
  BilinearSample<acc_t> s;
  const acc_t x = loc_x * static_cast<acc_t>(width) - static_cast<acc_t>(0.5);
  const acc_t y = loc_y * static_cast<acc_t>(height) - static_cast<acc_t>(0.5);
  // Written so that NaN coordinates land outside too.
  s.inside = x > static_cast<acc_t>(-1) && y > static_cast<acc_t>(-1) &&
             x < static_cast<acc_t>(width) && y < static_cast<acc_t>(height);
  if (!s.inside) {
    s.x0 = s.y0 = 0;
    s.fx = s.fy = static_cast<acc_t>(0);
    s.valid[0] = s.valid[1] = s.valid[2] = s.valid[3] = false;
    return s;
  }
  const acc_t xf = floor(x);
  const acc_t yf = floor(y);
  s.x0 = static_cast<int>(xf);
  s.y0 = static_cast<int>(yf);
  s.fx = x - xf;
  s.fy = y - yf;
  const bool x0_ok = s.x0 >= 0;
  const bool x1_ok = s.x0 + 1 < width;
  const bool y0_ok = s.y0 >= 0;
  const bool y1_ok = s.y0 + 1 < height;
  s.valid[0] = y0_ok && x0_ok;
  s.valid[1] = y0_ok && x1_ok;
  s.valid[2] = y1_ok && x0_ok;
  s.valid[3] = y1_ok && x1_ok;
  return s;
}

}  // namespace msda
}  // namespace codetr
