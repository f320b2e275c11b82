// Detection post-processing with mmdet/mmcv semantics on host arrays (core.h).

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core.h"

namespace codetr::core {
namespace {

float area(const float* b) { return (b[2] - b[0]) * (b[3] - b[1]); }

float iou(const float* a, float area_a, const float* b, float area_b) {
  const float w = std::max(0.f, std::min(a[2], b[2]) - std::max(a[0], b[0]));
  const float h = std::max(0.f, std::min(a[3], b[3]) - std::max(a[1], b[1]));
  const float inter = w * h;
  return inter / (area_a + area_b - inter);
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

}  // namespace

Kept nms(const float* boxes, const float* scores, int64_t n, float iou_threshold) {
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

Kept soft_nms(const float* boxes, const float* scores, int64_t n, float iou_threshold, SoftNmsMethod method,
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

Kept batched_nms(const float* boxes, const float* scores, const int64_t* labels, int64_t n, const NmsConfig& config) {
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
  if (config.type == NmsType::kHard) return nms(shifted.data(), scores, n, config.iou_threshold);
  return soft_nms(shifted.data(), scores, n, config.iou_threshold, config.method, config.sigma, config.min_score);
}

std::vector<Detection> postprocess(const float* boxes_in, const float* scores_in, const int64_t* labels_in,
                                   int64_t count, const ImageMeta& meta, const PostprocessConfig& config,
                                   int64_t num_classes) {
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
    if (labels_in[i] < 0 || labels_in[i] >= num_classes)
      throw Error("engine output label " + std::to_string(labels_in[i]) + " is outside the model's " +
                  std::to_string(num_classes) + " classes (model.json 'classes' does not match the engine)");
    if (config.score_thr > 0 && !(scores_in[i] > config.score_thr)) continue;
    for (int k = 0; k < 4; ++k) boxes.push_back(boxes_in[4 * i + k] / factors[k]);
    scores.push_back(scores_in[i]);
    labels.push_back(labels_in[i]);
  }
  const int64_t n = static_cast<int64_t>(scores.size());
  const Kept kept = batched_nms(boxes.data(), scores.data(), labels.data(), n, config.nms);
  const int64_t out_count = std::min<int64_t>(static_cast<int64_t>(kept.keep.size()), config.max_per_img);
  const float max_x = static_cast<float>(meta.original.width), max_y = static_cast<float>(meta.original.height);
  std::vector<Detection> dets(out_count);
  for (int64_t i = 0; i < out_count; ++i) {
    const float* b = &boxes[4 * kept.keep[i]];
    Detection& d = dets[i];
    d.x1 = b[0], d.y1 = b[1], d.x2 = b[2], d.y2 = b[3];
    if (config.clip) {
      d.x1 = std::clamp(d.x1, 0.f, max_x), d.x2 = std::clamp(d.x2, 0.f, max_x);
      d.y1 = std::clamp(d.y1, 0.f, max_y), d.y2 = std::clamp(d.y2, 0.f, max_y);
    }
    d.score = kept.scores[i];
    d.label = labels[kept.keep[i]];
  }
  return dets;
}

std::string nonfinite_message(const std::string& what, int64_t bad, int64_t total, const std::string& dtype) {
  std::string msg = what + " has " + std::to_string(bad) + " non-finite value(s) (NaN/inf) out of " + std::to_string(total);
  if (dtype == "float16")
    return msg + ": the float16 model overflowed (float16 stops at 65504; Swin-L checkpoints are known to exceed it); "
                 "re-export with --dtype bfloat16 (float32's range) or --dtype float32";
  if (dtype == "bfloat16" || dtype == "float32")
    return msg + ": a " + dtype + " model should not overflow; check the checkpoint (NaN/inf weights?) and the input" +
           (dtype == "bfloat16" ? "; try --dtype float32" : "");
  return msg + "; if the model runs in float16 it overflowed: use bfloat16 or float32";
}

void check_finite(const char* what, const float* values, int64_t n, const std::string& dtype) {
  int64_t bad = 0;
  for (int64_t i = 0; i < n; ++i) bad += !std::isfinite(values[i]);
  if (bad > 0) throw Error(nonfinite_message(what, bad, n, dtype));
}

}  // namespace codetr::core
