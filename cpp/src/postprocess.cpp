#include "codetr/postprocess.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "codetr/error.h"

namespace codetr {
namespace {

void check_boxes_scores(const torch::Tensor& boxes, const torch::Tensor& scores, const char* op) {
  if (boxes.dim() != 2 || boxes.size(1) != 4)
    throw Error(std::string(op) + ": boxes must be (N,4), got " + c10::str(boxes.sizes()));
  if (scores.dim() != 1 || scores.size(0) != boxes.size(0))
    throw Error(std::string(op) + ": scores must be (N) with N = " + std::to_string(boxes.size(0)) + ", got " +
                c10::str(scores.sizes()));
}

// Box coordinates as contiguous fp32 on the CPU (NMS is sequential; N is at most a few hundred).
std::vector<float> host_floats(const torch::Tensor& t) {
  torch::Tensor c = t.to(torch::kCPU, torch::kFloat).contiguous();
  return std::vector<float>(c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
}

float area(const float* b) { return (b[2] - b[0]) * (b[3] - b[1]); }

float iou(const float* a, float area_a, const float* b, float area_b) {
  const float w = std::max(0.f, std::min(a[2], b[2]) - std::max(a[0], b[0]));
  const float h = std::max(0.f, std::min(a[3], b[3]) - std::max(a[1], b[1]));
  const float inter = w * h;
  return inter / (area_a + area_b - inter);
}

NmsResult make_result(const std::vector<int64_t>& keep, const std::vector<float>& scores) {
  return NmsResult{torch::tensor(keep, torch::kLong).view({-1}), torch::tensor(scores, torch::kFloat).view({-1})};
}

}  // namespace

NmsResult nms(const torch::Tensor& boxes_t, const torch::Tensor& scores_t, float iou_threshold) {
  check_boxes_scores(boxes_t, scores_t, "nms");
  const std::vector<float> boxes = host_floats(boxes_t), scores = host_floats(scores_t);
  const int64_t n = scores_t.size(0);
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return scores[a] > scores[b]; });
  std::vector<float> areas(n);
  for (int64_t i = 0; i < n; ++i) areas[i] = area(&boxes[4 * i]);

  std::vector<char> suppressed(n, 0);
  std::vector<int64_t> keep;
  std::vector<float> kept_scores;
  for (int64_t oi = 0; oi < n; ++oi) {
    const int64_t i = order[oi];
    if (suppressed[i]) continue;
    keep.push_back(i);
    kept_scores.push_back(scores[i]);
    for (int64_t oj = oi + 1; oj < n; ++oj) {
      const int64_t j = order[oj];
      if (!suppressed[j] && iou(&boxes[4 * i], areas[i], &boxes[4 * j], areas[j]) > iou_threshold)
        suppressed[j] = 1;
    }
  }
  return make_result(keep, kept_scores);
}

NmsResult soft_nms(const torch::Tensor& boxes_t, const torch::Tensor& scores_t, float iou_threshold,
                   SoftNmsMethod method, float sigma, float min_score) {
  check_boxes_scores(boxes_t, scores_t, "soft_nms");
  if (method == SoftNmsMethod::kGaussian && !(sigma > 0)) throw Error("soft_nms: sigma must be positive");
  const std::vector<float> boxes = host_floats(boxes_t);
  std::vector<float> scores = host_floats(scores_t);
  const int64_t n = scores_t.size(0);
  std::vector<float> areas(n);
  for (int64_t i = 0; i < n; ++i) areas[i] = area(&boxes[4 * i]);

  // `alive` holds the candidates not yet selected nor dropped; selection takes the first
  // maximum, so among equal scores the earlier survivor (in mmcv's swap order) wins.
  std::vector<int64_t> alive(n);
  std::iota(alive.begin(), alive.end(), 0);
  std::vector<int64_t> keep;
  std::vector<float> kept_scores;
  size_t begin = 0;
  while (begin < alive.size()) {
    size_t best = begin;
    for (size_t p = begin + 1; p < alive.size(); ++p)
      if (scores[alive[p]] > scores[alive[best]]) best = p;
    std::swap(alive[begin], alive[best]);
    const int64_t top = alive[begin];
    keep.push_back(top);
    kept_scores.push_back(scores[top]);
    ++begin;
    for (size_t p = begin; p < alive.size(); ++p) {
      const int64_t j = alive[p];
      const float overlap = iou(&boxes[4 * top], areas[top], &boxes[4 * j], areas[j]);
      float weight = 1.f;
      if (method == SoftNmsMethod::kLinear) {
        if (overlap >= iou_threshold) weight = 1.f - overlap;
      } else if (method == SoftNmsMethod::kNaive) {
        if (overlap >= iou_threshold) weight = 0.f;
      } else {
        weight = std::exp(-(overlap * overlap) / sigma);
      }
      scores[j] *= weight;
      if (scores[j] < min_score) {
        // mmcv drops the box by moving the last candidate into its slot and re-checking the slot.
        alive[p] = alive.back();
        alive.pop_back();
        --p;
      }
    }
  }
  return make_result(keep, kept_scores);
}

