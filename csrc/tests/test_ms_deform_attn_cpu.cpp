// The torch-free CPU kernels against bilinear cases computed by hand.
#include <gtest/gtest.h>

#include <vector>

#include "ms_deform_attn/ms_deform_attn.h"

namespace codetr {
namespace msda {
namespace {

// Levels given as (h, w) pairs; starts follow from the sizes.
LevelShapes make_levels(const std::vector<std::pair<int, int>>& hw) {
  LevelShapes levels;
  levels.num_levels = static_cast<int>(hw.size());
  int64_t start = 0;
  for (size_t l = 0; l < hw.size(); ++l) {
    levels.height[l] = hw[l].first;
    levels.width[l] = hw[l].second;
    levels.start[l] = start;
    start += static_cast<int64_t>(hw[l].first) * hw[l].second;
  }
  return levels;
}

// A 2x3 map (level 0) followed by a 1x2 map (level 1); B = H = 1, D = 2.
// Channel 0 of pixel (y, x) of level 0 is 10*y + x; channel 1 is 100 + 10*y + x.
// Level 1: channel 0 = 50 + x, channel 1 = 60 + x.
std::vector<double> two_level_value() {
  std::vector<double> v;
  for (int y = 0; y < 2; ++y)
    for (int x = 0; x < 3; ++x) v.insert(v.end(), {10.0 * y + x, 100.0 + 10.0 * y + x});
  for (int x = 0; x < 2; ++x) v.insert(v.end(), {50.0 + x, 60.0 + x});
  return v;
}

// Normalised location of pixel coordinate (x, y) on an (h, w) map: loc = (pixel + 0.5) / size.
double norm(double pixel, int size) { return (pixel + 0.5) / size; }


// Runs a single-query, single-point forward on level `level` of the two-level map.
std::vector<double> sample_one(int level, double px, double py, double weight) {
  const auto levels = make_levels({{2, 3}, {1, 2}});
  const Sizes sizes{1, 8, 1, 2, 1, 2, 1};
  const auto value = two_level_value();
  std::vector<double> loc(4, 0.0), attn(2, 0.0);
  // The other level's point lies far outside (contributes nothing).
  loc[0] = loc[2] = -5.0;
  loc[1] = loc[3] = -5.0;
  loc[2 * level] = norm(px, levels.width[level]);
  loc[2 * level + 1] = norm(py, levels.height[level]);
  attn[level] = weight;
  attn[1 - level] = 1.0;
  std::vector<double> out(2, -1.0);
  forward_cpu<double>(value.data(), loc.data(), attn.data(), out.data(), sizes, levels, 0, 1);
  return out;
}

TEST(MsDeformAttnCpu, ExactPixelReturnsThatPixel) {
  const auto out = sample_one(0, 1.0, 0.0, 0.5);  // pixel (y=0, x=1) = (1, 101)
  EXPECT_NEAR(out[0], 0.5 * 1.0, 1e-12);
  EXPECT_NEAR(out[1], 0.5 * 101.0, 1e-12);
}

TEST(MsDeformAttnCpu, BetweenFourPixelsUsesHandWeights) {
  // x = 0.25, y = 0.5: fx = 0.25, fy = 0.5 -> weights 0.375 (0,0), 0.125 (0,1), 0.375 (1,0), 0.125 (1,1)
  // channel 0: 0.375*0 + 0.125*1 + 0.375*10 + 0.125*11 = 5.25
  const auto out = sample_one(0, 0.25, 0.5, 2.0);
  EXPECT_NEAR(out[0], 2.0 * 5.25, 1e-12);
  EXPECT_NEAR(out[1], 2.0 * (100.0 + 5.25), 1e-12);
}

TEST(MsDeformAttnCpu, HalfOutsideKeepsOnlyInsideCorners) {
  // x = -0.5, y = 0: corners (0,-1) and (0,0) with weight 0.5 each; only (0,0) is inside.
  const auto out = sample_one(0, -0.5, 0.0, 1.0);
  EXPECT_NEAR(out[0], 0.5 * 0.0, 1e-12);
  EXPECT_NEAR(out[1], 0.5 * 100.0, 1e-12);
  // x = 2.5 (right edge), y = 1 (bottom row): corners (1,2) inside, (1,3) outside.
  const auto right = sample_one(0, 2.5, 1.0, 1.0);
  EXPECT_NEAR(right[0], 0.5 * 12.0, 1e-12);
  EXPECT_NEAR(right[1], 0.5 * 112.0, 1e-12);
}

TEST(MsDeformAttnCpu, FarOutsideIsZero) {
  const auto out = sample_one(0, 3.2, 0.0, 1.0);  // x >= w
  EXPECT_EQ(out[0], 0.0);
  EXPECT_EQ(out[1], 0.0);
  const auto above = sample_one(0, 1.0, -1.0, 1.0);  // y <= -1
  EXPECT_EQ(above[0], 0.0);
}

TEST(MsDeformAttnCpu, TwoLevelsAddWeightedSamples) {
  const auto levels = make_levels({{2, 3}, {1, 2}});
  const Sizes sizes{1, 8, 1, 2, 1, 2, 1};
  const auto value = two_level_value();
  // Level 0 at pixel (y=1, x=2) = (12, 112); level 1 at x = 0.75 on its 1x2 map: y = 0 exact,
  // fx = 0.75 -> 0.25*(50, 60) + 0.75*(51, 61) = (50.75, 60.75).
  const std::vector<double> loc = {norm(2, 3), norm(1, 2), norm(0.75, 2), norm(0, 1)};
  const std::vector<double> attn = {0.25, 0.75};
  std::vector<double> out(2, -1.0);
  forward_cpu<double>(value.data(), loc.data(), attn.data(), out.data(), sizes, levels, 0, 1);
  EXPECT_NEAR(out[0], 0.25 * 12.0 + 0.75 * 50.75, 1e-12);
  EXPECT_NEAR(out[1], 0.25 * 112.0 + 0.75 * 60.75, 1e-12);
}

TEST(MsDeformAttnCpu, HeadsAndBatchesIndexTheirOwnValues) {
  // B = 2, H = 2, D = 1 on one 1x1 map: value[b, 0, h, 0] = 10*b + h; each query samples the
  // only pixel with weight 1, so out[b, q, h] = 10*b + h.
  const auto levels = make_levels({{1, 1}});
  const Sizes sizes{2, 1, 2, 1, 3, 1, 1};
  const std::vector<float> value = {0.f, 1.f, 10.f, 11.f};
  std::vector<float> loc(2 * 3 * 2 * 2, 0.5f), attn(2 * 3 * 2, 1.0f), out(2 * 3 * 2, -1.f);
  forward_cpu<float>(value.data(), loc.data(), attn.data(), out.data(), sizes, levels, 0, 12);
  for (int b = 0; b < 2; ++b)
    for (int q = 0; q < 3; ++q)
      for (int h = 0; h < 2; ++h) EXPECT_EQ(out[(b * 3 + q) * 2 + h], 10.f * b + h);
}

TEST(MsDeformAttnCpu, BackwardMatchesHandGradients) {
  // The between-four-pixels case: fx = 0.25, fy = 0.5, weight a = 2, grad_out = (1, -1).
  const auto levels = make_levels({{2, 3}, {1, 2}});
  const Sizes sizes{1, 8, 1, 2, 1, 2, 1};
  const auto value = two_level_value();
  const std::vector<double> loc = {norm(0.25, 3), norm(0.5, 2), -5.0, -5.0};
  const std::vector<double> attn = {2.0, 1.0};
  const std::vector<double> grad_out = {1.0, -1.0};
  std::vector<double> grad_value(value.size(), 0.0), grad_loc(4, -1.0), grad_attn(2, -1.0);
  backward_cpu<double>(grad_out.data(), value.data(), loc.data(), attn.data(), grad_value.data(),
                       grad_loc.data(), grad_attn.data(), sizes, levels, 0, 1);
  // grad_attn = <grad_out, sample> = 5.25 - 105.25 = -100.
  EXPECT_NEAR(grad_attn[0], -100.0, 1e-12);
  EXPECT_EQ(grad_attn[1], 0.0);  // outside: no gradient
  // grad_value at corner k = a * w_k * grad_out.
  const double w[4] = {0.375, 0.125, 0.375, 0.125};
  const int pixel[4] = {0, 1, 3, 4};  // (0,0) (0,1) (1,0) (1,1) in row-major 2x3
  for (int k = 0; k < 4; ++k) {
    EXPECT_NEAR(grad_value[2 * pixel[k]], 2.0 * w[k], 1e-12);
    EXPECT_NEAR(grad_value[2 * pixel[k] + 1], -2.0 * w[k], 1e-12);
  }
  // The sample is 5.25 + (0, 100) per channel: it grows by 1 per pixel in x and by 10 per pixel
  // in y in both channels, so <grad_out, d sample> = 0 for x and y: d/dloc = 0 here.
  EXPECT_NEAR(grad_loc[0], 0.0, 1e-12);
  EXPECT_NEAR(grad_loc[1], 0.0, 1e-12);
  // With grad_out = (1, 0): d out0/dx = 1 per pixel -> d/dloc_x = a * 1 * w_l = 2 * 3 = 6;
  // d out0/dy = 10 per pixel -> d/dloc_y = 2 * 10 * 2 = 40.
  const std::vector<double> grad_out_x = {1.0, 0.0};
  std::fill(grad_value.begin(), grad_value.end(), 0.0);
  backward_cpu<double>(grad_out_x.data(), value.data(), loc.data(), attn.data(), grad_value.data(),
                       grad_loc.data(), grad_attn.data(), sizes, levels, 0, 1);
  EXPECT_NEAR(grad_loc[0], 6.0, 1e-12);
  EXPECT_NEAR(grad_loc[1], 40.0, 1e-12);
  EXPECT_NEAR(grad_attn[0], 5.25, 1e-12);
  EXPECT_EQ(grad_loc[2], 0.0);
  EXPECT_EQ(grad_loc[3], 0.0);
}

}  // namespace
}  // namespace msda
}  // namespace codetr
