#pragma once
// mmdet's test pipeline for Co-DETR presets, in libtorch ops on the engine's device:
// keep-ratio resize (mmcv rescale rule, OpenCV-INTER_LINEAR-exact bilinear), BGR->RGB,
// normalise, pad bottom/right, padding mask.
#include <cstdint>
#include <vector>

#include <torch/types.h>  // at::Tensor and the torch:: factories, without the nn/optim API

#include "codetr/model_config.h"

namespace codetr {

enum class PixelOrder { kRGB, kBGR };

// A borrowed, interleaved 8-bit 3-channel image (HxWx3). `row_stride` is in bytes (0: width*3).
struct ImageView {
  const uint8_t* data = nullptr;
  int64_t height = 0;
  int64_t width = 0;
  PixelOrder order = PixelOrder::kBGR;
  int64_t row_stride = 0;
};

struct Size2 {
  int64_t height = 0;
  int64_t width = 0;
};

// mmcv.rescale_size: the largest scale that fits (long, short) with the aspect ratio kept;
// new side = int(side * factor + 0.5).
Size2 rescale_size(Size2 original, int64_t scale_long, int64_t scale_short);

// cv2.resize(..., INTER_LINEAR) of an HxWx3 uint8 tensor, bit-exact: half-pixel centres,
// 11-bit fixed-point weights and OpenCV's rounding. Runs on the tensor's device.
torch::Tensor resize_bilinear_u8(const torch::Tensor& image_hwc, int64_t out_height, int64_t out_width);

// Where one image sits in the batch, to undo the resize later.
struct ImageMeta {
  Size2 original;
  Size2 resized;
  float w_scale = 1.0f;  // resized.width / original.width
  float h_scale = 1.0f;  // resized.height / original.height
};

struct PreprocessedBatch {
  torch::Tensor images;  // (B,3,H,W) in the engine's dtype, on its device
  torch::Tensor masks;   // (B,H,W) bool, True = padding; undefined when the preset has no mask
  std::vector<ImageMeta> metas;
};

// Validates an ImageView (non-null data, positive size, stride) and throws codetr::Error
// naming `what` (e.g. the file) otherwise.
void check_image(const ImageView& image, const std::string& what);

// Preprocesses images into one batch. Each image is resized with rescale_size(scale); for a
// static engine, an image that would then not fit (e.g. portrait into a landscape engine) is
// instead resized by min(engine H / h, engine W / w), the aspect ratio kept. The padded size is the engine's static size, or for a
// dynamic engine the batch's largest resized size rounded up to the pad divisor (at least the
// engine minimum). Throws codetr::Error when a resized image does not fit the engine.
PreprocessedBatch preprocess(const std::vector<ImageView>& images, const ModelConfig& config,
                             const torch::Device& device);

torch::ScalarType dtype_from_name(const std::string& name);

}  // namespace codetr
