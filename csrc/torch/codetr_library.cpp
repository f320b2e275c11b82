// Schemas of the codetr ops. Kernels: ms_deform_attn_op.cpp (CPU, Autograd),
// ms_deform_attn_op_cuda.cpp (CUDA), window_attention_op.cpp (CPU reference),
// window_attention_op_cuda.cpp (CUDA); fake impls: python/codetr/_C.py.
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
  // Swin window attention (inference): qkv (Bw, N, 3*C) from the qkv projection, bias (H, N, N),
  // regions (nW, N) int32 shift-mask region ids or None -> (Bw, N, C). See
  // csrc/window_attention/window_attention.h.
  m.def("window_attention(Tensor qkv, Tensor bias, Tensor? regions, int num_heads, float scale) -> Tensor");
}
