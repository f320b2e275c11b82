#pragma once
// Detection post-processing with mmdet/mmcv semantics: score threshold, class-aware NMS or
// soft-NMS (mmcv.ops.batched_nms), max detections, rescale to original pixels, clip.
#include <cstdint>
#include <vector>

#include <torch/types.h>  // at::Tensor and the torch:: factories, without the nn/optim API

#include "codetr/model_config.h"
#include "codetr/preprocess.h"

namespace codetr {

struct Detection {
  float x1 = 0, y1 = 0, x2 = 0, y2 = 0;  // xyxy in original image pixels
  float score = 0;
  int64_t label = 0;                     // class index into ModelConfig::classes
};

struct NmsResult {
  torch::Tensor keep;    // int64 indices into the input, in output order
  torch::Tensor scores;  // float32 scores of the kept boxes (decayed ones for soft-NMS)
};

// mmcv.ops.nms (offset 0): boxes (N,4) xyxy, scores (N); a box is suppressed by a higher-scoring
// kept box when IoU > iou_threshold. Keep is ordered by descending score (ties: lower index first).
NmsResult nms(const torch::Tensor& boxes, const torch::Tensor& scores, float iou_threshold);

// mmcv.ops.soft_nms (offset 0): repeatedly takes the highest remaining score and decays the
// others by linear (1 - IoU when IoU >= iou_threshold), naive (0 when IoU >= iou_threshold) or
// gaussian (exp(-IoU^2 / sigma)) weights;
// boxes whose score falls below min_score are dropped. Keep is in selection order.
NmsResult soft_nms(const torch::Tensor& boxes, const torch::Tensor& scores, float iou_threshold,
                   SoftNmsMethod method, float sigma, float min_score);

// mmcv.ops.batched_nms: class-aware by shifting each class's boxes by label * (max coordinate + 1).
// NmsType::kNone keeps every box in input order.
NmsResult batched_nms(const torch::Tensor& boxes, const torch::Tensor& scores, const torch::Tensor& labels,
                      const NmsConfig& config);

// One image's engine outputs -> detections: boxes (Q,4) xyxy in network-input pixels,
// scores (Q), labels (Q). In mmdet's (CoDINOHead) order: score_thr (keep score > thr when
// thr > 0), divide by the resize factors, batched NMS, max_per_img; then clip to the original
// image (which mmdet leaves out; it moves boxes by float rounding at most).
std::vector<Detection> postprocess(const torch::Tensor& boxes, const torch::Tensor& scores,
                                   const torch::Tensor& labels, const ImageMeta& meta,
                                   const PostprocessConfig& config);

}  // namespace codetr
