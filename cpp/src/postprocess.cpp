#include "codetr/postprocess.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "codetr/error.h"
#include "postprocess_host.h"

namespace codetr {
namespace {

void check_boxes_scores(const torch::Tensor& boxes, const torch::Tensor& scores, const char* op) {
  if (boxes.dim() != 2 || boxes.size(1) != 4)
    throw Error(std::string(op) + ": boxes must be (N,4), got " + c10::str(boxes.sizes()));
  if (scores.dim() != 1 || scores.size(0) != boxes.size(0))
    throw Error(std::string(op) + ": scores must be (N) with N = " + std::to_string(boxes.size(0)) + ", got " +
                c10::str(scores.sizes()));
}

void check_labels(const torch::Tensor& labels, int64_t n, const char* op) {
  if (labels.dim() != 1 || labels.size(0) != n)
    throw Error(std::string(op) + ": labels must be (N) with N = " + std::to_string(n) + ", got " +
                c10::str(labels.sizes()));
}

// Contiguous host copies (NMS is sequential; N is at most a few hundred).
std::vector<float> host_floats(const torch::Tensor& t) {
  torch::Tensor c = t.to(torch::kCPU, torch::kFloat).contiguous();
  return std::vector<float>(c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
}
std::vector<int64_t> host_longs(const torch::Tensor& t) {
  torch::Tensor c = t.to(torch::kCPU, torch::kLong).contiguous();
  return std::vector<int64_t>(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
}

float area(const float* b) { return (b[2] - b[0]) * (b[3] - b[1]); }

float iou(const float* a, float area_a, const float* b, float area_b) {
  const float w = std::max(0.f, std::min(a[2], b[2]) - std::max(a[0], b[0]));
  const float h = std::max(0.f, std::min(a[3], b[3]) - std::max(a[1], b[1]));
  const float inter = w * h;
  return inter / (area_a + area_b - inter);
}

// Indices into the input, in output order, and the kept (for soft-NMS: decayed) scores.
struct Kept {
  std::vector<int64_t> keep;
  std::vector<float> scores;
};

Kept nms_host(const float* boxes, const float* scores, int64_t n, float iou_threshold) {
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return scores[a] > scores[b]; });
  std::vector<float> areas(n);
  for (int64_t i = 0; i < n; ++i) areas[i] = area(&boxes[4 * i]);

  std::vector<char> suppressed(n, 0);
  Kept kept;
  for (int64_t oi = 0; oi < n; ++oi) {
    const int64_t i = order[oi];
    if (suppressed[i]) continue;
    kept.keep.push_back(i);
    kept.scores.push_back(scores[i]);
    for (int64_t oj = oi + 1; oj < n; ++oj) {
      const int64_t j = order[oj];
      if (!suppressed[j] && iou(&boxes[4 * i], areas[i], &boxes[4 * j], areas[j]) > iou_threshold)
        suppressed[j] = 1;
    }
  }
  return kept;
}

// The candidates of soft-NMS not yet selected nor dropped, stored by value in slots
// [begin, size): contiguous arrays keep the per-selection passes cache-friendly and let the
// compiler vectorise the decay pass.
struct Candidates {
  std::vector<float> x1, y1, x2, y2, area, score;
  std::vector<int64_t> id;

