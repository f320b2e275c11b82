// CPU kernels for multi-scale deformable attention (see ms_deform_attn.h for the contract).
#include "ms_deform_attn/ms_deform_attn.h"

#include <vector>

#include "ms_deform_attn/bilinear_sample.h"

namespace codetr {
namespace msda {

namespace {

// Row offset (in elements) of pixel (y, x) of a level, for one batch and head: value is
// (B, S, H, D), so consecutive pixels are H*D elements apart.
inline int64_t pixel_offset(const LevelShapes& levels, int level, int y, int x, int64_t row_stride) {
  return (levels.start[level] + static_cast<int64_t>(y) * levels.width[level] + x) * row_stride;
}

}  // namespace

template <typename scalar_t>
void forward_cpu(const scalar_t* value, const scalar_t* sampling_locations,
                 const scalar_t* attention_weights, scalar_t* output, const Sizes& sizes,
                 const LevelShapes& levels, int64_t group_begin, int64_t group_end) {
  const int64_t H = sizes.num_heads, D = sizes.head_dim, Q = sizes.num_queries;
  const int64_t L = sizes.num_levels, P = sizes.num_points;
  const int64_t row_stride = H * D;
  for (int64_t group = group_begin; group < group_end; ++group) {
    const int64_t b = group / (Q * H);
    const int64_t h = group % H;
    const scalar_t* value_bh = value + b * sizes.num_value * row_stride + h * D;
    const scalar_t* loc = sampling_locations + group * L * P * 2;
    const scalar_t* attn = attention_weights + group * L * P;
    scalar_t* out = output + group * D;
    for (int64_t c = 0; c < D; ++c) out[c] = scalar_t(0);
    for (int l = 0; l < static_cast<int>(L); ++l) {
      for (int64_t p = 0; p < P; ++p) {
        const int64_t lp = l * P + p;
        const auto s = make_bilinear_sample<scalar_t>(loc[2 * lp], loc[2 * lp + 1],
                                                      levels.height[l], levels.width[l]);
        if (!s.inside) continue;
        const scalar_t a = attn[lp];
        const scalar_t corner_weight[4] = {(1 - s.fx) * (1 - s.fy), s.fx * (1 - s.fy),
                                           (1 - s.fx) * s.fy, s.fx * s.fy};
        for (int k = 0; k < 4; ++k) {
          if (!s.valid[k]) continue;
          const scalar_t* v = value_bh + pixel_offset(levels, l, s.y0 + k / 2, s.x0 + k % 2, row_stride);
          const scalar_t w = a * corner_weight[k];
          for (int64_t c = 0; c < D; ++c) out[c] += w * v[c];
        }
      }
    }
  }
}

template <typename scalar_t>
void backward_cpu(const scalar_t* grad_output, const scalar_t* value,
                  const scalar_t* sampling_locations, const scalar_t* attention_weights,
                  scalar_t* grad_value, scalar_t* grad_sampling_locations,
                  scalar_t* grad_attention_weights, const Sizes& sizes,
                  const LevelShapes& levels, int64_t pair_begin, int64_t pair_end) {
  const int64_t H = sizes.num_heads, D = sizes.head_dim, Q = sizes.num_queries;
  const int64_t L = sizes.num_levels, P = sizes.num_points;
  const int64_t row_stride = H * D;
  // Per-corner channel values of one sample (zero for corners outside the map).
  std::vector<scalar_t> corner_values(4 * D);
  for (int64_t pair = pair_begin; pair < pair_end; ++pair) {
    const int64_t b = pair / H;
    const int64_t h = pair % H;
    const int64_t value_offset = b * sizes.num_value * row_stride + h * D;
    const scalar_t* value_bh = value + value_offset;
    scalar_t* grad_value_bh = grad_value + value_offset;
    for (int64_t q = 0; q < Q; ++q) {
      const int64_t group = (b * Q + q) * H + h;
      const scalar_t* loc = sampling_locations + group * L * P * 2;
      const scalar_t* attn = attention_weights + group * L * P;
      const scalar_t* grad_out = grad_output + group * D;
      scalar_t* grad_loc = grad_sampling_locations + group * L * P * 2;
      scalar_t* grad_attn = grad_attention_weights + group * L * P;
      for (int l = 0; l < static_cast<int>(L); ++l) {
        const int width = levels.width[l], height = levels.height[l];
        for (int64_t p = 0; p < P; ++p) {
          const int64_t lp = l * P + p;
          const auto s = make_bilinear_sample<scalar_t>(loc[2 * lp], loc[2 * lp + 1], height, width);
          grad_attn[lp] = scalar_t(0);
          grad_loc[2 * lp] = scalar_t(0);
          grad_loc[2 * lp + 1] = scalar_t(0);
          if (!s.inside) continue;
          const scalar_t a = attn[lp];
          const scalar_t corner_weight[4] = {(1 - s.fx) * (1 - s.fy), s.fx * (1 - s.fy),
                                             (1 - s.fx) * s.fy, s.fx * s.fy};
          for (int k = 0; k < 4; ++k) {
            scalar_t* cv = corner_values.data() + k * D;
            if (!s.valid[k]) {
              for (int64_t c = 0; c < D; ++c) cv[c] = scalar_t(0);
              continue;
            }
            const int64_t offset = pixel_offset(levels, l, s.y0 + k / 2, s.x0 + k % 2, row_stride);
            const scalar_t* v = value_bh + offset;
            scalar_t* gv = grad_value_bh + offset;
            const scalar_t w = a * corner_weight[k];
            for (int64_t c = 0; c < D; ++c) {
              cv[c] = v[c];
              gv[c] += w * grad_out[c];
            }
          }
          // d sample / d fx and d fy, contracted with grad_out.
          scalar_t grad_sample_a = 0, grad_fx = 0, grad_fy = 0;
          const scalar_t* v00 = corner_values.data();
          const scalar_t* v01 = v00 + D;
          const scalar_t* v10 = v00 + 2 * D;
          const scalar_t* v11 = v00 + 3 * D;
          for (int64_t c = 0; c < D; ++c) {
            const scalar_t sample = corner_weight[0] * v00[c] + corner_weight[1] * v01[c] +
                                    corner_weight[2] * v10[c] + corner_weight[3] * v11[c];
            grad_sample_a += grad_out[c] * sample;
            grad_fx += grad_out[c] * ((1 - s.fy) * (v01[c] - v00[c]) + s.fy * (v11[c] - v10[c]));
            grad_fy += grad_out[c] * ((1 - s.fx) * (v10[c] - v00[c]) + s.fx * (v11[c] - v01[c]));
          }
          grad_attn[lp] = grad_sample_a;
          // x = loc_x * width - 0.5, so d/d loc_x = width * d/dx.
          grad_loc[2 * lp] = a * grad_fx * static_cast<scalar_t>(width);
          grad_loc[2 * lp + 1] = a * grad_fy * static_cast<scalar_t>(height);
        }
      }
    }
  }
}

template void forward_cpu<float>(const float*, const float*, const float*, float*, const Sizes&,
                                 const LevelShapes&, int64_t, int64_t);
template void forward_cpu<double>(const double*, const double*, const double*, double*,
                                  const Sizes&, const LevelShapes&, int64_t, int64_t);
template void backward_cpu<float>(const float*, const float*, const float*, const float*, float*,
                                  float*, float*, const Sizes&, const LevelShapes&, int64_t,
                                  int64_t);
template void backward_cpu<double>(const double*, const double*, const double*, const double*,
                                   double*, double*, double*, const Sizes&, const LevelShapes&,
                                   int64_t, int64_t);

}  // namespace msda
}  // namespace codetr
