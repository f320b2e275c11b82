// detail::preprocess_batch on a CUDA device (the fused kernel when the runtime is built with CUDA)
// against the host path (core::preprocess_host), which is tested bit-exact with cv2.resize.
// Skipped without a GPU.
#include <gtest/gtest.h>

#include <iostream>
#include <random>

#include <torch/cuda.h>

#include "core.h"
#include "engine.h"

namespace {

// An HxW BGR/RGB image of random bytes whose rows are `row_stride` bytes apart (the gap holds
// bytes that must never be read into the result).
struct TestImage {
  std::vector<uint8_t> bytes;
  codetr::ImageView view;
};

TestImage random_image(int64_t height, int64_t width, codetr::PixelOrder order, int64_t row_padding, uint32_t seed) {
  TestImage image;
  const int64_t stride = width * 3 + row_padding;
  image.bytes.resize(static_cast<size_t>(height * stride));
  std::mt19937 rng(seed);
  for (uint8_t& b : image.bytes) b = static_cast<uint8_t>(rng() & 0xff);
  image.view = codetr::ImageView{image.bytes.data(), height, width, order, row_padding ? stride : 0};
  return image;
}

codetr::ModelConfig static_config(int64_t height, int64_t width) {
  codetr::ModelConfig c;
  c.dtype = "float32";
  c.input.batch = c.input.min_batch = c.input.max_batch = 1;
  c.input.height = height;
  c.input.width = width;
  c.preprocess.scale_long = c.preprocess.scale_w = width;
  c.preprocess.scale_short = c.preprocess.scale_h = height;
  const float mean[3] = {123.675f, 116.28f, 103.53f}, std[3] = {58.395f, 57.12f, 57.375f};
  for (int ch = 0; ch < 3; ++ch) c.preprocess.mean[ch] = mean[ch], c.preprocess.std[ch] = std[ch];
  c.preprocess.padding_mask = true;
  return c;
}

// The largest distance in units in the last place between two fp32 tensors of equal shape.
int64_t max_ulp_distance(const torch::Tensor& a, const torch::Tensor& b) {
  const torch::Tensor ia = a.contiguous().view(torch::kInt).to(torch::kLong);
  const torch::Tensor ib = b.contiguous().view(torch::kInt).to(torch::kLong);
  // Map the sign-magnitude bit patterns onto a monotonic integer line.
  auto ordered = [](const torch::Tensor& i) { return torch::where(i < 0, -(i & 0x7fffffff), i); };
  return (ordered(ia) - ordered(ib)).abs().max().item<int64_t>();
}

struct Prepared {
  torch::Tensor images, masks;
  std::vector<codetr::core::ImageMeta> metas;
};

Prepared prepare(const std::vector<codetr::ImageView>& views, const codetr::ModelConfig& config,
                 const torch::Device& device) {
  codetr::detail::EngineBatch b = codetr::detail::preprocess_batch(views, config, device);
  return Prepared{b.inputs[0], b.inputs.size() > 1 ? b.inputs[1] : torch::Tensor(), b.plan.metas};
}

void expect_same_batch(const std::vector<codetr::ImageView>& views, const codetr::ModelConfig& config,
                       const std::string& what) {
  SCOPED_TRACE(what);
  const Prepared cpu = prepare(views, config, torch::kCPU);
  const Prepared gpu = prepare(views, config, torch::Device(torch::kCUDA));
  ASSERT_TRUE(gpu.images.is_cuda());
  ASSERT_EQ(gpu.images.sizes(), cpu.images.sizes());
  ASSERT_EQ(gpu.images.scalar_type(), cpu.images.scalar_type());
  ASSERT_TRUE(gpu.images.is_contiguous());
  const torch::Tensor images = gpu.images.cpu();
  if (images.scalar_type() == torch::kFloat) {
    EXPECT_LE(max_ulp_distance(images, cpu.images), 1);
    // Within 1 ulp passes; the kernel is meant to be exact, so say when it is not.
    if (!torch::equal(images, cpu.images))
      std::cout << "[ NOTE ] " << what << ": fp32 within 1 ulp but " << images.ne(cpu.images).sum().item<int64_t>()
                << " values not identical\n";
  } else {
    // float16/bfloat16: the CPU path casts its fp32 result, which is what the kernel must match.
    EXPECT_TRUE(torch::equal(images, cpu.images)) << images.ne(cpu.images).sum().item<int64_t>() << " values differ";
  }
  ASSERT_EQ(gpu.masks.defined(), cpu.masks.defined());
  if (cpu.masks.defined()) EXPECT_TRUE(torch::equal(gpu.masks.cpu(), cpu.masks));
  ASSERT_EQ(gpu.metas.size(), cpu.metas.size());
  for (size_t i = 0; i < cpu.metas.size(); ++i) {
    EXPECT_EQ(gpu.metas[i].resized.height, cpu.metas[i].resized.height);
    EXPECT_EQ(gpu.metas[i].resized.width, cpu.metas[i].resized.width);
    EXPECT_EQ(gpu.metas[i].w_scale, cpu.metas[i].w_scale);
    EXPECT_EQ(gpu.metas[i].h_scale, cpu.metas[i].h_scale);
  }
}

class PreprocessCuda : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  }
};

