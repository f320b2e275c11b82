#include "codetr/preprocess.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "codetr/error.h"

namespace codetr {
namespace {

// OpenCV's INTER_LINEAR for 8-bit images works in fixed point with 11 fractional bits.
constexpr int kCoefBits = 11;
constexpr float kCoefScale = static_cast<float>(1 << kCoefBits);

// saturate_cast<short>(float): round half to even (cvRound), then clamp.
int32_t coef_to_fixed(float coef) {
  long v = std::lrint(coef * kCoefScale);
  return static_cast<int32_t>(std::clamp<long>(v, std::numeric_limits<int16_t>::min(),
                                               std::numeric_limits<int16_t>::max()));
}

// Source taps and fixed-point weights along one axis. `clamp_weights_at_border` reproduces the
// horizontal pass, which pins the weight of out-of-range taps to the border pixel; the vertical
// pass keeps the fractional weight and clamps the row index instead.
struct AxisTable {
  std::vector<int64_t> index0, index1;
  std::vector<int32_t> weight0, weight1;
};

AxisTable axis_table(int64_t in_size, int64_t out_size, bool clamp_weights_at_border) {
  AxisTable t;
  t.index0.resize(out_size);
  t.index1.resize(out_size);
  t.weight0.resize(out_size);
  t.weight1.resize(out_size);
  const double inv_scale = static_cast<double>(out_size) / static_cast<double>(in_size);
  const double scale = 1.0 / inv_scale;
  for (int64_t d = 0; d < out_size; ++d) {
    float f = static_cast<float>((d + 0.5) * scale - 0.5);
    int64_t s = static_cast<int64_t>(std::floor(f));
    f -= static_cast<float>(s);
    if (clamp_weights_at_border) {
      if (s < 0) f = 0.f, s = 0;
      if (s >= in_size - 1) f = 0.f, s = in_size - 1;
    }
    t.index0[d] = std::clamp<int64_t>(s, 0, in_size - 1);
    t.index1[d] = std::clamp<int64_t>(s + 1, 0, in_size - 1);
    t.weight0[d] = coef_to_fixed(1.f - f);
    t.weight1[d] = coef_to_fixed(f);
  }
  return t;
}

torch::Tensor to_device(const std::vector<int64_t>& v, const torch::Device& device) {
  return torch::tensor(v, torch::kLong).to(device);
}
torch::Tensor to_device(const std::vector<int32_t>& v, const torch::Device& device) {
  return torch::tensor(v, torch::kInt).to(device);
}

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
  const AxisTable xs = axis_table(in_w, out_width, /*clamp_weights_at_border=*/true);
  const AxisTable ys = axis_table(in_h, out_height, /*clamp_weights_at_border=*/false);

  // Horizontal pass: every source row, out_width columns, value * 2^11 in int32.
  const torch::Tensor src = image.to(torch::kInt);
  const torch::Tensor horizontal =
      src.index_select(1, to_device(xs.index0, device)) * to_device(xs.weight0, device).view({1, -1, 1}) +
      src.index_select(1, to_device(xs.index1, device)) * to_device(xs.weight1, device).view({1, -1, 1});

  // Vertical pass with OpenCV's 8-bit rounding: each product is taken as (w * (S >> 4)) >> 16,
  // the two are summed, then (+2) >> 2 rounds away the remaining 2 bits.
  const torch::Tensor top = horizontal.index_select(0, to_device(ys.index0, device));
  const torch::Tensor bottom = horizontal.index_select(0, to_device(ys.index1, device));
  const torch::Tensor w0 = to_device(ys.weight0, device).view({-1, 1, 1});
  const torch::Tensor w1 = to_device(ys.weight1, device).view({-1, 1, 1});
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
  const PreprocessConfig& pp = config.preprocess;
  const InputGeometry& geo = config.input;
  PreprocessedBatch batch;

