// Alignment for the CUDA kernels' vector loads, shared by the op bindings.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstddef>
#include <cstdint>

namespace codetr {

// `contiguous` itself when its data starts on a multiple of `bytes`, else an aligned copy: a
// contiguous tensor is aligned unless it is a view at an odd element offset.
inline at::Tensor aligned_to(const at::Tensor& contiguous, size_t bytes) {
  const auto address = reinterpret_cast<uintptr_t>(contiguous.const_data_ptr());
  return address % bytes == 0 ? contiguous : contiguous.clone();
}

}  // namespace codetr
