#include "codetr/preprocess.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "codetr/error.h"
#include "resize_taps.h"

#ifdef CODETR_RUNTIME_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "preprocess_cuda.h"
#endif

namespace codetr {
namespace {

// Source taps and fixed-point weights of every output index along one axis, as tensors.
struct AxisTable {
  torch::Tensor index0, index1;    // int64
  torch::Tensor weight0, weight1;  // int32
};

AxisTable axis_table(int64_t in_size, int64_t out_size, bool clamp_weights_at_border, const torch::Device& device) {
  std::vector<int64_t> index0(out_size), index1(out_size);
  std::vector<int32_t> weight0(out_size), weight1(out_size);
  const double scale = resize::axis_scale(in_size, out_size);
  for (int64_t d = 0; d < out_size; ++d) {
    const resize::AxisTap t =
        resize::axis_tap(static_cast<int>(d), static_cast<int>(in_size), scale, clamp_weights_at_border);
    index0[d] = t.index0;
    index1[d] = t.index1;
    weight0[d] = t.weight0;
    weight1[d] = t.weight1;
  }
  return AxisTable{torch::tensor(index0, torch::kLong).to(device), torch::tensor(index1, torch::kLong).to(device),
                   torch::tensor(weight0, torch::kInt).to(device), torch::tensor(weight1, torch::kInt).to(device)};
}

// Each image's resize and the padded size of the batch.
struct BatchPlan {
  std::vector<ImageMeta> metas;
  int64_t pad_h = 0, pad_w = 0;
};

BatchPlan plan_batch(const std::vector<ImageView>& images, const ModelConfig& config) {
  const PreprocessConfig& pp = config.preprocess;
  const InputGeometry& geo = config.input;
  BatchPlan plan;
  int64_t max_h = 0, max_w = 0;
  for (size_t i = 0; i < images.size(); ++i) {
    const ImageView& view = images[i];
    check_image(view, "image " + std::to_string(i));
    ImageMeta meta;
    meta.original = {view.height, view.width};
    meta.resized = rescale_size(meta.original, pp.scale_long, pp.scale_short);
    if (!geo.dynamic && (meta.resized.height > geo.height || meta.resized.width > geo.width)) {
      // mmcv's (long, short) rule lets a portrait image outgrow a landscape static engine (and
      // vice versa); such images are scaled to fit the engine instead, the aspect ratio kept.
      const double fit = std::min(static_cast<double>(geo.height) / view.height,
                                  static_cast<double>(geo.width) / view.width);
      meta.resized = {std::min<int64_t>(static_cast<int64_t>(view.height * fit + 0.5), geo.height),
                      std::min<int64_t>(static_cast<int64_t>(view.width * fit + 0.5), geo.width)};
    }
    if (meta.resized.height < 1 || meta.resized.width < 1)
      throw Error("image " + std::to_string(i) + " (" + std::to_string(view.height) + "x" + std::to_string(view.width) +
                  ") resizes to " + std::to_string(meta.resized.height) + "x" + std::to_string(meta.resized.width) +
                  ": too thin for the model's resize scale");
    // mmdet recomputes the factors from the integer sizes (not the rescale factor).
    meta.w_scale = static_cast<float>(static_cast<double>(meta.resized.width) / view.width);
    meta.h_scale = static_cast<float>(static_cast<double>(meta.resized.height) / view.height);
    max_h = std::max(max_h, meta.resized.height);
    max_w = std::max(max_w, meta.resized.width);
    plan.metas.push_back(meta);
  }

  if (!geo.dynamic) {
    plan.pad_h = geo.height;
    plan.pad_w = geo.width;
  } else if (pp.pad_height > 0) {
    plan.pad_h = pp.pad_height;
    plan.pad_w = pp.pad_width;
  } else {
    const int64_t div = std::max<int64_t>(pp.pad_size_divisor, geo.multiple);
    plan.pad_h = std::max((max_h + div - 1) / div * div, geo.min_height);
    plan.pad_w = std::max((max_w + div - 1) / div * div, geo.min_width);
  }
  if (max_h > plan.pad_h || max_w > plan.pad_w ||
      (geo.dynamic && (plan.pad_h > geo.max_height || plan.pad_w > geo.max_width)))
    throw Error("preprocess: resized image " + std::to_string(max_h) + "x" + std::to_string(max_w) +
                " does not fit the engine input (" +
                (geo.dynamic ? "at most " + std::to_string(geo.max_height) + "x" + std::to_string(geo.max_width)
                             : std::to_string(geo.height) + "x" + std::to_string(geo.width)) +
                "); model.json preprocess.resize.scale does not match the engine");
  if (pp.pad_stage == PadStage::kBeforeNormalize &&
      (pp.pad_value < 0 || pp.pad_value > 255 || pp.pad_value != std::round(pp.pad_value)))
    throw Error("preprocess: pad_value " + std::to_string(pp.pad_value) +
                " must be an integer in 0..255 when padding the uint8 image (pad_stage before_normalize)");
  return plan;
}

bool needs_channel_flip(const ImageView& view, const PreprocessConfig& pp) {
  return view.order != (pp.bgr_to_rgb ? PixelOrder::kRGB : PixelOrder::kBGR);
}

int64_t row_stride_of(const ImageView& view) { return view.row_stride ? view.row_stride : view.width * 3; }

// The libtorch path (CPU engines, and CUDA engines of a runtime built without CUDA kernels):
// resize, flip, normalise and pad with tensor ops on `device`.
PreprocessedBatch preprocess_with_tensor_ops(const std::vector<ImageView>& images, BatchPlan plan,
                                             const ModelConfig& config, const torch::Device& device) {
  const PreprocessConfig& pp = config.preprocess;
  const int64_t n = static_cast<int64_t>(images.size());
  std::vector<torch::Tensor> resized;
  for (int64_t i = 0; i < n; ++i) {
    const ImageView& view = images[i];
    torch::Tensor hwc = torch::from_blob(const_cast<uint8_t*>(view.data), {view.height, view.width, 3},
                                         {row_stride_of(view), 3, 1}, torch::kByte);
    if (!device.is_cpu()) hwc = hwc.to(device);
    torch::Tensor img = resize_bilinear_u8(hwc, plan.metas[i].resized.height, plan.metas[i].resized.width);
    if (needs_channel_flip(view, pp)) img = img.flip(2);
    resized.push_back(img);
  }

  const auto f32 = torch::TensorOptions().dtype(torch::kFloat).device(device);
  const torch::Tensor mean = torch::tensor({pp.mean[0], pp.mean[1], pp.mean[2]}).to(device).view({3, 1, 1});
  const torch::Tensor stdev = torch::tensor({pp.std[0], pp.std[1], pp.std[2]}).to(device).view({3, 1, 1});
  torch::Tensor out;
  if (pp.pad_stage == PadStage::kAfterNormalize) {
    out = torch::full({n, 3, plan.pad_h, plan.pad_w}, pp.pad_value, f32);
    for (int64_t i = 0; i < n; ++i) {
      const torch::Tensor chw = resized[i].permute({2, 0, 1}).to(torch::kFloat);
      out[i].narrow(1, 0, chw.size(1)).narrow(2, 0, chw.size(2)).copy_((chw - mean) / stdev);
    }
  } else {
    torch::Tensor canvas = torch::full({n, plan.pad_h, plan.pad_w, 3}, static_cast<int64_t>(pp.pad_value),
                                       torch::TensorOptions().dtype(torch::kByte).device(device));
    for (int64_t i = 0; i < n; ++i)
      canvas[i].narrow(0, 0, resized[i].size(0)).narrow(1, 0, resized[i].size(1)).copy_(resized[i]);
    out = (canvas.permute({0, 3, 1, 2}).to(torch::kFloat) - mean) / stdev;
  }
  PreprocessedBatch batch;
  batch.images = out.to(dtype_from_name(config.dtype)).contiguous();
  if (pp.padding_mask) {
    torch::Tensor masks =
        torch::ones({n, plan.pad_h, plan.pad_w}, torch::TensorOptions().dtype(torch::kBool).device(device));
    for (int64_t i = 0; i < n; ++i)
      masks[i].narrow(0, 0, plan.metas[i].resized.height).narrow(1, 0, plan.metas[i].resized.width).fill_(false);
    batch.masks = masks;
  }
  batch.metas = std::move(plan.metas);
  return batch;
}

#ifdef CODETR_RUNTIME_CUDA
// The CUDA path: the batch's images packed row by row into one pinned staging buffer (torch's
// caching host allocator: reused across calls, and not handed out again before the copy that
// reads it has finished), one host-to-device copy, then one fused kernel per image writing its
// slot of the batch tensor (and of the mask), all on the current stream.
PreprocessedBatch preprocess_with_cuda_kernel(const std::vector<ImageView>& images, BatchPlan plan,
                                              const ModelConfig& config, const torch::Device& device) {
  const PreprocessConfig& pp = config.preprocess;
  cuda::ImageDtype dtype;
  if (config.dtype == "float32") dtype = cuda::ImageDtype::kFloat32;
  else if (config.dtype == "float16") dtype = cuda::ImageDtype::kFloat16;
  else if (config.dtype == "bfloat16") dtype = cuda::ImageDtype::kBFloat16;
  else throw Error("preprocess: model.json dtype '" + config.dtype + "' is not an image dtype (float32, float16, bfloat16)");

  const c10::DeviceIndex index = device.has_index() ? device.index() : c10::cuda::current_device();
  const c10::cuda::CUDAGuard device_guard(index);
  const int64_t n = static_cast<int64_t>(images.size());
  std::vector<int64_t> image_offsets(n);
  int64_t total_bytes = 0;
  for (int64_t i = 0; i < n; ++i) {
    image_offsets[i] = total_bytes;
    total_bytes += images[i].height * images[i].width * 3;
  }
  torch::Tensor staging;
  try {
    staging = torch::empty({total_bytes}, torch::TensorOptions().dtype(torch::kByte).pinned_memory(true));
  } catch (const c10::Error& e) {
    throw Error("preprocess (CUDA): allocating " + std::to_string(total_bytes) +
                " bytes of pinned staging memory failed: " + e.what_without_backtrace());
  }
  uint8_t* packed = staging.data_ptr<uint8_t>();
  for (int64_t i = 0; i < n; ++i) {
    const ImageView& view = images[i];
    const int64_t row_bytes = view.width * 3, stride = row_stride_of(view);
    uint8_t* dst = packed + image_offsets[i];
    if (stride == row_bytes) {
      std::memcpy(dst, view.data, static_cast<size_t>(row_bytes * view.height));
    } else {
      for (int64_t y = 0; y < view.height; ++y)
        std::memcpy(dst + y * row_bytes, view.data + y * stride, static_cast<size_t>(row_bytes));
    }
  }
  const torch::Device cuda_device(torch::kCUDA, index);
  torch::Tensor pixels;
  try {
    pixels = torch::empty({total_bytes}, torch::TensorOptions().dtype(torch::kByte).device(cuda_device))
                 .copy_(staging, /*non_blocking=*/true);
  } catch (const c10::Error& e) {
    throw Error("preprocess (CUDA): uploading " + std::to_string(total_bytes) +
                " image bytes failed: " + e.what_without_backtrace());
  }

  PreprocessedBatch batch;
  batch.images = torch::empty({n, 3, plan.pad_h, plan.pad_w},
                              torch::TensorOptions().dtype(dtype_from_name(config.dtype)).device(cuda_device));
  if (pp.padding_mask)
    batch.masks = torch::empty({n, plan.pad_h, plan.pad_w}, torch::TensorOptions().dtype(torch::kBool).device(cuda_device));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(index).stream();
  const int64_t plane = plan.pad_h * plan.pad_w;
  for (int64_t i = 0; i < n; ++i) {
    cuda::PreprocessLaunch launch;
    launch.image = pixels.data_ptr<uint8_t>() + image_offsets[i];
    launch.in_height = static_cast<int>(images[i].height);
    launch.in_width = static_cast<int>(images[i].width);
    launch.row_stride = images[i].width * 3;
    launch.resized_height = static_cast<int>(plan.metas[i].resized.height);
    launch.resized_width = static_cast<int>(plan.metas[i].resized.width);
    launch.pad_height = static_cast<int>(plan.pad_h);
    launch.pad_width = static_cast<int>(plan.pad_w);
    launch.flip_channels = needs_channel_flip(images[i], pp);
    for (int c = 0; c < 3; ++c) {
      launch.mean[c] = pp.mean[c];
      launch.std[c] = pp.std[c];
      // Before normalisation the uint8 canvas holds pad_value, which is then normalised like
      // the pixels; after it, the fp32 tensor holds pad_value itself.
      launch.pad_output[c] =
          pp.pad_stage == PadStage::kBeforeNormalize ? (pp.pad_value - pp.mean[c]) / pp.std[c] : pp.pad_value;
    }
    launch.dtype = dtype;
    launch.output = static_cast<char*>(batch.images.data_ptr()) + i * 3 * plane * batch.images.element_size();
    launch.mask = pp.padding_mask ? batch.masks.data_ptr<bool>() + i * plane : nullptr;
    cuda::launch_preprocess(launch, stream);
  }
  batch.metas = std::move(plan.metas);
  return batch;
}
#endif

}  // namespace

torch::ScalarType dtype_from_name(const std::string& name) {
  if (name == "float32") return torch::kFloat;
  if (name == "float16") return torch::kHalf;
  if (name == "bfloat16") return torch::kBFloat16;
  if (name == "bool") return torch::kBool;
  if (name == "int64") return torch::kLong;
  throw Error("unknown dtype name '" + name + "'");
}

Size2 rescale_size(Size2 original, int64_t scale_long, int64_t scale_short) {
  if (original.height < 1 || original.width < 1)
    throw Error("cannot rescale an empty image (" + std::to_string(original.height) + "x" +
                std::to_string(original.width) + ")");
  const double long_edge = static_cast<double>(std::max(scale_long, scale_short));
  const double short_edge = static_cast<double>(std::min(scale_long, scale_short));
  const double h = static_cast<double>(original.height), w = static_cast<double>(original.width);
  const double factor = std::min(long_edge / std::max(h, w), short_edge / std::min(h, w));
  // int(x + 0.5) truncates toward zero, like Python's int() on a positive float.
  return Size2{static_cast<int64_t>(h * factor + 0.5), static_cast<int64_t>(w * factor + 0.5)};
}

torch::Tensor resize_bilinear_u8(const torch::Tensor& image, int64_t out_height, int64_t out_width) {
  if (image.dim() != 3 || image.size(2) != 3)
    throw Error("resize: expected an HxWx3 image tensor, got shape " + c10::str(image.sizes()));
  if (image.scalar_type() != torch::kByte)
    throw Error("resize: expected a uint8 image tensor, got " + std::string(c10::toString(image.scalar_type())));
  if (image.size(0) < 1 || image.size(1) < 1 || out_height < 1 || out_width < 1)
    throw Error("resize: sizes must be positive (from " + c10::str(image.sizes()) + " to " +
                std::to_string(out_height) + "x" + std::to_string(out_width) + ")");
  const int64_t in_h = image.size(0), in_w = image.size(1);
  if (in_h == out_height && in_w == out_width) return image.contiguous().clone();

  const torch::Device device = image.device();
  const AxisTable xs = axis_table(in_w, out_width, /*clamp_weights_at_border=*/true, device);
  const AxisTable ys = axis_table(in_h, out_height, /*clamp_weights_at_border=*/false, device);

  // Horizontal pass: every source row, out_width columns, value * 2^11 in int32.
  const torch::Tensor src = image.to(torch::kInt);
  const torch::Tensor horizontal = src.index_select(1, xs.index0) * xs.weight0.view({1, -1, 1}) +
                                   src.index_select(1, xs.index1) * xs.weight1.view({1, -1, 1});

  // Vertical pass with OpenCV's 8-bit rounding: each product is taken as (w * (S >> 4)) >> 16,
  // the two are summed, then (+2) >> 2 rounds away the remaining 2 bits.
  const torch::Tensor top = horizontal.index_select(0, ys.index0);
  const torch::Tensor bottom = horizontal.index_select(0, ys.index1);
  const torch::Tensor w0 = ys.weight0.view({-1, 1, 1});
  const torch::Tensor w1 = ys.weight1.view({-1, 1, 1});
  torch::Tensor out = torch::bitwise_right_shift(w0 * torch::bitwise_right_shift(top, 4), 16) +
                      torch::bitwise_right_shift(w1 * torch::bitwise_right_shift(bottom, 4), 16);
  out = torch::bitwise_right_shift(out + 2, 2);
  return out.clamp(0, 255).to(torch::kByte);
}

void check_image(const ImageView& image, const std::string& what) {
  if (image.data == nullptr) throw Error(what + ": image data is null");
  if (image.height < 1 || image.width < 1)
    throw Error(what + ": image is empty (" + std::to_string(image.height) + "x" + std::to_string(image.width) + ")");
  if (image.row_stride != 0 && image.row_stride < image.width * 3)
    throw Error(what + ": row stride " + std::to_string(image.row_stride) + " bytes is smaller than width*3 = " +
                std::to_string(image.width * 3));
}

PreprocessedBatch preprocess(const std::vector<ImageView>& images, const ModelConfig& config,
                             const torch::Device& device) {
  if (images.empty()) throw Error("preprocess: no images");
  BatchPlan plan = plan_batch(images, config);
#ifdef CODETR_RUNTIME_CUDA
  if (device.is_cuda()) return preprocess_with_cuda_kernel(images, std::move(plan), config, device);
#endif
  return preprocess_with_tensor_ops(images, std::move(plan), config, device);
}

}  // namespace codetr
