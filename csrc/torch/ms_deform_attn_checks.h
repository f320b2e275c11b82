// Input validation shared by the CPU and CUDA kernels of codetr::ms_deform_attn(_backward).
#pragma once

#include <ATen/core/Tensor.h>

#include "ms_deform_attn/ms_deform_attn.h"

namespace codetr {

struct MsDeformAttnProblem {
  msda::Sizes sizes;
  msda::LevelShapes levels;
};

// Checks ranks, sizes, spatial_shapes, dtypes and devices; errors name the argument and the
// expected shape. `op` prefixes the messages.
MsDeformAttnProblem check_ms_deform_attn_inputs(const char* op, const at::Tensor& value,
                                                at::IntArrayRef spatial_shapes,
                                                const at::Tensor& sampling_locations,
                                                const at::Tensor& attention_weights);

// The backward's inputs: those of the forward (as above, messages prefixed
// "codetr::ms_deform_attn_backward") plus grad_output, which must be (B, Q, H*D) with value's
// dtype and device.
MsDeformAttnProblem check_ms_deform_attn_backward_inputs(const at::Tensor& grad_output,
                                                         const at::Tensor& value,
                                                         at::IntArrayRef spatial_shapes,
                                                         const at::Tensor& sampling_locations,
                                                         const at::Tensor& attention_weights);

}  // namespace codetr