  void move(size_t to, size_t from) {
    x1[to] = x1[from], y1[to] = y1[from], x2[to] = x2[from], y2[to] = y2[from];
    area[to] = area[from], score[to] = score[from], id[to] = id[from];
  }
  void swap(size_t a, size_t b) {
    std::swap(x1[a], x1[b]), std::swap(y1[a], y1[b]), std::swap(x2[a], x2[b]), std::swap(y2[a], y2[b]);
    std::swap(area[a], area[b]), std::swap(score[a], score[b]), std::swap(id[a], id[b]);
  }
};

Kept soft_nms_host(const float* boxes, const float* scores, int64_t n, float iou_threshold, SoftNmsMethod method,
                   float sigma, float min_score) {
  if (method == SoftNmsMethod::kGaussian && !(sigma > 0)) throw Error("soft_nms: sigma must be positive");
  Candidates c;
  for (auto* v : {&c.x1, &c.y1, &c.x2, &c.y2, &c.area}) v->resize(n);
  c.score.assign(scores, scores + n);
  c.id.resize(n);
  for (int64_t i = 0; i < n; ++i) {
    c.x1[i] = boxes[4 * i], c.y1[i] = boxes[4 * i + 1], c.x2[i] = boxes[4 * i + 2], c.y2[i] = boxes[4 * i + 3];
    c.area[i] = area(&boxes[4 * i]);
    c.id[i] = i;
  }
  std::vector<float> overlap(n);
  Kept kept;
  size_t begin = 0, size = static_cast<size_t>(n);
  while (begin < size) {
    // Select the first maximum, so among equal scores the earlier survivor (in mmcv's swap
    // order) wins.
    size_t best = begin;
    for (size_t p = begin + 1; p < size; ++p)
      if (c.score[p] > c.score[best]) best = p;
    c.swap(begin, best);
    kept.keep.push_back(c.id[begin]);
    kept.scores.push_back(c.score[begin]);
    const float top_x1 = c.x1[begin], top_y1 = c.y1[begin], top_x2 = c.x2[begin], top_y2 = c.y2[begin];
    const float top_area = c.area[begin];
    ++begin;
    // Decay every remaining score: the IoU with the selected box (the same operations, in the
    // same order, as iou()), then the method's weight. Separate loops so that the first (and,
    // but for gaussian's exp, the second) vectorise.
    for (size_t p = begin; p < size; ++p) {
      const float w = std::max(0.f, std::min(top_x2, c.x2[p]) - std::max(top_x1, c.x1[p]));
      const float h = std::max(0.f, std::min(top_y2, c.y2[p]) - std::max(top_y1, c.y1[p]));
      const float inter = w * h;
      overlap[p] = inter / (top_area + c.area[p] - inter);
    }
    if (method == SoftNmsMethod::kLinear) {
      for (size_t p = begin; p < size; ++p) c.score[p] *= overlap[p] >= iou_threshold ? 1.f - overlap[p] : 1.f;
    } else if (method == SoftNmsMethod::kNaive) {
      for (size_t p = begin; p < size; ++p) c.score[p] *= overlap[p] >= iou_threshold ? 0.f : 1.f;
    } else {
      for (size_t p = begin; p < size; ++p) c.score[p] *= std::exp(-(overlap[p] * overlap[p]) / sigma);
    }
    // mmcv decays and drops in one loop, dropping a box by moving the last candidate into its
    // slot and re-checking the slot; each candidate is decayed once either way, so dropping
    // after the decay pass leaves the same candidates in the same slots.
    for (size_t p = begin; p < size;) {
      if (c.score[p] < min_score) {
        c.move(p, size - 1);
        --size;
      } else {
        ++p;
      }
    }
  }
  return kept;
}

Kept batched_nms_host(const float* boxes, const float* scores, const int64_t* labels, int64_t n,
                      const NmsConfig& config) {
  if (config.type == NmsType::kNone || n == 0) {
    Kept all;
    all.keep.resize(n);
    std::iota(all.keep.begin(), all.keep.end(), 0);
    all.scores.assign(scores, scores + n);
    return all;
  }
  // Same fp32 arithmetic as mmcv: offsets = labels * (max_coordinate + 1). The maximum
  // propagates NaN like torch.max.
  float max_coordinate = boxes[0];
  for (int64_t k = 1; k < 4 * n; ++k)
    if (boxes[k] > max_coordinate || std::isnan(boxes[k])) max_coordinate = boxes[k];
  const float class_stride = max_coordinate + 1.0f;
  std::vector<float> shifted(4 * n);
  for (int64_t i = 0; i < n; ++i) {
    const float offset = static_cast<float>(labels[i]) * class_stride;
    for (int k = 0; k < 4; ++k) shifted[4 * i + k] = boxes[4 * i + k] + offset;
  }
  if (config.type == NmsType::kHard) return nms_host(shifted.data(), scores, n, config.iou_threshold);
  return soft_nms_host(shifted.data(), scores, n, config.iou_threshold, config.method, config.sigma, config.min_score);
}

NmsResult to_result(const Kept& kept) {
  return NmsResult{torch::tensor(kept.keep, torch::kLong).view({-1}), torch::tensor(kept.scores, torch::kFloat).view({-1})};
}

}  // namespace

namespace detail {

std::vector<Detection> postprocess_host(const float* boxes_in, const float* scores_in, const int64_t* labels_in,
                                        int64_t count, const ImageMeta& meta, const PostprocessConfig& config) {
  // score_thr (keep score > thr, in input order), then the rescale to original pixels. mmdet
  // (CoDINOHead) rescales before NMS; IoU is invariant to the per-axis scale, but the class
  // offsets and fp32 rounding are not, so the order matters for bit-level agreement.
  std::vector<float> boxes, scores;
  std::vector<int64_t> labels;
  boxes.reserve(4 * count);
  scores.reserve(count);
  labels.reserve(count);
  const float factors[4] = {meta.w_scale, meta.h_scale, meta.w_scale, meta.h_scale};
  for (int64_t i = 0; i < count; ++i) {
    if (config.score_thr > 0 && !(scores_in[i] > config.score_thr)) continue;
    for (int k = 0; k < 4; ++k) boxes.push_back(boxes_in[4 * i + k] / factors[k]);
    scores.push_back(scores_in[i]);
    labels.push_back(labels_in[i]);
  }
  const int64_t n = static_cast<int64_t>(scores.size());
  const Kept kept = batched_nms_host(boxes.data(), scores.data(), labels.data(), n, config.nms);

  const int64_t out_count = std::min<int64_t>(static_cast<int64_t>(kept.keep.size()), config.max_per_img);
  const float max_x = static_cast<float>(meta.original.width), max_y = static_cast<float>(meta.original.height);
  std::vector<Detection> dets(out_count);
  for (int64_t i = 0; i < out_count; ++i) {
    const float* b = &boxes[4 * kept.keep[i]];
    Detection& d = dets[i];
    d.x1 = std::clamp(b[0], 0.f, max_x);
    d.y1 = std::clamp(b[1], 0.f, max_y);
    d.x2 = std::clamp(b[2], 0.f, max_x);
    d.y2 = std::clamp(b[3], 0.f, max_y);
    d.score = kept.scores[i];
    d.label = labels[kept.keep[i]];
  }
  return dets;
}

}  // namespace detail

NmsResult nms(const torch::Tensor& boxes_t, const torch::Tensor& scores_t, float iou_threshold) {
  check_boxes_scores(boxes_t, scores_t, "nms");
  const std::vector<float> boxes = host_floats(boxes_t), scores = host_floats(scores_t);
  return to_result(nms_host(boxes.data(), scores.data(), scores_t.size(0), iou_threshold));
}

NmsResult soft_nms(const torch::Tensor& boxes_t, const torch::Tensor& scores_t, float iou_threshold,
                   SoftNmsMethod method, float sigma, float min_score) {
  check_boxes_scores(boxes_t, scores_t, "soft_nms");
  const std::vector<float> boxes = host_floats(boxes_t), scores = host_floats(scores_t);
  return to_result(
      soft_nms_host(boxes.data(), scores.data(), scores_t.size(0), iou_threshold, method, sigma, min_score));
}

NmsResult batched_nms(const torch::Tensor& boxes_t, const torch::Tensor& scores_t, const torch::Tensor& labels_t,
                      const NmsConfig& config) {
  check_boxes_scores(boxes_t, scores_t, "batched_nms");
  check_labels(labels_t, boxes_t.size(0), "batched_nms");
  const std::vector<float> boxes = host_floats(boxes_t), scores = host_floats(scores_t);
  const std::vector<int64_t> labels = host_longs(labels_t);
  return to_result(batched_nms_host(boxes.data(), scores.data(), labels.data(), scores_t.size(0), config));
}

std::vector<Detection> postprocess(const torch::Tensor& boxes_t, const torch::Tensor& scores_t,
                                   const torch::Tensor& labels_t, const ImageMeta& meta,
                                   const PostprocessConfig& config) {
  check_boxes_scores(boxes_t, scores_t, "postprocess");
  check_labels(labels_t, boxes_t.size(0), "postprocess");
  const std::vector<float> boxes = host_floats(boxes_t), scores = host_floats(scores_t);
  const std::vector<int64_t> labels = host_longs(labels_t);
  return detail::postprocess_host(boxes.data(), scores.data(), labels.data(), scores_t.size(0), meta, config);
}

}  // namespace codetr