  std::vector<torch::Tensor> resized;
  int64_t max_h = 0, max_w = 0;
  for (size_t i = 0; i < images.size(); ++i) {
    const ImageView& view = images[i];
    check_image(view, "image " + std::to_string(i));
    const int64_t stride = view.row_stride ? view.row_stride : view.width * 3;
    torch::Tensor hwc = torch::from_blob(const_cast<uint8_t*>(view.data), {view.height, view.width, 3},
                                         {stride, 3, 1}, torch::kByte);
    if (!device.is_cpu()) hwc = hwc.to(device);
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
    // mmdet recomputes the factors from the integer sizes (not the rescale factor).
    meta.w_scale = static_cast<float>(static_cast<double>(meta.resized.width) / view.width);
    meta.h_scale = static_cast<float>(static_cast<double>(meta.resized.height) / view.height);
    torch::Tensor img = resize_bilinear_u8(hwc, meta.resized.height, meta.resized.width);
    const PixelOrder wanted = pp.bgr_to_rgb ? PixelOrder::kRGB : PixelOrder::kBGR;
    if (view.order != wanted) img = img.flip(2);
    max_h = std::max(max_h, meta.resized.height);
    max_w = std::max(max_w, meta.resized.width);
    resized.push_back(img);
    batch.metas.push_back(meta);
  }

  int64_t pad_h, pad_w;
  if (!geo.dynamic) {
    pad_h = geo.height;
    pad_w = geo.width;
  } else if (pp.pad_height > 0) {
    pad_h = pp.pad_height;
    pad_w = pp.pad_width;
  } else {
    const int64_t div = std::max<int64_t>(pp.pad_size_divisor, geo.multiple);
    pad_h = std::max((max_h + div - 1) / div * div, geo.min_height);
    pad_w = std::max((max_w + div - 1) / div * div, geo.min_width);
  }
  if (max_h > pad_h || max_w > pad_w || (geo.dynamic && (pad_h > geo.max_height || pad_w > geo.max_width)))
    throw Error("preprocess: resized image " + std::to_string(max_h) + "x" + std::to_string(max_w) +
                " does not fit the engine input (" +
                (geo.dynamic ? "at most " + std::to_string(geo.max_height) + "x" + std::to_string(geo.max_width)
                             : std::to_string(geo.height) + "x" + std::to_string(geo.width)) +
                "); model.json preprocess.resize.scale does not match the engine");

  const auto f32 = torch::TensorOptions().dtype(torch::kFloat).device(device);
  const torch::Tensor mean = torch::tensor({pp.mean[0], pp.mean[1], pp.mean[2]}).to(device).view({3, 1, 1});
  const torch::Tensor stdev = torch::tensor({pp.std[0], pp.std[1], pp.std[2]}).to(device).view({3, 1, 1});
  const int64_t n = static_cast<int64_t>(images.size());
  torch::Tensor out;
  if (pp.pad_stage == PadStage::kAfterNormalize) {
    out = torch::full({n, 3, pad_h, pad_w}, pp.pad_value, f32);
    for (int64_t i = 0; i < n; ++i) {
      const torch::Tensor chw = resized[i].permute({2, 0, 1}).to(torch::kFloat);
      out[i].narrow(1, 0, chw.size(1)).narrow(2, 0, chw.size(2)).copy_((chw - mean) / stdev);
    }
  } else {
    if (pp.pad_value < 0 || pp.pad_value > 255 || pp.pad_value != std::round(pp.pad_value))
      throw Error("preprocess: pad_value " + std::to_string(pp.pad_value) +
                  " must be an integer in 0..255 when padding the uint8 image (pad_stage before_normalize)");
    torch::Tensor canvas = torch::full({n, pad_h, pad_w, 3}, static_cast<int64_t>(pp.pad_value),
                                       torch::TensorOptions().dtype(torch::kByte).device(device));
    for (int64_t i = 0; i < n; ++i)
      canvas[i].narrow(0, 0, resized[i].size(0)).narrow(1, 0, resized[i].size(1)).copy_(resized[i]);
    out = (canvas.permute({0, 3, 1, 2}).to(torch::kFloat) - mean) / stdev;
  }
  batch.images = out.to(dtype_from_name(config.dtype)).contiguous();

  if (pp.padding_mask) {
    torch::Tensor masks = torch::ones({n, pad_h, pad_w}, torch::TensorOptions().dtype(torch::kBool).device(device));
    for (int64_t i = 0; i < n; ++i)
      masks[i].narrow(0, 0, batch.metas[i].resized.height).narrow(1, 0, batch.metas[i].resized.width).fill_(false);
    batch.masks = masks;
  }
  return batch;
}

}  // namespace codetr
