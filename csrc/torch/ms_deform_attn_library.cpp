// Schemas of the codetr ops. Kernels: ms_deform_attn_op.cpp (CPU, Autograd),
// ms_deform_attn_op_cuda.cpp (CUDA); fake impls: python/codetr/_C.py.
//
// spatial_shapes is a flat host-side list [h0, w0, h1, w1, ...]: every shape check runs on the
// host without a device->host sync (CUDA-graph capturable), and export sees (Sym)ints.
#include <torch/library.h>

TORCH_LIBRARY(codetr, m) {
  m.def(
      "ms_deform_attn(Tensor value, SymInt[] spatial_shapes, Tensor sampling_locations, "
      "Tensor attention_weights) -> Tensor");
  m.def(
      "ms_deform_attn_backward(Tensor grad_output, Tensor value, SymInt[] spatial_shapes, "
      "Tensor sampling_locations, Tensor attention_weights) -> (Tensor grad_value, "
      "Tensor grad_sampling_locations, Tensor grad_attention_weights)");
}
