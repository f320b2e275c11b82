#include <gtest/gtest.h>

#include <cmath>

#include "codetr/error.h"
#include "codetr/postprocess.h"

namespace {

using codetr::NmsConfig;
using codetr::NmsType;
using codetr::SoftNmsMethod;

// A and B overlap with IoU 90/110; C is apart; E is the top half of A (IoU exactly 0.5).
const float kA[4] = {0, 0, 10, 10}, kB[4] = {1, 0, 11, 10}, kC[4] = {20, 20, 30, 30}, kE[4] = {0, 0, 10, 5};
constexpr double kIouAB = 90.0 / 110.0;

torch::Tensor boxes_of(std::initializer_list<const float*> boxes) {
  std::vector<float> v;
  for (const float* b : boxes) v.insert(v.end(), b, b + 4);
  return torch::tensor(v).view({-1, 4});
}

std::vector<int64_t> to_vec(const torch::Tensor& t) { return std::vector<int64_t>(t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + t.numel()); }

TEST(Nms, SuppressesAboveThresholdOnly) {
  const torch::Tensor boxes = boxes_of({kB, kC, kA});
  const torch::Tensor scores = torch::tensor({0.8f, 0.7f, 0.9f});
  EXPECT_EQ(to_vec(codetr::nms(boxes, scores, 0.5f).keep), (std::vector<int64_t>{2, 1}));
  EXPECT_EQ(to_vec(codetr::nms(boxes, scores, 0.85f).keep), (std::vector<int64_t>{2, 0, 1}));
  // IoU exactly at the threshold is kept (mmcv / torchvision suppress IoU > thr).
  const codetr::NmsResult r = codetr::nms(boxes_of({kA, kE}), torch::tensor({0.9f, 0.6f}), 0.5f);
  EXPECT_EQ(to_vec(r.keep), (std::vector<int64_t>{0, 1}));
  EXPECT_FLOAT_EQ(r.scores[1].item<float>(), 0.6f);
}

TEST(Nms, SuppressedBoxDoesNotSuppressOthers) {
  // A suppresses B (IoU .82); B would suppress F (IoU .82) but is gone, and A-F IoU = 80/120.
  const float kF[4] = {2, 0, 12, 10};
  const torch::Tensor boxes = boxes_of({kA, kB, kF});
  EXPECT_EQ(to_vec(codetr::nms(boxes, torch::tensor({0.9f, 0.8f, 0.7f}), 0.7f).keep), (std::vector<int64_t>{0, 2}));
}

TEST(SoftNms, LinearDecaysOverlapsAtOrAboveThreshold) {
  const torch::Tensor boxes = boxes_of({kA, kB, kC, kE});
  const torch::Tensor scores = torch::tensor({0.9f, 0.8f, 0.7f, 0.6f});
  const codetr::NmsResult r = codetr::soft_nms(boxes, scores, 0.5f, SoftNmsMethod::kLinear, 0.5f, 0.001f);
  // A first; B -> .8 * (1 - 90/110); E has IoU(A,E) = .5 >= .5 -> .6 * .5 = .3; then the IoU(B,E) =
  // 45/105 < .5 leaves E alone. Selection order: A .9, C .7, E .3, B .1454.
  EXPECT_EQ(to_vec(r.keep), (std::vector<int64_t>{0, 2, 3, 1}));
  EXPECT_NEAR(r.scores[0].item<float>(), 0.9, 1e-7);
  EXPECT_NEAR(r.scores[1].item<float>(), 0.7, 1e-7);
  EXPECT_NEAR(r.scores[2].item<float>(), 0.3, 1e-6);
  EXPECT_NEAR(r.scores[3].item<float>(), 0.8 * (1 - kIouAB), 1e-6);
}

TEST(SoftNms, GaussianDecaysEveryOverlapAndDropsBelowMinScore) {
  const torch::Tensor boxes = boxes_of({kA, kB, kC});
  const torch::Tensor scores = torch::tensor({0.9f, 0.8f, 0.7f});
  const codetr::NmsResult r = codetr::soft_nms(boxes, scores, 0.99f, SoftNmsMethod::kGaussian, 0.5f, 0.001f);
  const double b_score = 0.8 * std::exp(-kIouAB * kIouAB / 0.5);  // 0.2097
  EXPECT_EQ(to_vec(r.keep), (std::vector<int64_t>{0, 2, 1}));
  EXPECT_NEAR(r.scores[2].item<float>(), b_score, 1e-6);
  // min_score above B's decayed score drops B.
  const codetr::NmsResult dropped = codetr::soft_nms(boxes, scores, 0.99f, SoftNmsMethod::kGaussian, 0.5f, 0.25f);
  EXPECT_EQ(to_vec(dropped.keep), (std::vector<int64_t>{0, 2}));
}

TEST(SoftNms, NaiveRemovesOverlapsAtOrAboveThreshold) {
  const codetr::NmsResult r = codetr::soft_nms(boxes_of({kA, kB, kE, kC}), torch::tensor({0.9f, 0.8f, 0.6f, 0.7f}), 0.5f,
                                               SoftNmsMethod::kNaive, 0.5f, 0.001f);
  EXPECT_EQ(to_vec(r.keep), (std::vector<int64_t>{0, 3}));  // B (IoU .82) and E (IoU .5) zeroed
}

TEST(SoftNms, DecaysCompoundAcrossSelections) {
  // Three identical-width boxes shifted by 1: each selection decays the rest again.
  const float kF[4] = {2, 0, 12, 10};
  const codetr::NmsResult r = codetr::soft_nms(boxes_of({kA, kB, kF}), torch::tensor({0.9f, 0.85f, 0.8f}), 0.0f,
                                               SoftNmsMethod::kLinear, 0.5f, 0.0f);
  const double iou_af = 80.0 / 120.0;
  const double b1 = 0.85 * (1 - kIouAB), f1 = 0.8 * (1 - iou_af);  // after A: B .1545, F .2667
  ASSERT_EQ(to_vec(r.keep), (std::vector<int64_t>{0, 2, 1}));
  EXPECT_NEAR(r.scores[1].item<float>(), f1, 1e-6);
  EXPECT_NEAR(r.scores[2].item<float>(), b1 * (1 - kIouAB), 1e-6);  // then F decays B (IoU(F,B) = IoU(A,B))
}

TEST(BatchedNms, IsClassAware) {
  const torch::Tensor boxes = boxes_of({kA, kA, kB});
  const torch::Tensor scores = torch::tensor({0.9f, 0.8f, 0.7f});
  NmsConfig cfg;
  cfg.type = NmsType::kHard;
  cfg.iou_threshold = 0.5f;
  // Same box, different classes: both kept; B (class 0) is suppressed by A (class 0).
  EXPECT_EQ(to_vec(codetr::batched_nms(boxes, scores, torch::tensor({0, 1, 0}, torch::kLong), cfg).keep),
            (std::vector<int64_t>{0, 1}));
  EXPECT_EQ(to_vec(codetr::batched_nms(boxes, scores, torch::tensor({0, 0, 1}, torch::kLong), cfg).keep),
            (std::vector<int64_t>{0, 2}));
  cfg.type = NmsType::kNone;
  EXPECT_EQ(to_vec(codetr::batched_nms(boxes, scores, torch::tensor({0, 0, 0}, torch::kLong), cfg).keep),
            (std::vector<int64_t>{0, 1, 2}));
}

TEST(Postprocess, ThresholdMaxDetectionsRescaleClip) {
  // Network input boxes; the image was resized by w 0.5, h 2.0 from a 50x40 (HxW) original.
  const torch::Tensor boxes = torch::tensor({10.f, 20.f, 30.f, 40.f, 0.f, 0.f, 8.f, 8.f, 1.f, 1.f, 25.f, 120.f}).view({3, 4});
  const torch::Tensor scores = torch::tensor({0.6f, 0.2f, 0.5f});
  const torch::Tensor labels = torch::tensor({3, 1, 2}, torch::kLong);
  codetr::ImageMeta meta;
  meta.original = {50, 40};
  meta.resized = {100, 20};
  meta.w_scale = 0.5f;
  meta.h_scale = 2.0f;
  codetr::PostprocessConfig cfg;
  cfg.score_thr = 0.3f;
  cfg.nms.type = NmsType::kHard;
  cfg.nms.iou_threshold = 0.5f;
  cfg.max_per_img = 5;
  std::vector<codetr::Detection> d = codetr::postprocess(boxes, scores, labels, meta, cfg);
  ASSERT_EQ(d.size(), 2u);  // box 1 below the threshold
  EXPECT_FLOAT_EQ(d[0].x1, 20.f);
  EXPECT_FLOAT_EQ(d[0].y1, 10.f);
  EXPECT_FLOAT_EQ(d[0].x2, 40.f);  // 60 clipped to the width 40
  EXPECT_FLOAT_EQ(d[0].y2, 20.f);
  EXPECT_EQ(d[0].label, 3);
  EXPECT_FLOAT_EQ(d[1].x1, 2.f);
  EXPECT_FLOAT_EQ(d[1].y2, 50.f);  // 60 clipped to the height 50
  EXPECT_FLOAT_EQ(d[1].score, 0.5f);
  cfg.max_per_img = 1;
  EXPECT_EQ(codetr::postprocess(boxes, scores, labels, meta, cfg).size(), 1u);
}

TEST(Postprocess, RejectsMismatchedShapes) {
  codetr::ImageMeta meta;
  meta.original = {10, 10};
  EXPECT_THROW(codetr::postprocess(torch::zeros({3, 4}), torch::zeros({2}), torch::zeros({3}, torch::kLong), meta, {}),
               codetr::Error);
  EXPECT_THROW(codetr::nms(torch::zeros({3, 5}), torch::zeros({3}), 0.5f), codetr::Error);
}

}  // namespace
