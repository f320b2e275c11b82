#include <gtest/gtest.h>

#include <random>

#include "core.h"

namespace {

namespace core = codetr::core;

// An HxW image with the same value in all 3 channels, row-major.
std::vector<uint8_t> gray(const std::vector<int>& values) {
  std::vector<uint8_t> out;
  for (int v : values) out.insert(out.end(), 3, static_cast<uint8_t>(v));
  return out;
}

// core::resize_u8 of an HxW gray image; returns channel 0.
std::vector<int> resize(const std::vector<int>& values, int64_t h, int64_t w, int64_t oh, int64_t ow) {
  const std::vector<uint8_t> src = gray(values);
  std::vector<uint8_t> dst(static_cast<size_t>(oh * ow * 3));
  core::resize_u8(codetr::ImageView{src.data(), h, w}, {oh, ow}, dst.data());
  std::vector<int> out;
  for (size_t i = 0; i < dst.size(); i += 3) out.push_back(dst[i]);
  return out;
}

TEST(RescaleSize, FollowsMmcvRule) {
  // 333x517 to (1333, 800): the short side binds, factor 800/333.
  core::Size2 s = core::rescale_size({333, 517}, 1333, 800);
  EXPECT_EQ(s.height, 800);
  EXPECT_EQ(s.width, 1242);
  s = core::rescale_size({517, 333}, 800, 1333);  // (long, short) in either order
  EXPECT_EQ(s.height, 1242);
  EXPECT_EQ(s.width, 800);
  s = core::rescale_size({100, 1000}, 1333, 800);  // the long side binds: factor 1.333
  EXPECT_EQ(s.height, 133);
  EXPECT_EQ(s.width, 1333);
  s = core::rescale_size({480, 640}, 1152, 768);  // 768/480 = 1.6 vs 1152/640 = 1.8
  EXPECT_EQ(s.height, 768);
  EXPECT_EQ(s.width, 1024);
  EXPECT_THROW(core::rescale_size({0, 10}, 1333, 800), codetr::Error);
}

TEST(ResizeBilinear, UpscaleRowHalfPixelCentres) {
  // 1x2 -> 1x4: source x = (dx + .5) / 2 - .5 = -.25, .25, .75, 1.25 -> 0, 25, 75, 100.
  EXPECT_EQ(resize({0, 100}, 1, 2, 1, 4), (std::vector<int>{0, 25, 75, 100}));
}

TEST(ResizeBilinear, DownscaleAveragesWithOpenCVRounding) {
  // 3x3 -> 1x1 samples the centre pixel exactly.
  EXPECT_EQ(resize({0, 0, 0, 0, 77, 0, 0, 0, 0}, 3, 3, 1, 1), (std::vector<int>{77}));
  // 4x2 -> 2x1 (not an exact 2x on both axes: bilinear). Columns: centre of 0..1 -> mean.
  EXPECT_EQ(resize({0, 100, 0, 100, 50, 150, 50, 150}, 4, 2, 2, 1), (std::vector<int>{50, 100}));
}

TEST(ResizeBilinear, ExactHalfIsOpenCVsAreaAverage) {
  // cv::resize switches to INTER_AREA when both axes shrink by exactly 2: (a + b + c + d + 2) >> 2.
  EXPECT_EQ(resize({0, 1, 1, 1}, 2, 2, 1, 1), (std::vector<int>{1}));       // (3 + 2) >> 2
  EXPECT_EQ(resize({0, 0, 0, 1}, 2, 2, 1, 1), (std::vector<int>{0}));       // (1 + 2) >> 2
  EXPECT_EQ(resize({10, 20, 30, 41, 1, 2, 3, 4}, 2, 4, 1, 2), (std::vector<int>{(10 + 20 + 1 + 2 + 2) >> 2, (30 + 41 + 3 + 4 + 2) >> 2}));
}

TEST(ResizeBilinear, VerticalThirds) {
  // 2x1 -> 3x1: source y = -1/6, 1/2, 7/6: the first and last rows clamp to the border row.
  EXPECT_EQ(resize({30, 90}, 2, 1, 3, 1), (std::vector<int>{30, 60, 90}));
}

TEST(ResizeBilinear, SameSizeIsACopyAndStrideIsHonoured) {
  std::mt19937 rng(0);
  std::vector<uint8_t> img(5 * 7 * 3);
  for (auto& v : img) v = static_cast<uint8_t>(rng() % 256);
  std::vector<uint8_t> out(img.size());
  core::resize_u8(codetr::ImageView{img.data(), 5, 7}, {5, 7}, out.data());
  EXPECT_EQ(out, img);
  // The same pixels behind a 30-byte row stride resize identically.
  std::vector<uint8_t> wide(5 * 30, 0);
  for (int y = 0; y < 5; ++y) std::copy(img.begin() + y * 21, img.begin() + (y + 1) * 21, wide.begin() + y * 30);
  std::vector<uint8_t> a(9 * 13 * 3), b(9 * 13 * 3);
  core::resize_u8(codetr::ImageView{img.data(), 5, 7}, {9, 13}, a.data());
  core::resize_u8(codetr::ImageView{wide.data(), 5, 7, codetr::PixelOrder::kBGR, 30}, {9, 13}, b.data());
  EXPECT_EQ(a, b);
}

codetr::ModelConfig small_config() {
  codetr::ModelConfig c;
  c.dtype = "float32";
  c.input.batch = c.input.min_batch = c.input.max_batch = 2;
  c.input.height = 8;
  c.input.width = 12;
  c.preprocess.scale_long = c.preprocess.scale_w = 12;
  c.preprocess.scale_short = c.preprocess.scale_h = 8;
  c.preprocess.pad_value = 0.f;
  c.preprocess.mean[0] = 10.f, c.preprocess.mean[1] = 20.f, c.preprocess.mean[2] = 30.f;
  c.preprocess.std[0] = 2.f, c.preprocess.std[1] = 4.f, c.preprocess.std[2] = 5.f;
  c.preprocess.padding_mask = true;
  return c;
}

struct Batch {
  core::BatchPlan plan;
  std::vector<float> images;
  std::vector<bool> masks;
  float at(int64_t i, int64_t c, int64_t y, int64_t x) const {
    return images[((i * 3 + c) * plan.pad_h + y) * plan.pad_w + x];
  }
};

Batch preprocess(const std::vector<codetr::ImageView>& views, const codetr::ModelConfig& cfg) {
  Batch b;
  b.plan = core::plan_batch(views, cfg);
  const size_t plane = static_cast<size_t>(b.plan.pad_h * b.plan.pad_w);
  b.images.resize(views.size() * 3 * plane);
  std::unique_ptr<bool[]> masks(new bool[views.size() * plane]);
  core::preprocess_host(views, b.plan, cfg.preprocess, b.images.data(), masks.get());
  b.masks.assign(masks.get(), masks.get() + views.size() * plane);
  return b;
}

TEST(Preprocess, NormalisesPadsMasksAndConvertsBgr) {
  // A 4x4 BGR image (B=40, G=80, R=130) scales by 2 to 8x8 inside the 8x12 engine input.
  std::vector<uint8_t> pixels;
  for (int i = 0; i < 16; ++i) pixels.insert(pixels.end(), {40, 80, 130});
  const Batch b = preprocess({codetr::ImageView{pixels.data(), 4, 4, codetr::PixelOrder::kBGR, 0}}, small_config());
  ASSERT_EQ(b.plan.pad_h, 8);
  ASSERT_EQ(b.plan.pad_w, 12);
  EXPECT_FLOAT_EQ(b.at(0, 0, 3, 3), (130.f - 10.f) / 2.f);  // R first
  EXPECT_FLOAT_EQ(b.at(0, 1, 7, 7), (80.f - 20.f) / 4.f);
  EXPECT_FLOAT_EQ(b.at(0, 2, 0, 0), (40.f - 30.f) / 5.f);
  EXPECT_FLOAT_EQ(b.at(0, 0, 0, 8), 0.f);  // padding after normalisation
  EXPECT_FALSE(b.masks[7 * 12 + 7]);
  EXPECT_TRUE(b.masks[8]);
  EXPECT_EQ(std::count(b.masks.begin(), b.masks.end(), true), 8 * 4);
  EXPECT_EQ(b.plan.metas[0].resized.height, 8);
  EXPECT_FLOAT_EQ(b.plan.metas[0].w_scale, 2.f);
}

TEST(Preprocess, PadBeforeNormaliseUsesTheUint8PadValue) {
  codetr::ModelConfig c = small_config();
  c.preprocess.pad_stage = codetr::PadStage::kBeforeNormalize;
  c.preprocess.pad_value = 114.f;
  std::vector<uint8_t> pixels(4 * 4 * 3, 200);
  const Batch b = preprocess({codetr::ImageView{pixels.data(), 4, 4, codetr::PixelOrder::kRGB, 0}}, c);
  EXPECT_FLOAT_EQ(b.at(0, 1, 0, 11), (114.f - 20.f) / 4.f);
  EXPECT_FLOAT_EQ(b.at(0, 1, 0, 0), (200.f - 20.f) / 4.f);
}

TEST(Preprocess, KeepRatioFalseResizesToTheScaleAsGiven) {
  codetr::ModelConfig c = small_config();
  c.preprocess.keep_ratio = false;
  c.preprocess.scale_w = 10, c.preprocess.scale_h = 6;  // mmdet's scale is (w, h)
  std::vector<uint8_t> pixels(4 * 4 * 3, 9);
  const core::ImageMeta m = core::plan_image(codetr::ImageView{pixels.data(), 4, 4}, c, "image");
  EXPECT_EQ(m.resized.height, 6);
  EXPECT_EQ(m.resized.width, 10);
  EXPECT_FLOAT_EQ(m.w_scale, 2.5f);
  EXPECT_FLOAT_EQ(m.h_scale, 1.5f);
}

TEST(Preprocess, StaticEngineFitsAPortraitImage) {
  // Portrait 4x2 into the landscape 8x12 engine: 12x6 by mmcv's rule, 8x4 fitted.
  std::vector<uint8_t> portrait(4 * 2 * 3, 7);
  const core::ImageMeta m = core::plan_image(codetr::ImageView{portrait.data(), 4, 2}, small_config(), "image");
  EXPECT_EQ(m.resized.height, 8);
  EXPECT_EQ(m.resized.width, 4);
  EXPECT_FLOAT_EQ(m.h_scale, 2.f);
}

TEST(Preprocess, DynamicPaddedSizeRule) {
  codetr::ModelConfig c = small_config();
  c.input.dynamic = true;
  c.input.min_height = c.input.min_width = 4;
  c.input.max_height = 16;
  c.input.max_width = 24;
  c.input.multiple = 1;
  c.preprocess.pad_size_divisor = 1;
  core::ImageMeta m;
  m.resized = {7, 11};
  EXPECT_EQ(core::padded_size(m, c, "x").height, 7);  // mmdet's single image: no padding
  EXPECT_EQ(core::padded_size(m, c, "x").width, 11);
  c.input.multiple = 4;  // the engine's own multiple rounds up further
  EXPECT_EQ(core::padded_size(m, c, "x").height, 8);
  EXPECT_EQ(core::padded_size(m, c, "x").width, 12);
  m.resized = {2, 3};  // at least the engine minimum
  EXPECT_EQ(core::padded_size(m, c, "x").height, 4);
  m.resized = {17, 3};
  try {
    core::padded_size(m, c, "image 3");
    FAIL() << "no error";
  } catch (const codetr::Error& e) {
    EXPECT_NE(std::string(e.what()).find("image 3: padded input 20x4 exceeds the engine's maximum 16x24"),
              std::string::npos) << e.what();
  }
}

TEST(Preprocess, BatchPadsToItsLargestImage) {
  codetr::ModelConfig c = small_config();
  c.input.dynamic = true;
  c.input.min_height = c.input.min_width = 1;
  c.input.max_height = c.input.max_width = 64;
  c.preprocess.pad_size_divisor = 4;
  c.preprocess.scale_long = 24, c.preprocess.scale_short = 16;
  std::vector<uint8_t> a(2 * 3 * 3, 1), b(3 * 2 * 3, 2);
  const Batch batch = preprocess({codetr::ImageView{a.data(), 2, 3}, codetr::ImageView{b.data(), 3, 2}}, c);
  // 2x3 -> 16x24, 3x2 -> 24x16: both padded to 24x24.
  EXPECT_EQ(batch.plan.pad_h, 24);
  EXPECT_EQ(batch.plan.pad_w, 24);
  EXPECT_TRUE(batch.masks[16 * 24]);           // image 0, row 16
  EXPECT_FALSE(batch.masks[24 * 24 + 23 * 24]);  // image 1, row 23, column 0
}

TEST(Preprocess, RowStrideAndErrors) {
  // A 2x2 view into a wider buffer (row stride 9 bytes) equals the packed image.
  std::vector<uint8_t> wide = {1, 2, 3, 4, 5, 6, 99, 99, 99, 7, 8, 9, 10, 11, 12, 99, 99, 99};
  std::vector<uint8_t> packed = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};
  const auto cfg = small_config();
  EXPECT_EQ(preprocess({codetr::ImageView{wide.data(), 2, 2, codetr::PixelOrder::kRGB, 9}}, cfg).images,
            preprocess({codetr::ImageView{packed.data(), 2, 2, codetr::PixelOrder::kRGB, 0}}, cfg).images);
  EXPECT_THROW(core::plan_batch({codetr::ImageView{nullptr, 2, 2}}, cfg), codetr::Error);
  EXPECT_THROW(core::plan_batch({codetr::ImageView{packed.data(), 0, 2}}, cfg), codetr::Error);
  EXPECT_THROW(core::plan_batch({codetr::ImageView{packed.data(), 2, 2, codetr::PixelOrder::kRGB, 5}}, cfg), codetr::Error);
  EXPECT_THROW(core::plan_batch({}, cfg), codetr::Error);
  // An image too thin for the scale names itself.
  std::vector<uint8_t> thin(1 * 40 * 3, 0);
  try {
    core::plan_batch({codetr::ImageView{packed.data(), 2, 2}, codetr::ImageView{thin.data(), 1, 40}}, cfg);
    FAIL() << "no error";
  } catch (const codetr::Error& e) {
    EXPECT_NE(std::string(e.what()).find("image 1 (1x40) resizes to 0x12"), std::string::npos) << e.what();
  }
}

}  // namespace
