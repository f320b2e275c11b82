#include "torch/ms_deform_attn_checks.h"

#include <c10/util/Exception.h>

namespace codetr {

namespace {

bool is_supported_value_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16 || t == at::kDouble;
}

}  // namespace

MsDeformAttnProblem check_ms_deform_attn_inputs(const char* op, const at::Tensor& value,
                                                at::IntArrayRef spatial_shapes,
                                                const at::Tensor& sampling_locations,
                                                const at::Tensor& attention_weights) {
  TORCH_CHECK(value.dim() == 4, op, ": value must be 4-D (B, S, H, D), got shape ", value.sizes());
  const int64_t B = value.size(0), S = value.size(1), H = value.size(2), D = value.size(3);
  TORCH_CHECK(sampling_locations.dim() == 6, op,
              ": sampling_locations must be 6-D (B, Q, H, L, P, 2), got shape ",
              sampling_locations.sizes());
  const int64_t Q = sampling_locations.size(1), L = sampling_locations.size(3),
                P = sampling_locations.size(4);
  TORCH_CHECK(sampling_locations.size(0) == B && sampling_locations.size(2) == H &&
                  sampling_locations.size(5) == 2,
              op, ": sampling_locations must be (B=", B, ", Q, H=", H,
              ", L, P, 2) to match value (B, S, H, D) = ", value.sizes(), ", got shape ",
              sampling_locations.sizes());
  TORCH_CHECK(attention_weights.dim() == 5, op,
              ": attention_weights must be 5-D (B, Q, H, L, P), got shape ",
              attention_weights.sizes());
  TORCH_CHECK(attention_weights.sizes() == sampling_locations.sizes().slice(0, 5), op,
              ": attention_weights must be (B, Q, H, L, P) = ", sampling_locations.sizes().slice(0, 5),
              " to match sampling_locations ", sampling_locations.sizes(), ", got shape ",
              attention_weights.sizes());

  TORCH_CHECK(spatial_shapes.size() % 2 == 0, op,
              ": spatial_shapes must be a flat list [h0, w0, h1, w1, ...] of even length, got ",
              spatial_shapes.size(), " values");
  const int64_t num_levels = static_cast<int64_t>(spatial_shapes.size() / 2);
  TORCH_CHECK(num_levels == L, op, ": spatial_shapes has ", num_levels,
              " levels (h, w) but sampling_locations (B, Q, H, L, P, 2) has L=", L);
  TORCH_CHECK(L >= 1 && L <= msda::kMaxLevels, op, ": the number of levels L must be in [1, ",
              msda::kMaxLevels, "], got ", L);

  MsDeformAttnProblem problem;
  problem.sizes = {B, S, H, D, Q, L, P};
  problem.levels.num_levels = static_cast<int>(L);
  int64_t start = 0;
  for (int64_t l = 0; l < L; ++l) {
    const int64_t h = spatial_shapes[2 * l], w = spatial_shapes[2 * l + 1];
    TORCH_CHECK(h > 0 && w > 0, op, ": spatial_shapes level ", l, " must have h > 0 and w > 0, got (",
                h, ", ", w, ")");
    TORCH_CHECK(h <= INT32_MAX && w <= INT32_MAX && h * w <= INT32_MAX, op, ": spatial_shapes level ",
                l, " (", h, ", ", w, ") is too large (h*w must fit in int32)");
    problem.levels.height[l] = static_cast<int>(h);
    problem.levels.width[l] = static_cast<int>(w);
    problem.levels.start[l] = start;
    start += h * w;
  }
  TORCH_CHECK(start == S, op, ": value (B, S, H, D) must have S = sum(h*w) over spatial_shapes = ",
              start, ", got S=", S, " (value shape ", value.sizes(), ")");

  TORCH_CHECK(is_supported_value_dtype(value.scalar_type()), op,
              ": value must be float32, float16, bfloat16 or float64, got ", value.scalar_type());
  TORCH_CHECK(sampling_locations.scalar_type() == attention_weights.scalar_type(), op,
              ": sampling_locations and attention_weights must have the same dtype, got ",
              sampling_locations.scalar_type(), " and ", attention_weights.scalar_type());
  TORCH_CHECK(sampling_locations.scalar_type() == value.scalar_type() ||
                  sampling_locations.scalar_type() == at::kFloat,
              op, ": sampling_locations/attention_weights must be value's dtype (",
              value.scalar_type(), ") or float32, got ", sampling_locations.scalar_type());
  TORCH_CHECK(sampling_locations.device() == value.device() &&
                  attention_weights.device() == value.device(),
              op, ": all tensors must be on one device, got value on ", value.device(),
              ", sampling_locations on ", sampling_locations.device(), ", attention_weights on ",
              attention_weights.device());
  return problem;
}

MsDeformAttnProblem check_ms_deform_attn_backward_inputs(const at::Tensor& grad_output,
                                                         const at::Tensor& value,
                                                         at::IntArrayRef spatial_shapes,
                                                         const at::Tensor& sampling_locations,
                                                         const at::Tensor& attention_weights) {
  const auto problem = check_ms_deform_attn_inputs("codetr::ms_deform_attn_backward", value, spatial_shapes,
                                                   sampling_locations, attention_weights);
  const msda::Sizes& sizes = problem.sizes;
  const int64_t expected[3] = {sizes.batch, sizes.num_queries, sizes.num_heads * sizes.head_dim};
  TORCH_CHECK(grad_output.sizes() == at::IntArrayRef(expected),
              "codetr::ms_deform_attn_backward: grad_output must be (B, Q, H*D) = ",
              at::IntArrayRef(expected), ", got shape ", grad_output.sizes());
  TORCH_CHECK(grad_output.scalar_type() == value.scalar_type(),
              "codetr::ms_deform_attn_backward: grad_output must have value's dtype ",
              value.scalar_type(), ", got ", grad_output.scalar_type());
  TORCH_CHECK(grad_output.device() == value.device(),
              "codetr::ms_deform_attn_backward: grad_output must be on value's device ",
              value.device(), ", got ", grad_output.device());
  return problem;
}

}  // namespace codetr
