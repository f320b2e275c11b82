#pragma once
// codetr::Detector: model dir (model.json + AOTInductor model.pt2) -> detections.
#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <torch/types.h>  // at::Tensor and the torch:: factories, without the nn/optim API

#include "codetr/model_config.h"
#include "codetr/postprocess.h"
#include "codetr/preprocess.h"

namespace codetr {

struct DetectorOptions {
  // "cpu" or "cuda"; empty = model.json's device. An AOTInductor package runs only on the device
  // it was compiled for, so a different value is an error.
  std::string device;
  int device_index = -1;  // CUDA device index (-1: the current device)
  // Path of libcodetr_ops.so (the ms_deform_attn op the real Co-DINO packages call). Empty:
  // $CODETR_OPS_LIBRARY, else the file next to libcodetr.so, else the build tree's copy; when
  // none exists the package must not need the op (loading it then fails with a hint).
  std::string ops_library;
  // Model instances inside the AOTInductor container: up to this many detect() calls run the
  // engine at the same time; further calls wait for a free instance.
  size_t num_runners = 1;
  // Run the engine as a CUDA graph: the first run_engine() call warms the package up twice on a
  // side stream and captures one run; later calls copy their inputs into the graph's static
  // input tensors, replay it and return copies of its static outputs. Needs a CUDA engine whose
  // model.json "inputs" are fully static (no -1 dimension) and a runtime built against a CUDA
  // libtorch; otherwise the constructor throws codetr::Error. Graph replays are serialised (one
  // at a time per Detector), so num_runners > 1 gives no engine concurrency with graphs on.
  bool cuda_graphs = false;
  // Overrides of model.json's postprocess section.
  std::optional<float> score_thr;
  std::optional<NmsConfig> nms;
  std::optional<int64_t> max_per_img;
};

// Wall time of each stage, summed over the engine batches of one detect() call. On CUDA the
// device is synchronised at stage boundaries when times are requested (only then).
struct StageTimes {
  double preprocess_ms = 0;
  double engine_ms = 0;
  double postprocess_ms = 0;
};

// Checks engine inputs against model.json's "inputs" (count, rank, every dimension including
// the batch, dtype, device, contiguity): an AOTInductor package does not check its inputs.
void validate_engine_inputs(const std::vector<torch::Tensor>& inputs, const std::vector<TensorSpec>& specs,
                            const torch::Device& device);

// Checks engine outputs against model.json's "outputs" (count, shape, dtype).
void validate_engine_outputs(const std::vector<torch::Tensor>& outputs, const std::vector<TensorSpec>& specs);

// Throws codetr::Error when engine outputs `boxes` or `scores` (any device, any floating dtype)
// hold NaN or inf, naming the output and the count. `dtype` is model.json's compute dtype: for
// "float16" the message says the engine overflowed (float16 stops at 65504; Swin-L checkpoints
// are known to exceed it) and to re-export with --dtype bfloat16 or float32. detect() calls it on
// every engine batch (on the host copies it makes anyway); run_engine() does not.
void check_finite_outputs(const torch::Tensor& boxes, const torch::Tensor& scores, const std::string& dtype);

// Makes torch.ops.codetr.ms_deform_attn available (dlopen RTLD_GLOBAL of libcodetr_ops.so, once
// per process). Returns the library loaded, "registered" when the op already exists, or "" when
// no library was found. Throws codetr::Error when an explicitly named library cannot be loaded.
std::string load_ops_library(const std::string& explicit_path = "");

// Thread-safety: detect() and run_engine() may be called concurrently from several threads on
// one Detector. Pre- and post-processing keep no shared state; the engine is the AOTInductor
// model container, whose run() hands each call one of `num_runners` model instances (calls wait
// while all are busy); with `cuda_graphs` the engine runs are serialised by a mutex instead (the
// graph has one set of static input/output tensors). Construction and destruction must not
// race with calls.
class Detector {
 public:
  explicit Detector(const std::string& model_dir, DetectorOptions options = {});
  ~Detector();
  Detector(const Detector&) = delete;
  Detector& operator=(const Detector&) = delete;

  // One result list per image, in input order. Any number of images: they are split into
  // engine-sized batches; a static engine's last batch is filled up by repeating an image whose
  // extra outputs are dropped.
  std::vector<std::vector<Detection>> detect(const std::vector<ImageView>& images, StageTimes* times = nullptr) const;
  std::vector<Detection> detect(const ImageView& image) const;

  // Validates `inputs` against model.json, runs the package, validates its outputs (shapes and
  // dtypes; not their values: see check_finite_outputs).
  std::vector<torch::Tensor> run_engine(const std::vector<torch::Tensor>& inputs) const;

  const ModelConfig& config() const;
  const PostprocessConfig& postprocess_config() const;  // model.json's, with the options' overrides
  torch::Device device() const;
  int64_t max_batch() const;  // images per engine call
  const std::string& ops_library() const;  // what load_ops_library() returned

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace codetr
