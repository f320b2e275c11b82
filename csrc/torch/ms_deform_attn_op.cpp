// codetr::ms_deform_attn: the CPU kernels' binding and the autograd (C++, so the op is
// differentiable in a pure C++ process too).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <algorithm>

#include "ms_deform_attn/ms_deform_attn.h"
#include "torch/ms_deform_attn_checks.h"

namespace codetr {

namespace {

// The CPU kernels compute in double for float64 and in float for everything else (fp16/bf16 are
// up-cast on entry and the result cast back), so coordinates and sums are never in half precision.
at::ScalarType cpu_compute_dtype(const at::Tensor& value) {
  return value.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

void check_cpu(const char* op, const at::Tensor& value) {
  TORCH_CHECK(value.device().is_cpu(), op, ": CPU kernel called with value on ", value.device());
}

at::Tensor ms_deform_attn_cpu(const at::Tensor& value, at::IntArrayRef spatial_shapes,
                              const at::Tensor& sampling_locations,
                              const at::Tensor& attention_weights) {
  const char* op = "codetr::ms_deform_attn";
  const auto problem =
      check_ms_deform_attn_inputs(op, value, spatial_shapes, sampling_locations, attention_weights);
  check_cpu(op, value);
  const auto& sz = problem.sizes;
  const auto compute = cpu_compute_dtype(value);
  auto output = at::empty({sz.batch, sz.num_queries, sz.num_heads * sz.head_dim},
                          value.options().dtype(compute));
  if (output.numel() == 0) return output.to(value.scalar_type());
  const auto v = value.to(compute).contiguous();
  const auto loc = sampling_locations.to(compute).contiguous();
  const auto attn = attention_weights.to(compute).contiguous();
  const int64_t num_groups = sz.batch * sz.num_queries * sz.num_heads;
  // ~4 * D multiply-adds per sample; aim for ~32k per task.
  const int64_t grain =
      std::max<int64_t>(1, 32768 / std::max<int64_t>(1, 4 * sz.num_levels * sz.num_points * sz.head_dim));
  AT_DISPATCH_FLOATING_TYPES(compute, "ms_deform_attn_cpu", [&] {
    at::parallel_for(0, num_groups, grain, [&](int64_t begin, int64_t end) {
      msda::forward_cpu<scalar_t>(v.data_ptr<scalar_t>(), loc.data_ptr<scalar_t>(),
                                  attn.data_ptr<scalar_t>(), output.data_ptr<scalar_t>(), sz,
                                  problem.levels, begin, end);
    });
  });
  return output.to(value.scalar_type());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& value, at::IntArrayRef spatial_shapes,
    const at::Tensor& sampling_locations, const at::Tensor& attention_weights) {
  const char* op = "codetr::ms_deform_attn_backward";
  const auto problem = check_ms_deform_attn_backward_inputs(grad_output, value, spatial_shapes,
                                                            sampling_locations, attention_weights);
  check_cpu(op, value);
  const auto& sz = problem.sizes;
  const auto compute = cpu_compute_dtype(value);
  const auto v = value.to(compute).contiguous();
  const auto loc = sampling_locations.to(compute).contiguous();
  const auto attn = attention_weights.to(compute).contiguous();
  const auto grad_out = grad_output.to(compute).contiguous();
  auto grad_value = at::zeros_like(v);
  auto grad_loc = at::empty_like(loc);
  auto grad_attn = at::empty_like(attn);
  if (grad_out.numel() > 0) {
    // Parallel over (b, h): each pair owns grad_value[b, :, h, :], so no atomics are needed.
    AT_DISPATCH_FLOATING_TYPES(compute, "ms_deform_attn_backward_cpu", [&] {
      at::parallel_for(0, sz.batch * sz.num_heads, 1, [&](int64_t begin, int64_t end) {
        msda::backward_cpu<scalar_t>(grad_out.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(),
                                     loc.data_ptr<scalar_t>(), attn.data_ptr<scalar_t>(),
                                     grad_value.data_ptr<scalar_t>(), grad_loc.data_ptr<scalar_t>(),
                                     grad_attn.data_ptr<scalar_t>(), sz, problem.levels, begin, end);
      });
    });
  } else {
    grad_loc.zero_();
    grad_attn.zero_();
  }
  return {grad_value.to(value.scalar_type()), grad_loc.to(sampling_locations.scalar_type()),
          grad_attn.to(attention_weights.scalar_type())};
}

// ---- autograd ------------------------------------------------------------------------------

at::Tensor call_forward(const at::Tensor& value, c10::SymIntArrayRef spatial_shapes,
                        const at::Tensor& sampling_locations, const at::Tensor& attention_weights) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("codetr::ms_deform_attn", "")
                             .typed<at::Tensor(const at::Tensor&, c10::SymIntArrayRef,
                                               const at::Tensor&, const at::Tensor&)>();
  return op.call(value, spatial_shapes, sampling_locations, attention_weights);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> call_backward(const at::Tensor& grad_output,
                                                             const at::Tensor& value,
                                                             c10::SymIntArrayRef spatial_shapes,
                                                             const at::Tensor& sampling_locations,
                                                             const at::Tensor& attention_weights) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("codetr::ms_deform_attn_backward", "")
          .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
              const at::Tensor&, const at::Tensor&, c10::SymIntArrayRef, const at::Tensor&,
              const at::Tensor&)>();
  return op.call(grad_output, value, spatial_shapes, sampling_locations, attention_weights);
}

class MsDeformAttnFunction : public torch::autograd::Function<MsDeformAttnFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& value,
                            c10::SymIntArrayRef spatial_shapes, const at::Tensor& sampling_locations,
                            const at::Tensor& attention_weights) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->saved_data["spatial_shapes"] = spatial_shapes;
    ctx->save_for_backward({value, sampling_locations, attention_weights});
    return call_forward(value, spatial_shapes, sampling_locations, attention_weights);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const auto spatial_shapes = ctx->saved_data["spatial_shapes"].toSymIntVector();
    auto [grad_value, grad_loc, grad_attn] = call_backward(
        grad_outputs[0].contiguous(), saved[0], spatial_shapes, saved[1], saved[2]);
    return {grad_value, at::Tensor(), grad_loc, grad_attn};
  }
};

at::Tensor ms_deform_attn_autograd(const at::Tensor& value, c10::SymIntArrayRef spatial_shapes,
                                   const at::Tensor& sampling_locations,
                                   const at::Tensor& attention_weights) {
  return MsDeformAttnFunction::apply(value, spatial_shapes, sampling_locations, attention_weights);
}

}  // namespace

TORCH_LIBRARY_IMPL(codetr, CPU, m) {
  m.impl("ms_deform_attn", &ms_deform_attn_cpu);
  m.impl("ms_deform_attn_backward", &ms_deform_attn_backward_cpu);
}

TORCH_LIBRARY_IMPL(codetr, Autograd, m) { m.impl("ms_deform_attn", &ms_deform_attn_autograd); }

}  // namespace codetr
