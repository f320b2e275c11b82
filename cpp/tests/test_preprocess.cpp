#include <gtest/gtest.h>

#include "codetr/error.h"
#include "codetr/preprocess.h"

namespace {

torch::Tensor hwc(std::vector<int> values, int64_t h, int64_t w) {
  // Same value in all 3 channels, row-major HxW.
  torch::Tensor t = torch::tensor(values, torch::kInt).to(torch::kByte).view({h, w, 1});
  return t.expand({h, w, 3}).contiguous();
}

std::vector<int> channel0(const torch::Tensor& t) {
  torch::Tensor c = t.select(2, 0).to(torch::kInt).contiguous().view({-1});
  return std::vector<int>(c.data_ptr<int>(), c.data_ptr<int>() + c.numel());
}

TEST(RescaleSize, FollowsMmcvRule) {
  // 333x517 to (1333, 800): the short side binds, factor 800/333.
  codetr::Size2 s = codetr::rescale_size({333, 517}, 1333, 800);
  EXPECT_EQ(s.height, 800);
  EXPECT_EQ(s.width, 1242);
  s = codetr::rescale_size({517, 333}, 800, 1333);  // (long, short) in either order
  EXPECT_EQ(s.height, 1242);
  EXPECT_EQ(s.width, 800);
  s = codetr::rescale_size({100, 1000}, 1333, 800);  // the long side binds: factor 1.333
  EXPECT_EQ(s.height, 133);
  EXPECT_EQ(s.width, 1333);
  s = codetr::rescale_size({480, 640}, 1152, 768);  // 768/480 = 1.6 vs 1152/640 = 1.8
  EXPECT_EQ(s.height, 768);
  EXPECT_EQ(s.width, 1024);
  EXPECT_THROW(codetr::rescale_size({0, 10}, 1333, 800), codetr::Error);
}

TEST(ResizeBilinear, UpscaleRowHalfPixelCentres) {
  // 1x2 -> 1x4: source x = (dx + .5) / 2 - .5 = -.25, .25, .75, 1.25 -> 0, 25, 75, 100.
  EXPECT_EQ(channel0(codetr::resize_bilinear_u8(hwc({0, 100}, 1, 2), 1, 4)), (std::vector<int>{0, 25, 75, 100}));
}

TEST(ResizeBilinear, DownscaleAveragesWithOpenCVRounding) {
  // 2x2 -> 1x1 samples the centre: the mean, rounded half up by the (+2) >> 2 step.
  EXPECT_EQ(channel0(codetr::resize_bilinear_u8(hwc({0, 100, 50, 150}, 2, 2), 1, 1)), (std::vector<int>{75}));
  EXPECT_EQ(channel0(codetr::resize_bilinear_u8(hwc({0, 1, 1, 1}, 2, 2), 1, 1)), (std::vector<int>{1}));
  EXPECT_EQ(channel0(codetr::resize_bilinear_u8(hwc({0, 0, 0, 1}, 2, 2), 1, 1)), (std::vector<int>{0}));
}

TEST(ResizeBilinear, VerticalThirds) {
  // 2x1 -> 3x1: source y = -1/6, 1/2, 7/6. Row weights in 1/2048: the first and last rows are
  // clamped to the border row, the middle one is the mean.
  EXPECT_EQ(channel0(codetr::resize_bilinear_u8(hwc({30, 90}, 2, 1), 3, 1)), (std::vector<int>{30, 60, 90}));
}

TEST(ResizeBilinear, SameSizeIsACopyAndChannelsStayApart) {
  torch::Tensor img = torch::randint(0, 256, {5, 7, 3}, torch::kByte);
  EXPECT_TRUE(torch::equal(codetr::resize_bilinear_u8(img, 5, 7), img));
  torch::Tensor up = codetr::resize_bilinear_u8(img, 9, 13);
  EXPECT_TRUE(torch::equal(codetr::resize_bilinear_u8(img.select(2, 1).unsqueeze(2).expand({5, 7, 3}).contiguous(), 9, 13)
                               .select(2, 0),
                           up.select(2, 1)));
}

TEST(ResizeBilinear, RejectsBadInput) {
  EXPECT_THROW(codetr::resize_bilinear_u8(torch::zeros({4, 4, 3}), 2, 2), codetr::Error);  // float
  EXPECT_THROW(codetr::resize_bilinear_u8(torch::zeros({4, 4}, torch::kByte), 2, 2), codetr::Error);
  EXPECT_THROW(codetr::resize_bilinear_u8(torch::zeros({4, 4, 3}, torch::kByte), 0, 2), codetr::Error);
}

codetr::ModelConfig small_config() {
  codetr::ModelConfig c;
  c.dtype = "float32";
  c.input.batch = c.input.min_batch = c.input.max_batch = 2;
  c.input.height = 8;
  c.input.width = 12;
  c.preprocess.scale_long = 12;
  c.preprocess.scale_short = 8;
  c.preprocess.pad_value = 0.f;
  c.preprocess.mean[0] = 10.f, c.preprocess.mean[1] = 20.f, c.preprocess.mean[2] = 30.f;
  c.preprocess.std[0] = 2.f, c.preprocess.std[1] = 4.f, c.preprocess.std[2] = 5.f;
  c.preprocess.padding_mask = true;
  return c;
}

TEST(Preprocess, NormalisesPadsMasksAndConvertsBgr) {
  // A 4x4 BGR image (B=40, G=80, R=130) scales by 2 to 8x8 inside the 8x12 engine input.
  std::vector<uint8_t> pixels;
  for (int i = 0; i < 16; ++i) pixels.insert(pixels.end(), {40, 80, 130});
  codetr::ImageView view{pixels.data(), 4, 4, codetr::PixelOrder::kBGR, 0};
  const codetr::PreprocessedBatch b = codetr::preprocess({view}, small_config(), torch::kCPU);
  ASSERT_EQ(b.images.sizes(), (std::vector<int64_t>{1, 3, 8, 12}));
  ASSERT_EQ(b.masks.sizes(), (std::vector<int64_t>{1, 8, 12}));
  EXPECT_FLOAT_EQ(b.images[0][0][3][3].item<float>(), (130.f - 10.f) / 2.f);  // R first
  EXPECT_FLOAT_EQ(b.images[0][1][7][7].item<float>(), (80.f - 20.f) / 4.f);
  EXPECT_FLOAT_EQ(b.images[0][2][0][0].item<float>(), (40.f - 30.f) / 5.f);
  EXPECT_FLOAT_EQ(b.images[0][0][0][8].item<float>(), 0.f);  // padding after normalisation
  EXPECT_FALSE(b.masks[0][7][7].item<bool>());
  EXPECT_TRUE(b.masks[0][0][8].item<bool>());
  EXPECT_EQ(b.masks.sum().item<int64_t>(), 8 * 4);
  EXPECT_EQ(b.metas[0].resized.height, 8);
  EXPECT_FLOAT_EQ(b.metas[0].w_scale, 2.f);
}

TEST(Preprocess, PadBeforeNormaliseUsesTheUint8PadValue) {
  codetr::ModelConfig c = small_config();
  c.preprocess.pad_stage = codetr::PadStage::kBeforeNormalize;
  c.preprocess.pad_value = 114.f;
  std::vector<uint8_t> pixels(4 * 4 * 3, 200);
  codetr::ImageView view{pixels.data(), 4, 4, codetr::PixelOrder::kRGB, 0};
  const codetr::PreprocessedBatch b = codetr::preprocess({view}, c, torch::kCPU);
  EXPECT_FLOAT_EQ(b.images[0][1][0][11].item<float>(), (114.f - 20.f) / 4.f);
  EXPECT_FLOAT_EQ(b.images[0][1][0][0].item<float>(), (200.f - 20.f) / 4.f);
}

TEST(Preprocess, RowStrideAndErrors) {
  // A 2x2 view into a wider buffer (row stride 9 bytes) equals the packed image.
  std::vector<uint8_t> wide = {1, 2, 3, 4, 5, 6, 99, 99, 99, 7, 8, 9, 10, 11, 12, 99, 99, 99};
  std::vector<uint8_t> packed = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};
  const auto cfg = small_config();
  auto a = codetr::preprocess({codetr::ImageView{wide.data(), 2, 2, codetr::PixelOrder::kRGB, 9}}, cfg, torch::kCPU);
  auto b = codetr::preprocess({codetr::ImageView{packed.data(), 2, 2, codetr::PixelOrder::kRGB, 0}}, cfg, torch::kCPU);
  EXPECT_TRUE(torch::equal(a.images, b.images));
  EXPECT_THROW(codetr::preprocess({codetr::ImageView{nullptr, 2, 2}}, cfg, torch::kCPU), codetr::Error);
  EXPECT_THROW(codetr::preprocess({codetr::ImageView{packed.data(), 0, 2}}, cfg, torch::kCPU), codetr::Error);
  EXPECT_THROW(codetr::preprocess({codetr::ImageView{packed.data(), 2, 2, codetr::PixelOrder::kRGB, 5}}, cfg, torch::kCPU),
               codetr::Error);
  // A static engine fits an image that mmcv's rule would make too large (portrait 4x2 into the
  // landscape 8x12 engine: 12x6 by the rule, 8x4 fitted).
  std::vector<uint8_t> portrait(4 * 2 * 3, 7);
  auto p = codetr::preprocess({codetr::ImageView{portrait.data(), 4, 2}}, cfg, torch::kCPU);
  EXPECT_EQ(p.metas[0].resized.height, 8);
  EXPECT_EQ(p.metas[0].resized.width, 4);
  EXPECT_FLOAT_EQ(p.metas[0].h_scale, 2.f);
  // A dynamic engine refuses an image beyond its maximum size, naming the sizes.
  codetr::ModelConfig too_big = cfg;
  too_big.input.dynamic = true;
  too_big.input.min_height = too_big.input.min_width = 1;
  too_big.input.max_height = 8;
  too_big.input.max_width = 12;
  too_big.preprocess.pad_size_divisor = 1;
  too_big.preprocess.scale_long = 24;
  too_big.preprocess.scale_short = 16;
  try {
    codetr::preprocess({codetr::ImageView{packed.data(), 2, 2}}, too_big, torch::kCPU);
    FAIL() << "no error";
  } catch (const codetr::Error& e) {
    EXPECT_NE(std::string(e.what()).find("16x16 does not fit"), std::string::npos) << e.what();
  }
}

}  // namespace