NmsResult batched_nms(const torch::Tensor& boxes, const torch::Tensor& scores, const torch::Tensor& labels,
                      const NmsConfig& config) {
  check_boxes_scores(boxes, scores, "batched_nms");
  if (labels.dim() != 1 || labels.size(0) != boxes.size(0))
    throw Error("batched_nms: labels must be (N) with N = " + std::to_string(boxes.size(0)) + ", got " +
                c10::str(labels.sizes()));
  if (config.type == NmsType::kNone || boxes.size(0) == 0)
    return NmsResult{torch::arange(boxes.size(0), torch::kLong), scores.to(torch::kCPU, torch::kFloat)};
  const torch::Tensor b = boxes.to(torch::kCPU, torch::kFloat);
  // Same fp32 arithmetic as mmcv: offsets = labels * (max_coordinate + 1).
  const torch::Tensor offsets = labels.to(torch::kCPU, torch::kFloat) * (b.max() + 1.0f);
  const torch::Tensor shifted = b + offsets.unsqueeze(1);
  if (config.type == NmsType::kHard) return nms(shifted, scores, config.iou_threshold);
  return soft_nms(shifted, scores, config.iou_threshold, config.method, config.sigma, config.min_score);
}

std::vector<Detection> postprocess(const torch::Tensor& boxes_in, const torch::Tensor& scores_in,
                                   const torch::Tensor& labels_in, const ImageMeta& meta,
                                   const PostprocessConfig& config) {
  torch::Tensor boxes = boxes_in.to(torch::kCPU, torch::kFloat);
  torch::Tensor scores = scores_in.to(torch::kCPU, torch::kFloat);
  torch::Tensor labels = labels_in.to(torch::kCPU, torch::kLong);
  check_boxes_scores(boxes, scores, "postprocess");
  if (config.score_thr > 0) {
    const torch::Tensor valid = torch::nonzero(scores > config.score_thr).view({-1});
    boxes = boxes.index_select(0, valid);
    scores = scores.index_select(0, valid);
    labels = labels.index_select(0, valid);
  }
  // mmdet (CoDINOHead) rescales before NMS; IoU is invariant to the per-axis scale, but the
  // class offsets and fp32 rounding are not, so the order matters for bit-level agreement.
  const torch::Tensor factors = torch::tensor({meta.w_scale, meta.h_scale, meta.w_scale, meta.h_scale});
  boxes = boxes / factors;
  const NmsResult kept = batched_nms(boxes, scores, labels, config.nms);
  const int64_t count = std::min<int64_t>(kept.keep.size(0), config.max_per_img);
  const torch::Tensor keep = kept.keep.narrow(0, 0, count);
  torch::Tensor out_boxes = boxes.index_select(0, keep).contiguous();
  const torch::Tensor out_scores = kept.scores.narrow(0, 0, count).contiguous();
  const torch::Tensor out_labels = labels.index_select(0, keep).contiguous();

  const float max_x = static_cast<float>(meta.original.width), max_y = static_cast<float>(meta.original.height);
  const float* b = out_boxes.data_ptr<float>();
  std::vector<Detection> dets(count);
  for (int64_t i = 0; i < count; ++i) {
    Detection& d = dets[i];
    d.x1 = std::clamp(b[4 * i + 0], 0.f, max_x);
    d.y1 = std::clamp(b[4 * i + 1], 0.f, max_y);
    d.x2 = std::clamp(b[4 * i + 2], 0.f, max_x);
    d.y2 = std::clamp(b[4 * i + 3], 0.f, max_y);
    d.score = out_scores.data_ptr<float>()[i];
    d.label = out_labels.data_ptr<int64_t>()[i];
  }
  return dets;
}

}  // namespace codetr
