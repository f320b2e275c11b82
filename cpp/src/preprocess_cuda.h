#pragma once
// The fused CUDA preprocessing kernel (preprocess_cuda.cu): one launch turns one uploaded uint8
// image into its slot of the engine's (B,3,H,W) input. Plain C++ interface, no torch.
#include <cstdint>

#include <cuda_runtime_api.h>

namespace codetr::cuda {

enum class ImageDtype { kFloat32, kFloat16, kBFloat16 };

struct PreprocessLaunch {
  const uint8_t* image = nullptr;  // device, HxWx3 interleaved, rows `row_stride` bytes apart
  int in_height = 0, in_width = 0;
  int64_t row_stride = 0;
  int resized_height = 0, resized_width = 0;  // the image's region, top-left of the padded output
  int pad_height = 0, pad_width = 0;          // the output's size
  bool flip_channels = false;                 // output channel c reads input channel 2 - c
  float mean[3] = {0, 0, 0};
  float std[3] = {1, 1, 1};
  // The value of each output channel outside the image region, in fp32 before the cast to
  // `dtype` (pad_value itself, or the normalised uint8 pad value; see preprocess.cpp).
  float pad_output[3] = {0, 0, 0};
  ImageDtype dtype = ImageDtype::kFloat32;
  void* output = nullptr;  // device, (3, pad_height, pad_width) of `dtype`
  bool* mask = nullptr;    // device, (pad_height, pad_width), True = padding; null: no mask
};

// Per output pixel: the cv2.resize(INTER_LINEAR)-exact uint8 value of each channel (channels
// flipped when asked), (value - mean) / std in fp32, or pad_output outside the resized region,
// cast to `dtype` (round to nearest even); and the padding mask. Launched on `stream`; throws
// codetr::Error naming the failure when the launch fails.
void launch_preprocess(const PreprocessLaunch& launch, cudaStream_t stream);

}  // namespace codetr::cuda
