#pragma once
// The post-processing core on plain host arrays: codetr::postprocess (tensors in) and
// Detector::detect (engine outputs already copied to the host) both call it.
#include <cstdint>
#include <vector>

#include "codetr/postprocess.h"

namespace codetr::detail {

// One image's `count` queries: boxes (count x 4, xyxy in network-input pixels), scores, labels,
// contiguous. Same contract as codetr::postprocess.
std::vector<Detection> postprocess_host(const float* boxes, const float* scores, const int64_t* labels, int64_t count,
                                        const ImageMeta& meta, const PostprocessConfig& config);

}  // namespace codetr::detail