// (height, width, row padding in bytes): upscale, downscale, odd sizes, portrait and landscape,
// a one-pixel-high strip, rows wider than width*3, an exact 2x downscale (OpenCV's INTER_AREA case).
const int64_t kSizes[][3] = {{97, 131, 0}, {480, 640, 0},   {301, 77, 5},   {1000, 1501, 0}, {1, 7, 0},
                             {33, 1, 3},   {199, 295, 11}, {200, 296, 0}, {400, 592, 0},   {400, 592, 7}};

TEST_F(PreprocessCuda, ResizedUint8ValuesEqualTheCpuResize) {
  // mean 0, std 1, no channel flip: the fp32 output is the resized uint8 image itself.
  codetr::ModelConfig config = static_config(200, 296);
  for (int ch = 0; ch < 3; ++ch) config.preprocess.mean[ch] = 0.f, config.preprocess.std[ch] = 1.f;
  config.preprocess.bgr_to_rgb = false;
  uint32_t seed = 0;
  for (const auto& s : kSizes) {
    const TestImage image = random_image(s[0], s[1], codetr::PixelOrder::kBGR, s[2], ++seed);
    const Prepared gpu = prepare({image.view}, config, torch::Device(torch::kCUDA));
    const codetr::core::Size2 r = gpu.metas[0].resized;
    torch::Tensor resized = torch::empty({r.height, r.width, 3}, torch::kByte);
    codetr::core::resize_u8(image.view, r, resized.data_ptr<uint8_t>());
    const torch::Tensor expected = resized.permute({2, 0, 1});
    const torch::Tensor got = gpu.images[0].cpu().narrow(1, 0, r.height).narrow(2, 0, r.width);
    EXPECT_TRUE(torch::equal(got, expected.to(torch::kFloat))) << s[0] << "x" << s[1] << " -> " << r.height << "x"
                                                                << r.width;
  }
}

TEST_F(PreprocessCuda, EqualsTheCpuPathForEveryStageOrderAndDtype) {
  uint32_t seed = 100;
  for (const char* dtype : {"float32", "float16", "bfloat16"})
    for (const codetr::PadStage stage : {codetr::PadStage::kAfterNormalize, codetr::PadStage::kBeforeNormalize})
      for (const bool bgr_to_rgb : {true, false})
        for (const codetr::PixelOrder order : {codetr::PixelOrder::kBGR, codetr::PixelOrder::kRGB})
          for (const auto& s : kSizes) {
            codetr::ModelConfig config = static_config(200, 296);
            config.dtype = dtype;
            config.preprocess.pad_stage = stage;
            config.preprocess.pad_value = stage == codetr::PadStage::kBeforeNormalize ? 114.f : -1.5f;
            config.preprocess.bgr_to_rgb = bgr_to_rgb;
            const TestImage image = random_image(s[0], s[1], order, s[2], ++seed);
            expect_same_batch({image.view}, config,
                              std::string(dtype) + (stage == codetr::PadStage::kBeforeNormalize ? " before" : " after") +
                                  (bgr_to_rgb ? " bgr_to_rgb" : " keep order") +
                                  (order == codetr::PixelOrder::kBGR ? " BGR " : " RGB ") + std::to_string(s[0]) + "x" +
                                  std::to_string(s[1]) + " stride+" + std::to_string(s[2]));
          }
}

TEST_F(PreprocessCuda, BatchOfDifferentSizesInADynamicEngineAndNoMask) {
  // Several images share one upload and one batch tensor: each lands in its own slot.
  codetr::ModelConfig config = static_config(0, 0);
  config.input.dynamic = true;
  config.input.batch = config.input.min_batch = 1;
  config.input.max_batch = 4;
  config.input.min_height = config.input.min_width = 32;
  config.input.max_height = config.input.max_width = 1344;
  config.preprocess.scale_long = config.preprocess.scale_w = 1333;
  config.preprocess.scale_short = config.preprocess.scale_h = 800;
  config.preprocess.pad_size_divisor = 32;
  std::vector<TestImage> images;
  images.push_back(random_image(480, 640, codetr::PixelOrder::kBGR, 0, 7));
  images.push_back(random_image(333, 517, codetr::PixelOrder::kRGB, 9, 8));
  images.push_back(random_image(517, 333, codetr::PixelOrder::kBGR, 0, 9));
  images.push_back(random_image(1600, 2666, codetr::PixelOrder::kBGR, 0, 10));  // exact 2x to 800x1333
  std::vector<codetr::ImageView> views;
  for (const TestImage& i : images) views.push_back(i.view);
  for (const char* dtype : {"float32", "float16"})
    for (const bool mask : {true, false}) {
      config.dtype = dtype;
      config.preprocess.padding_mask = mask;
      expect_same_batch(views, config, std::string("batch ") + dtype + (mask ? " with mask" : " without mask"));
    }
}

TEST_F(PreprocessCuda, EngineSizedInput) {
  // The exported engines' geometry: 1152x768, a 640x480 image upscaled by 1.6.
  const TestImage image = random_image(480, 640, codetr::PixelOrder::kBGR, 0, 42);
  for (const char* dtype : {"float32", "float16", "bfloat16"}) {
    codetr::ModelConfig config = static_config(768, 1152);
    config.dtype = dtype;
    expect_same_batch({image.view}, config, std::string("768x1152 ") + dtype);
  }
}

}  // namespace
