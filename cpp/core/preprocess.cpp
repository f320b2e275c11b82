// mmdet's test pipeline for the Co-DETR presets, on host arrays: the plan (resize rule, static
// engine fit, padded size) and the pixels (cv2.resize-exact, BGR->RGB, normalise, pad, mask).
#include <algorithm>
#include <cmath>
#include <cstring>

#include "core.h"
#include "resize_taps.h"

namespace codetr::core {
namespace {

std::string size_str(int64_t h, int64_t w) { return std::to_string(h) + "x" + std::to_string(w); }

int64_t round_up(int64_t v, int64_t multiple) { return (v + multiple - 1) / multiple * multiple; }

}  // namespace

Size2 rescale_size(Size2 original, int64_t scale_long, int64_t scale_short) {
  if (original.height < 1 || original.width < 1)
    throw Error("cannot rescale an empty image (" + size_str(original.height, original.width) + ")");
  const double long_edge = static_cast<double>(std::max(scale_long, scale_short));
  const double short_edge = static_cast<double>(std::min(scale_long, scale_short));
  const double h = static_cast<double>(original.height), w = static_cast<double>(original.width);
  const double factor = std::min(long_edge / std::max(h, w), short_edge / std::min(h, w));
  // int(x + 0.5) truncates toward zero, like Python's int() on a positive float.
  return Size2{static_cast<int64_t>(h * factor + 0.5), static_cast<int64_t>(w * factor + 0.5)};
}

void check_image(const ImageView& image, const std::string& what) {
  if (image.data == nullptr) throw Error(what + ": image data is null");
  if (image.height < 1 || image.width < 1) throw Error(what + ": image is empty (" + size_str(image.height, image.width) + ")");
  if (image.row_stride != 0 && image.row_stride < image.width * 3)
    throw Error(what + ": row stride " + std::to_string(image.row_stride) + " bytes is smaller than width*3 = " +
                std::to_string(image.width * 3));
}

ImageMeta plan_image(const ImageView& image, const ModelConfig& config, const std::string& what) {
  check_image(image, what);
  const PreprocessConfig& pp = config.preprocess;
  const InputGeometry& geo = config.input;
  ImageMeta meta;
  meta.original = {image.height, image.width};
  meta.resized = pp.keep_ratio ? rescale_size(meta.original, pp.scale_long, pp.scale_short) : Size2{pp.scale_h, pp.scale_w};
  if (!geo.dynamic && (meta.resized.height > geo.height || meta.resized.width > geo.width)) {
    // mmcv's (long, short) rule lets a portrait image outgrow a landscape static engine (and vice
    // versa); such images are scaled to fit the engine instead, the aspect ratio kept.
    const double fit = std::min(static_cast<double>(geo.height) / static_cast<double>(image.height),
                                static_cast<double>(geo.width) / static_cast<double>(image.width));
    meta.resized = {std::min<int64_t>(static_cast<int64_t>(static_cast<double>(image.height) * fit + 0.5), geo.height),
                    std::min<int64_t>(static_cast<int64_t>(static_cast<double>(image.width) * fit + 0.5), geo.width)};
  }
  if (meta.resized.height < 1 || meta.resized.width < 1)
    throw Error(what + " (" + size_str(image.height, image.width) + ") resizes to " +
                size_str(meta.resized.height, meta.resized.width) + ": too thin for the model's resize scale");
  if (pp.pad_height > 0 && (meta.resized.height > pp.pad_height || meta.resized.width > pp.pad_width))
    throw Error(what + ": resized " + size_str(meta.resized.height, meta.resized.width) + " exceeds the pad size " +
                size_str(pp.pad_height, pp.pad_width) + " (model.json preprocess.resize.scale and pad.size disagree)");
  // mmdet recomputes the factors from the integer sizes (not the rescale factor).
  meta.w_scale = static_cast<float>(static_cast<double>(meta.resized.width) / static_cast<double>(image.width));
  meta.h_scale = static_cast<float>(static_cast<double>(meta.resized.height) / static_cast<double>(image.height));
  return meta;
}

Size2 padded_size(const ImageMeta& meta, const ModelConfig& config, const std::string& what) {
  const PreprocessConfig& pp = config.preprocess;
  const InputGeometry& geo = config.input;
  if (!geo.dynamic) return {geo.height, geo.width};
  Size2 pad;
  if (pp.pad_height > 0) {
    pad = {pp.pad_height, pp.pad_width};
  } else {
    const int64_t div = std::max<int64_t>(pp.pad_size_divisor, 1);
    pad = {round_up(meta.resized.height, div), round_up(meta.resized.width, div)};
  }
  pad = {std::max(round_up(pad.height, geo.multiple), geo.min_height),
         std::max(round_up(pad.width, geo.multiple), geo.min_width)};
  if (pad.height > geo.max_height || pad.width > geo.max_width)
    throw Error(what + ": padded input " + size_str(pad.height, pad.width) + " exceeds the engine's maximum " +
                size_str(geo.max_height, geo.max_width) + " (export a larger --max-height/--max-width)");
  return pad;
}

BatchPlan plan_batch(const std::vector<ImageView>& images, const ModelConfig& config) {
  if (images.empty()) throw Error("preprocess: no images");
  BatchPlan plan;
  for (size_t i = 0; i < images.size(); ++i) {
    const std::string what = "image " + std::to_string(i);
    plan.metas.push_back(plan_image(images[i], config, what));
    const Size2 pad = padded_size(plan.metas.back(), config, what);
    plan.pad_h = std::max(plan.pad_h, pad.height);
    plan.pad_w = std::max(plan.pad_w, pad.width);
  }
  return plan;
}

bool needs_channel_flip(const ImageView& image, const PreprocessConfig& config) {
  return image.order != (config.bgr_to_rgb ? PixelOrder::kRGB : PixelOrder::kBGR);
}

int64_t row_stride_of(const ImageView& image) { return image.row_stride ? image.row_stride : image.width * 3; }

void resize_u8(const ImageView& src, Size2 out, uint8_t* dst) {
  const int64_t in_h = src.height, in_w = src.width, out_h = out.height, out_w = out.width;
  const int64_t stride = row_stride_of(src);
  if (in_h == out_h && in_w == out_w) {
    for (int64_t y = 0; y < in_h; ++y) std::memcpy(dst + y * in_w * 3, src.data + y * stride, static_cast<size_t>(in_w * 3));
    return;
  }
  if (resize::is_exact_half(in_h, in_w, out_h, out_w)) {
    for (int64_t y = 0; y < out_h; ++y) {
      const uint8_t* r0 = src.data + (2 * y) * stride;
      const uint8_t* r1 = r0 + stride;
      for (int64_t x = 0; x < out_w; ++x)
        for (int c = 0; c < 3; ++c)
          dst[(y * out_w + x) * 3 + c] = resize::area_half(r0[6 * x + c], r0[6 * x + 3 + c], r1[6 * x + c], r1[6 * x + 3 + c]);
    }
    return;
  }
  // Horizontal taps once; then each output row blends two horizontally resized source rows,
  // computed on demand and kept while consecutive output rows reuse them.
  std::vector<resize::AxisTap> xs(static_cast<size_t>(out_w));
  const double sx = resize::axis_scale(in_w, out_w), sy = resize::axis_scale(in_h, out_h);
  for (int64_t x = 0; x < out_w; ++x)
    xs[x] = resize::axis_tap(static_cast<int>(x), static_cast<int>(in_w), sx, /*clamp_weights_at_border=*/true);
  std::vector<int32_t> rows[2] = {std::vector<int32_t>(out_w * 3), std::vector<int32_t>(out_w * 3)};
  int64_t row_of[2] = {-1, -1};
  auto horizontal = [&](int64_t sy_index) -> const int32_t* {
    for (int k = 0; k < 2; ++k)
      if (row_of[k] == sy_index) return rows[k].data();
    // Replace the buffer not holding the other row this output row needs (the older one).
    const int k = row_of[0] < row_of[1] ? 0 : 1;
    const uint8_t* s = src.data + sy_index * stride;
    int32_t* r = rows[k].data();
    for (int64_t x = 0; x < out_w; ++x)
      for (int c = 0; c < 3; ++c)
        r[x * 3 + c] = s[xs[x].index0 * 3 + c] * xs[x].weight0 + s[xs[x].index1 * 3 + c] * xs[x].weight1;
    row_of[k] = sy_index;
    return r;
  };
  for (int64_t y = 0; y < out_h; ++y) {
    const resize::AxisTap t = resize::axis_tap(static_cast<int>(y), static_cast<int>(in_h), sy, false);
    const int32_t* top = horizontal(t.index0);
    const int32_t* bottom = horizontal(t.index1);
    uint8_t* d = dst + y * out_w * 3;
    for (int64_t i = 0; i < out_w * 3; ++i) d[i] = resize::vertical_blend(top[i], bottom[i], t.weight0, t.weight1);
  }
}

void preprocess_host(const std::vector<ImageView>& images, const BatchPlan& plan, const PreprocessConfig& pp,
                     float* images_out, bool* masks_out) {
  const int64_t H = plan.pad_h, W = plan.pad_w, plane = H * W;
  std::vector<uint8_t> resized;
  for (size_t i = 0; i < images.size(); ++i) {
    const ImageMeta& meta = plan.metas[i];
    const int64_t rh = meta.resized.height, rw = meta.resized.width;
    resized.resize(static_cast<size_t>(rh * rw * 3));
    resize_u8(images[i], meta.resized, resized.data());
    const bool flip = needs_channel_flip(images[i], pp);
    float* out = images_out + static_cast<int64_t>(i) * 3 * plane;
    for (int c = 0; c < 3; ++c) {
      const int src_c = flip ? 2 - c : c;
      // Before normalisation the uint8 canvas holds pad_value, which is then normalised like the
      // pixels; after it, the fp32 tensor holds pad_value itself.
      const float pad = pp.pad_stage == PadStage::kBeforeNormalize ? (pp.pad_value - pp.mean[c]) / pp.std[c] : pp.pad_value;
      float* o = out + c * plane;
      for (int64_t y = 0; y < H; ++y)
        for (int64_t x = 0; x < W; ++x)
          o[y * W + x] = y < rh && x < rw ? (static_cast<float>(resized[(y * rw + x) * 3 + src_c]) - pp.mean[c]) / pp.std[c]
                                          : pad;
    }
    if (masks_out != nullptr) {
      bool* m = masks_out + static_cast<int64_t>(i) * plane;
      for (int64_t y = 0; y < H; ++y)
        for (int64_t x = 0; x < W; ++x) m[y * W + x] = !(y < rh && x < rw);
    }
  }
}

}  // namespace codetr::core
