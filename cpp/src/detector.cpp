// codetr::Detector: model.json (core) + the engine adapter (engine.h) + pre/postprocessing (core).
#include <array>
#include <chrono>
#include <filesystem>
#include <map>

#include <torch/cuda.h>
#include <torch/version.h>

#include "codetr/codetr.h"
#include "core.h"
#include "engine.h"

namespace codetr {
namespace {

int parse_version_part(const std::string& text, size_t& pos) {
  size_t end = pos;
  while (end < text.size() && std::isdigit(static_cast<unsigned char>(text[end]))) ++end;
  if (end == pos) return -1;
  const int v = std::stoi(text.substr(pos, end - pos));
  pos = end + 1;
  return v;
}

double ms_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

// Engine outputs (boxes, scores, labels) as contiguous host tensors of fp32, fp32, int64. From a
// CUDA engine the first two are copied asynchronously into pinned memory and the last one
// synchronously on the same (current) stream, so the host waits for the device once.
std::array<torch::Tensor, 3> outputs_on_host(const std::vector<torch::Tensor>& outputs) {
  std::array<torch::Tensor, 3> host;
  for (size_t i = 0; i < host.size(); ++i) {
    const torch::Tensor& out = outputs[i];
    if (out.is_cpu()) {
      host[i] = out;
      continue;
    }
    try {
      host[i] = torch::empty(out.sizes(), out.options().device(torch::kCPU).pinned_memory(true));
      host[i].copy_(out, /*non_blocking=*/i + 1 < host.size());
    } catch (const std::exception& e) {
      // Also where an asynchronous engine failure surfaces.
      throw Error("copying engine output " + std::to_string(i) + " to the host failed: " + detail::message_of(e));
    }
  }
  return {host[0].to(torch::kFloat).contiguous(), host[1].to(torch::kFloat).contiguous(),
          host[2].to(torch::kLong).contiguous()};
}

}  // namespace

const char* version() { return CODETR_VERSION; }

struct Detector::Impl {
  ModelConfig config;
  PostprocessConfig post;
  torch::Device device{torch::kCPU};
  std::string ops_library;
  std::unique_ptr<detail::Engine> engine;
};

Detector::Detector(const std::string& model_dir, DetectorOptions options) : impl_(std::make_unique<Impl>()) {
  namespace fs = std::filesystem;
  Impl& m = *impl_;
  m.config = load_model_config(model_dir);
  const ModelConfig& cfg = m.config;
  const std::string json_path = model_dir + "/model.json";

  if (cfg.engine_format != "aoti")
    throw Error(json_path + ": engine format '" + cfg.engine_format +
                "' is not run by the C++ runtime (export with the AOTInductor format)");
  size_t pos = 0;
  const int major = parse_version_part(cfg.torch_version, pos);
  const int minor = parse_version_part(cfg.torch_version, pos);
  if (major != TORCH_VERSION_MAJOR || minor != TORCH_VERSION_MINOR)
    throw Error(json_path + ": the package was built with torch " + cfg.torch_version + ", this runtime uses libtorch " +
                std::to_string(TORCH_VERSION_MAJOR) + "." + std::to_string(TORCH_VERSION_MINOR) +
                " (major.minor must match; re-export with this torch)");

  const std::string device_name = options.device.empty() ? cfg.device : options.device;
  if (device_name != "cpu" && device_name != "cuda")
    throw Error("device '" + device_name + "' is not supported (use cpu or cuda)");
  if (device_name != cfg.device)
    throw Error("device " + device_name + " requested, but " + json_path + " says the package was compiled for " +
                cfg.device + " (an AOTInductor package runs only there; re-export with --device " + device_name + ")");
  if (device_name == "cuda") {
    if (!torch::cuda::is_available()) throw Error("the model in '" + model_dir + "' needs CUDA, but no CUDA device is available");
    if (options.device_index >= static_cast<int>(torch::cuda::device_count()))
      throw Error("CUDA device index " + std::to_string(options.device_index) + " does not exist (" +
                  std::to_string(torch::cuda::device_count()) + " devices)");
    m.device = options.device_index >= 0 ? torch::Device(torch::kCUDA, options.device_index) : torch::Device(torch::kCUDA);
  }

  m.post = cfg.postprocess;
  if (options.score_thr) m.post.score_thr = *options.score_thr;
  if (options.nms) m.post.nms = *options.nms;
  if (options.max_per_img) m.post.max_per_img = *options.max_per_img;
  if (options.clip_boxes) m.post.clip = *options.clip_boxes;
  if (m.post.max_per_img < 1) throw Error("max_per_img must be positive");
  if (m.post.nms.type == NmsType::kSoft && m.post.nms.method == SoftNmsMethod::kGaussian && !(m.post.nms.sigma > 0))
    throw Error("soft-NMS sigma must be positive");

  if (options.cuda_graphs) {
    // A graph replays fixed kernels on fixed buffers: one input shape, one device.
    for (const TensorSpec& spec : cfg.inputs)
      for (int64_t dim : spec.shape)
        if (dim < 0)
          throw Error("cuda_graphs needs fully static engine inputs, but " + json_path + " input '" + spec.name +
                      "' has a dynamic dimension (export a static engine)");
    if (!m.device.is_cuda())
      throw Error("cuda_graphs needs a CUDA engine, but " + json_path + " says the package runs on " + cfg.device);
  }

  const std::string package = model_dir + "/" + cfg.engine_file;
  if (!fs::exists(package)) throw Error("engine package " + package + " does not exist");
  if (!fs::is_regular_file(package)) throw Error("engine package " + package + " is not a regular file");
  m.ops_library = load_ops_library(options.ops_library);
  m.engine = std::make_unique<detail::Engine>(package, cfg, json_path, m.device, options.num_runners, options.cuda_graphs);
}

Detector::~Detector() = default;

const ModelConfig& Detector::config() const { return impl_->config; }
const PostprocessConfig& Detector::postprocess_config() const { return impl_->post; }
std::string Detector::device() const { return impl_->device.str(); }
int64_t Detector::max_batch() const { return impl_->config.input.max_batch; }
const std::string& Detector::ops_library() const { return impl_->ops_library; }

std::vector<std::vector<Detection>> Detector::detect(const std::vector<ImageView>& images, StageTimes* times) const {
  try {
    return detect_impl(images, times);
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    // A torch error (allocation, copy) surfaces as a codetr::Error without its C++ backtrace.
    throw Error("detect failed: " + detail::message_of(e));
  }
}

std::vector<std::vector<Detection>> Detector::detect_impl(const std::vector<ImageView>& images, StageTimes* times) const {
  const Impl& m = *impl_;
  const ModelConfig& cfg = m.config;
  const bool cuda = m.device.is_cuda();
  auto sync = [&] {
    if (times != nullptr && cuda) torch::cuda::synchronize(m.device.has_index() ? m.device.index() : -1);
  };
  // Batching rule: only images of one padded input size share an engine call, in input order
  // within each size, so that an image's result never depends on its batch companions (with a
  // dynamic engine each image is padded exactly as it would be alone).
  std::map<std::pair<int64_t, int64_t>, std::vector<size_t>> by_size;
  std::vector<std::pair<int64_t, int64_t>> size_order;
  for (size_t i = 0; i < images.size(); ++i) {
    const std::string what = "image " + std::to_string(i);
    const core::Size2 pad = core::padded_size(core::plan_image(images[i], cfg, what), cfg, what);
    auto [it, inserted] = by_size.try_emplace({pad.height, pad.width});
    if (inserted) size_order.push_back(it->first);
    it->second.push_back(i);
  }
  std::vector<std::vector<Detection>> results(images.size());
  const size_t max_batch = static_cast<size_t>(cfg.input.max_batch);
  for (const auto& size : size_order) {
    const std::vector<size_t>& members = by_size[size];
    for (size_t start = 0; start < members.size(); start += max_batch) {
      const size_t count = std::min(members.size() - start, max_batch);
      std::vector<ImageView> chunk;
      for (size_t k = 0; k < count; ++k) chunk.push_back(images[members[start + k]]);

      auto t0 = std::chrono::steady_clock::now();
      detail::EngineBatch batch = detail::preprocess_batch(chunk, cfg, m.device);
      // A static batch (or a dynamic minimum) larger than the chunk: repeat its last image,
      // whose extra outputs are dropped.
      const int64_t fill = std::max<int64_t>(cfg.input.min_batch - static_cast<int64_t>(count), 0);
      if (fill > 0) {
        for (torch::Tensor& t : batch.inputs) {
          std::vector<int64_t> reps(t.dim(), 1);
          reps[0] = fill;
          t = torch::cat({t, t.narrow(0, t.size(0) - 1, 1).repeat(reps)}, 0);
        }
      }
      sync();
      if (times) times->preprocess_ms += ms_since(t0);

      t0 = std::chrono::steady_clock::now();
      const std::vector<torch::Tensor> outputs = m.engine->run(batch.inputs);
      sync();
      if (times) times->engine_ms += ms_since(t0);

      t0 = std::chrono::steady_clock::now();
      const std::array<torch::Tensor, 3> host = outputs_on_host(outputs);
      const int64_t queries = host[1].size(1);
      // NaN/inf (a float16 overflow) would pass NMS and top-k silently: refuse them.
      core::check_finite("engine output 'boxes'", host[0].data_ptr<float>(), static_cast<int64_t>(count) * queries * 4,
                         cfg.dtype);
      core::check_finite("engine output 'scores'", host[1].data_ptr<float>(), static_cast<int64_t>(count) * queries,
                         cfg.dtype);
      for (size_t k = 0; k < count; ++k)
        results[members[start + k]] = core::postprocess(
            host[0].data_ptr<float>() + k * queries * 4, host[1].data_ptr<float>() + k * queries,
            host[2].data_ptr<int64_t>() + k * queries, queries, batch.plan.metas[k], m.post,
            static_cast<int64_t>(cfg.classes.size()));
      if (times) times->postprocess_ms += ms_since(t0);
    }
  }
  return results;
}

std::vector<Detection> Detector::detect(const ImageView& image) const { return detect(std::vector<ImageView>{image})[0]; }

std::vector<DetectOutcome> Detector::detect_each(const std::vector<ImageView>& images) const {
  std::vector<DetectOutcome> outcomes(images.size());
  try {
    std::vector<std::vector<Detection>> results = detect(images);
    for (size_t i = 0; i < images.size(); ++i) outcomes[i].detections = std::move(results[i]);
    return outcomes;
  } catch (const std::exception&) {
    // Which image failed (validation, a non-finite output) or whether the whole call did (an
    // out-of-memory batch) is not known here: running each alone attributes every error to its
    // own image and still gives the others their results.
  }
  for (size_t i = 0; i < images.size(); ++i) {
    try {
      outcomes[i].detections = detect(images[i]);
    } catch (const std::exception& e) {
      const std::string message = e.what();
      outcomes[i].error = message.empty() ? "detect failed" : message;  // empty would read as success
    }
  }
  return outcomes;
}

}  // namespace codetr
