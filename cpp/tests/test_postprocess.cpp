#include <gtest/gtest.h>

#include <cmath>

#include "core.h"

namespace {

namespace core = codetr::core;
using codetr::NmsConfig;
using codetr::NmsType;
using codetr::SoftNmsMethod;

// A and B overlap with IoU 90/110; C is apart; E is the top half of A (IoU exactly 0.5).
const float kA[4] = {0, 0, 10, 10}, kB[4] = {1, 0, 11, 10}, kC[4] = {20, 20, 30, 30}, kE[4] = {0, 0, 10, 5};
constexpr double kIouAB = 90.0 / 110.0;

std::vector<float> boxes_of(std::initializer_list<const float*> boxes) {
  std::vector<float> v;
  for (const float* b : boxes) v.insert(v.end(), b, b + 4);
  return v;
}

// The core works on host arrays: these keep the cases short.
core::Kept nms(const std::vector<float>& boxes, const std::vector<float>& scores, float thr) {
  return core::nms(boxes.data(), scores.data(), static_cast<int64_t>(scores.size()), thr);
}
core::Kept soft_nms(const std::vector<float>& boxes, const std::vector<float>& scores, float thr, SoftNmsMethod method,
                    float sigma, float min_score) {
  return core::soft_nms(boxes.data(), scores.data(), static_cast<int64_t>(scores.size()), thr, method, sigma, min_score);
}
core::Kept batched_nms(const std::vector<float>& boxes, const std::vector<float>& scores,
                       const std::vector<int64_t>& labels, const NmsConfig& cfg) {
  return core::batched_nms(boxes.data(), scores.data(), labels.data(), static_cast<int64_t>(scores.size()), cfg);
}

TEST(Nms, SuppressesAboveThresholdOnly) {
  const auto boxes = boxes_of({kB, kC, kA});
  const auto scores = std::vector<float>{0.8f, 0.7f, 0.9f};
  EXPECT_EQ(nms(boxes, scores, 0.5f).keep, (std::vector<int64_t>{2, 1}));
  EXPECT_EQ(nms(boxes, scores, 0.85f).keep, (std::vector<int64_t>{2, 0, 1}));
  // IoU exactly at the threshold is kept (mmcv / torchvision suppress IoU > thr).
  const core::Kept r = nms(boxes_of({kA, kE}), std::vector<float>{0.9f, 0.6f}, 0.5f);
  EXPECT_EQ(r.keep, (std::vector<int64_t>{0, 1}));
  EXPECT_FLOAT_EQ(r.scores[1], 0.6f);
}

TEST(Nms, SuppressedBoxDoesNotSuppressOthers) {
  // A suppresses B (IoU .82); B would suppress F (IoU .82) but is gone, and A-F IoU = 80/120.
  const float kF[4] = {2, 0, 12, 10};
  const auto boxes = boxes_of({kA, kB, kF});
  EXPECT_EQ(nms(boxes, std::vector<float>{0.9f, 0.8f, 0.7f}, 0.7f).keep, (std::vector<int64_t>{0, 2}));
}

TEST(SoftNms, LinearDecaysOverlapsAtOrAboveThreshold) {
  const auto boxes = boxes_of({kA, kB, kC, kE});
  const auto scores = std::vector<float>{0.9f, 0.8f, 0.7f, 0.6f};
  const core::Kept r = soft_nms(boxes, scores, 0.5f, SoftNmsMethod::kLinear, 0.5f, 0.001f);
  // A first; B -> .8 * (1 - 90/110); E has IoU(A,E) = .5 >= .5 -> .6 * .5 = .3; then the IoU(B,E) =
  // 45/105 < .5 leaves E alone. Selection order: A .9, C .7, E .3, B .1454.
  EXPECT_EQ(r.keep, (std::vector<int64_t>{0, 2, 3, 1}));
  EXPECT_NEAR(r.scores[0], 0.9, 1e-7);
  EXPECT_NEAR(r.scores[1], 0.7, 1e-7);
  EXPECT_NEAR(r.scores[2], 0.3, 1e-6);
  EXPECT_NEAR(r.scores[3], 0.8 * (1 - kIouAB), 1e-6);
}

TEST(SoftNms, GaussianDecaysEveryOverlapAndDropsBelowMinScore) {
  const auto boxes = boxes_of({kA, kB, kC});
  const auto scores = std::vector<float>{0.9f, 0.8f, 0.7f};
  const core::Kept r = soft_nms(boxes, scores, 0.99f, SoftNmsMethod::kGaussian, 0.5f, 0.001f);
  const double b_score = 0.8 * std::exp(-kIouAB * kIouAB / 0.5);  // 0.2097
  EXPECT_EQ(r.keep, (std::vector<int64_t>{0, 2, 1}));
  EXPECT_NEAR(r.scores[2], b_score, 1e-6);
  // min_score above B's decayed score drops B.
  const core::Kept dropped = soft_nms(boxes, scores, 0.99f, SoftNmsMethod::kGaussian, 0.5f, 0.25f);
  EXPECT_EQ(dropped.keep, (std::vector<int64_t>{0, 2}));
}

TEST(SoftNms, NaiveRemovesOverlapsAtOrAboveThreshold) {
  const core::Kept r = soft_nms(boxes_of({kA, kB, kE, kC}), std::vector<float>{0.9f, 0.8f, 0.6f, 0.7f}, 0.5f,
                                               SoftNmsMethod::kNaive, 0.5f, 0.001f);
  EXPECT_EQ(r.keep, (std::vector<int64_t>{0, 3}));  // B (IoU .82) and E (IoU .5) zeroed
}

TEST(SoftNms, DecaysCompoundAcrossSelections) {
  // Three identical-width boxes shifted by 1: each selection decays the rest again.
  const float kF[4] = {2, 0, 12, 10};
  const core::Kept r = soft_nms(boxes_of({kA, kB, kF}), std::vector<float>{0.9f, 0.85f, 0.8f}, 0.0f,
                                               SoftNmsMethod::kLinear, 0.5f, 0.0f);
  const double iou_af = 80.0 / 120.0;
  const double b1 = 0.85 * (1 - kIouAB), f1 = 0.8 * (1 - iou_af);  // after A: B .1545, F .2667
  ASSERT_EQ(r.keep, (std::vector<int64_t>{0, 2, 1}));
  EXPECT_NEAR(r.scores[1], f1, 1e-6);
  EXPECT_NEAR(r.scores[2], b1 * (1 - kIouAB), 1e-6);  // then F decays B (IoU(F,B) = IoU(A,B))
}

TEST(BatchedNms, IsClassAware) {
  const auto boxes = boxes_of({kA, kA, kB});
  const auto scores = std::vector<float>{0.9f, 0.8f, 0.7f};
  NmsConfig cfg;
  cfg.type = NmsType::kHard;
  cfg.iou_threshold = 0.5f;
  // Same box, different classes: both kept; B (class 0) is suppressed by A (class 0).
  EXPECT_EQ(batched_nms(boxes, scores, std::vector<int64_t>{0, 1, 0}, cfg).keep,
            (std::vector<int64_t>{0, 1}));
  EXPECT_EQ(batched_nms(boxes, scores, std::vector<int64_t>{0, 0, 1}, cfg).keep,
            (std::vector<int64_t>{0, 2}));
  cfg.type = NmsType::kNone;
  EXPECT_EQ(batched_nms(boxes, scores, std::vector<int64_t>{0, 0, 0}, cfg).keep,
            (std::vector<int64_t>{0, 1, 2}));
}

struct Outputs {
  std::vector<float> boxes, scores;
  std::vector<int64_t> labels;
  core::ImageMeta meta;
  codetr::PostprocessConfig cfg;
  std::vector<codetr::Detection> run(int64_t num_classes = 80) const {
    return core::postprocess(boxes.data(), scores.data(), labels.data(), static_cast<int64_t>(scores.size()), meta, cfg,
                             num_classes);
  }
};

// Network input boxes; the image was resized by w 0.5, h 2.0 from a 50x40 (HxW) original.
Outputs example() {
  Outputs o;
  o.boxes = {10.f, 20.f, 30.f, 40.f, 0.f, 0.f, 8.f, 8.f, 1.f, 1.f, 25.f, 120.f};
  o.scores = {0.6f, 0.2f, 0.5f};
  o.labels = {3, 1, 2};
  o.meta.original = {50, 40};
  o.meta.resized = {100, 20};
  o.meta.w_scale = 0.5f;
  o.meta.h_scale = 2.0f;
  o.cfg.score_thr = 0.3f;
  o.cfg.nms.type = NmsType::kHard;
  o.cfg.nms.iou_threshold = 0.5f;
  o.cfg.max_per_img = 5;
  return o;
}

TEST(Postprocess, ThresholdMaxDetectionsRescaleNoClipByDefault) {
  Outputs o = example();
  std::vector<codetr::Detection> d = o.run();
  ASSERT_EQ(d.size(), 2u);  // box 1 below the threshold
  EXPECT_FLOAT_EQ(d[0].x1, 20.f);
  EXPECT_FLOAT_EQ(d[0].y1, 10.f);
  EXPECT_FLOAT_EQ(d[0].x2, 60.f);  // beyond the width 40: mmdet does not clip
  EXPECT_FLOAT_EQ(d[0].y2, 20.f);
  EXPECT_EQ(d[0].label, 3);
  EXPECT_FLOAT_EQ(d[1].x1, 2.f);
  EXPECT_FLOAT_EQ(d[1].y2, 60.f);  // beyond the height 50
  EXPECT_FLOAT_EQ(d[1].score, 0.5f);
  o.cfg.max_per_img = 1;
  EXPECT_EQ(o.run().size(), 1u);
}

TEST(Postprocess, ClipIsAnOption) {
  Outputs o = example();
  o.cfg.clip = true;
  std::vector<codetr::Detection> d = o.run();
  ASSERT_EQ(d.size(), 2u);
  EXPECT_FLOAT_EQ(d[0].x2, 40.f);  // 60 clipped to the width 40
  EXPECT_FLOAT_EQ(d[1].y2, 50.f);  // 60 clipped to the height 50
  EXPECT_FLOAT_EQ(d[1].x1, 2.f);
}

TEST(Postprocess, RefusesLabelsOutsideTheClassList) {
  Outputs o = example();
  EXPECT_THROW(o.run(/*num_classes=*/3), codetr::Error);  // label 3 of 3 classes
  EXPECT_EQ(o.run(/*num_classes=*/4).size(), 2u);
  o.labels[1] = -1;  // even a box below the score threshold
  EXPECT_THROW(o.run(), codetr::Error);
}

TEST(Postprocess, NonFiniteMessageNamesTheOverflow) {
  const std::vector<float> values = {1.f, NAN, INFINITY, 2.f};
  try {
    core::check_finite("engine output 'boxes'", values.data(), 4, "float16");
    FAIL() << "expected an error";
  } catch (const codetr::Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("engine output 'boxes' has 2 non-finite value(s) (NaN/inf) out of 4"), std::string::npos) << msg;
    EXPECT_NE(msg.find("float16 model overflowed"), std::string::npos) << msg;
    EXPECT_NE(msg.find("--dtype bfloat16"), std::string::npos) << msg;
  }
  EXPECT_NO_THROW(core::check_finite("x", values.data(), 1, "float16"));
}

}  // namespace
