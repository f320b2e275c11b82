#include "codetr/detector.h"

#include <array>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <mutex>
#include <sstream>

#include <torch/cuda.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/version.h>

#include "codetr/error.h"
#include "postprocess_host.h"

#ifdef CODETR_RUNTIME_CUDA
#include <ATen/cuda/CUDAEvent.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace codetr {
namespace {

std::string shape_str(const std::vector<int64_t>& shape) {
  std::ostringstream s;
  s << "[";
  for (size_t i = 0; i < shape.size(); ++i) s << (i ? ", " : "") << shape[i];
  s << "]";
  return s.str();
}

std::string dtype_name(torch::ScalarType t) {
  switch (t) {
    case torch::kFloat: return "float32";
    case torch::kHalf: return "float16";
    case torch::kBFloat16: return "bfloat16";
    case torch::kBool: return "bool";
    case torch::kLong: return "int64";
    default: return c10::toString(t);
  }
}

void check_tensor(const torch::Tensor& t, const TensorSpec& spec, const char* kind) {
  const std::string what = std::string("engine ") + kind + " '" + spec.name + "'";
  if (!t.defined()) throw Error(what + " is undefined");
  const std::vector<int64_t> shape = t.sizes().vec();
  bool ok = shape.size() == spec.shape.size();
  for (size_t d = 0; ok && d < shape.size(); ++d) ok = spec.shape[d] == -1 || spec.shape[d] == shape[d];
  if (!ok) throw Error(what + ": shape " + shape_str(shape) + " does not match model.json " + shape_str(spec.shape));
  if (dtype_name(t.scalar_type()) != spec.dtype)
    throw Error(what + ": dtype " + dtype_name(t.scalar_type()) + " does not match model.json " + spec.dtype);
}

int parse_version_part(const std::string& text, size_t& pos) {
  size_t end = pos;
  while (end < text.size() && std::isdigit(static_cast<unsigned char>(text[end]))) ++end;
  if (end == pos) return -1;
  int v = std::stoi(text.substr(pos, end - pos));
  pos = end + 1;
  return v;
}

// c10::Error::what() carries a C++ backtrace; users need the message.
std::string message_of(const std::exception& e) {
  if (const auto* c10_error = dynamic_cast<const c10::Error*>(&e)) return c10_error->what_without_backtrace();
  return e.what();
}

double ms_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

// Engine outputs (boxes, scores, labels) as contiguous host tensors of fp32, fp32, int64. From a
// CUDA engine the first two are copied asynchronously into pinned memory and the last one
// synchronously on the same (current) stream, so the host waits for the device once, not three
// times.
struct HostOutputs {
  torch::Tensor boxes, scores, labels;
};

HostOutputs outputs_on_host(const std::vector<torch::Tensor>& outputs) {
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
      throw Error("copying engine output " + std::to_string(i) + " to the host failed: " + message_of(e));
    }
  }
  return HostOutputs{host[0].to(torch::kFloat).contiguous(), host[1].to(torch::kFloat).contiguous(),
                     host[2].to(torch::kLong).contiguous()};
}

}  // namespace

void validate_engine_inputs(const std::vector<torch::Tensor>& inputs, const std::vector<TensorSpec>& specs,
                            const torch::Device& device) {
  if (inputs.size() != specs.size())
    throw Error("engine expects " + std::to_string(specs.size()) + " inputs (model.json 'inputs'), got " +
                std::to_string(inputs.size()));
  for (size_t i = 0; i < inputs.size(); ++i) {
    check_tensor(inputs[i], specs[i], "input");
    const torch::Device d = inputs[i].device();
    if (d.type() != device.type() || (device.has_index() && d.index() != device.index()))
      throw Error("engine input '" + specs[i].name + "' is on " + d.str() + ", the engine runs on " + device.str());
    if (!inputs[i].is_contiguous())
      throw Error("engine input '" + specs[i].name + "' must be contiguous (the package reads it as a dense buffer)");
  }
}

void validate_engine_outputs(const std::vector<torch::Tensor>& outputs, const std::vector<TensorSpec>& specs) {
  if (outputs.size() != specs.size())
    throw Error("engine returned " + std::to_string(outputs.size()) + " outputs, model.json 'outputs' lists " +
                std::to_string(specs.size()));
  for (size_t i = 0; i < outputs.size(); ++i) check_tensor(outputs[i], specs[i], "output");
}

void check_finite_outputs(const torch::Tensor& boxes, const torch::Tensor& scores, const std::string& dtype) {
  const std::pair<const char*, const torch::Tensor*> outputs[] = {{"boxes", &boxes}, {"scores", &scores}};
  for (const auto& [name, tensor] : outputs) {
    // A no-op conversion for detect()'s host fp32 copies; float16/bfloat16 NaN/inf stay NaN/inf.
    const torch::Tensor host = tensor->to(torch::kCPU, torch::kFloat).contiguous();
    const float* values = host.data_ptr<float>();
    int64_t bad = 0;
    for (int64_t i = 0; i < host.numel(); ++i) bad += !std::isfinite(values[i]);
    if (bad == 0) continue;
    // The same advice as codetr.precision.nonfinite_message (Python).
    std::string msg = std::string("engine output '") + name + "' has " + std::to_string(bad) +
                      " non-finite value(s) (NaN/inf) out of " + std::to_string(tensor->numel());
    if (dtype == "float16")
      msg += ": the float16 model overflowed (float16 stops at 65504; Swin-L checkpoints are known to exceed it); "
             "re-export with --dtype bfloat16 (float32's range) or --dtype float32";
    else if (dtype == "bfloat16" || dtype == "float32")
      msg += ": a " + dtype + " model should not overflow; check the checkpoint (NaN/inf weights?) and the input" +
             (dtype == "bfloat16" ? "; try --dtype float32" : "");
    else
      msg += "; if the model runs in float16 it overflowed: use bfloat16 or float32";
    throw Error(msg);
  }
}

struct Detector::Impl {
  ModelConfig config;
  PostprocessConfig post;
  torch::Device device{torch::kCPU};
  std::string ops_library;
  std::unique_ptr<torch::inductor::AOTIModelPackageLoader> loader;
  int64_t max_batch = 1;
  int64_t min_batch = 1;
  bool cuda_graphs = false;
  // CUDA graph state (DetectorOptions::cuda_graphs), guarded by graph_mutex: the static tensors
  // the captured graph reads and writes.
  std::mutex graph_mutex;
  std::vector<torch::Tensor> static_inputs;
  std::vector<torch::Tensor> static_outputs;
#ifdef CODETR_RUNTIME_CUDA
  std::unique_ptr<at::cuda::CUDAGraph> graph;
#endif

  std::vector<torch::Tensor> run_package(const std::vector<torch::Tensor>& inputs);
  std::vector<torch::Tensor> run_graph(const std::vector<torch::Tensor>& inputs);
};

std::vector<torch::Tensor> Detector::Impl::run_package(const std::vector<torch::Tensor>& inputs) {
  try {
    return loader->run(inputs);
  } catch (const std::exception& e) {
    throw Error("engine run failed: " + message_of(e));
  }
}

std::vector<torch::Tensor> Detector::Impl::run_graph(const std::vector<torch::Tensor>& inputs) {
#ifdef CODETR_RUNTIME_CUDA
  std::lock_guard<std::mutex> lock(graph_mutex);
  const c10::DeviceIndex index = device.has_index() ? device.index() : c10::cuda::current_device();
  const c10::cuda::CUDAGuard device_guard(index);
  const c10::cuda::CUDAStream caller_stream = c10::cuda::getCurrentCUDAStream(index);
  if (!graph) {
    std::vector<torch::Tensor> graph_inputs;
    for (const torch::Tensor& t : inputs) graph_inputs.push_back(t.clone());
    // Warm-up and capture on a side stream (capture is not allowed on the legacy default
    // stream); the events order it after the caller's work and the caller's after it.
    const c10::cuda::CUDAStream side = c10::cuda::getStreamFromPool(/*isHighPriority=*/false, index);
    at::cuda::CUDAEvent inputs_ready;
    inputs_ready.record(caller_stream);
    inputs_ready.block(side);
    std::vector<torch::Tensor> graph_outputs;
    auto captured = std::make_unique<at::cuda::CUDAGraph>();
    {
      const c10::cuda::CUDAStreamGuard stream_guard(side);
      // Lazy initialisation (allocations, kernel loading) must happen before the capture.
      for (int i = 0; i < 2; ++i) run_package(graph_inputs);
      // The AOTInductor container polls its model instances' completion events (cudaEventQuery)
      // when it hands out an instance: finish the warm-ups so the instance is free, and capture
      // in relaxed mode, where such queries are allowed during a capture.
      side.synchronize();
      try {
        captured->capture_begin(/*pool=*/{0, 0}, cudaStreamCaptureModeRelaxed);
        graph_outputs = loader->run(graph_inputs);
        captured->capture_end();
      } catch (const std::exception& e) {
        throw Error("CUDA graph capture of the engine failed: " + message_of(e));
      }
    }
    at::cuda::CUDAEvent capture_done;
    capture_done.record(side);
    capture_done.block(caller_stream);
    static_inputs = std::move(graph_inputs);
    static_outputs = std::move(graph_outputs);
    graph = std::move(captured);
  } else {
    for (size_t i = 0; i < inputs.size(); ++i) static_inputs[i].copy_(inputs[i], /*non_blocking=*/true);
  }
  // The capture only recorded the kernels: replay also for the first call.
  graph->replay();
  std::vector<torch::Tensor> outputs;
  outputs.reserve(static_outputs.size());
  for (const torch::Tensor& t : static_outputs) outputs.push_back(t.clone());
  return outputs;
#else
  (void)inputs;
  throw Error("cuda_graphs: this runtime was built against a libtorch without CUDA");
#endif
}

Detector::Detector(const std::string& model_dir, DetectorOptions options) : impl_(std::make_unique<Impl>()) {
  namespace fs = std::filesystem;
  if (!fs::is_directory(model_dir)) throw Error("model directory '" + model_dir + "' does not exist");
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
  if (m.post.max_per_img < 1) throw Error("max_per_img must be positive");

  m.max_batch = cfg.input.max_batch;
  m.min_batch = cfg.input.min_batch;

  if (options.cuda_graphs) {
    // A graph replays fixed kernels on fixed buffers: one input shape, one device.
    for (const TensorSpec& spec : cfg.inputs)
      for (int64_t dim : spec.shape)
        if (dim < 0)
          throw Error("cuda_graphs needs fully static engine inputs, but " + json_path + " input '" + spec.name +
                      "' has shape " + shape_str(spec.shape) + " (export a static engine)");
    if (!m.device.is_cuda())
      throw Error("cuda_graphs needs a CUDA engine, but " + json_path + " says the package runs on " + cfg.device);
#ifndef CODETR_RUNTIME_CUDA
    throw Error("cuda_graphs: this runtime was built against a libtorch without CUDA");
#endif
    m.cuda_graphs = true;
  }

  const std::string package = model_dir + "/" + cfg.engine_file;
  if (!fs::is_regular_file(package)) throw Error("engine package " + package + " does not exist");
  m.ops_library = load_ops_library(options.ops_library);
  try {
    m.loader = std::make_unique<torch::inductor::AOTIModelPackageLoader>(
        package, "model", /*run_single_threaded=*/false, options.num_runners < 1 ? 1 : options.num_runners,
        static_cast<c10::DeviceIndex>(options.device_index));
  } catch (const std::exception& e) {
    throw Error("cannot load the engine package " + package + ": " + message_of(e) +
                (m.ops_library.empty() ? "\n(libcodetr_ops.so was not found; set CODETR_OPS_LIBRARY if the package "
                                         "calls torch.ops.codetr.ms_deform_attn)"
                                       : ""));
  }
  const auto metadata = m.loader->get_metadata();
  if (auto it = metadata.find("AOTI_DEVICE_KEY"); it != metadata.end() && it->second != cfg.device)
    throw Error(package + " was compiled for " + it->second + ", but " + json_path + " says " + cfg.device);
}

Detector::~Detector() = default;

const ModelConfig& Detector::config() const { return impl_->config; }
const PostprocessConfig& Detector::postprocess_config() const { return impl_->post; }
torch::Device Detector::device() const { return impl_->device; }
int64_t Detector::max_batch() const { return impl_->max_batch; }
const std::string& Detector::ops_library() const { return impl_->ops_library; }

std::vector<torch::Tensor> Detector::run_engine(const std::vector<torch::Tensor>& inputs) const {
  validate_engine_inputs(inputs, impl_->config.inputs, impl_->device);
  const std::vector<torch::Tensor> outputs = impl_->cuda_graphs ? impl_->run_graph(inputs) : impl_->run_package(inputs);
  validate_engine_outputs(outputs, impl_->config.outputs);
  const int64_t batch = inputs[0].size(0);
  for (const torch::Tensor& out : outputs)
    if (out.size(0) != batch)
      throw Error("engine returned batch " + std::to_string(out.size(0)) + " for input batch " + std::to_string(batch));
  if (outputs[0].size(1) != outputs[1].size(1) || outputs[1].size(1) != outputs[2].size(1) || outputs[0].size(2) != 4)
    throw Error("engine outputs disagree on the number of queries: boxes " + c10::str(outputs[0].sizes()) + ", scores " +
                c10::str(outputs[1].sizes()) + ", labels " + c10::str(outputs[2].sizes()));
  return outputs;
}

std::vector<std::vector<Detection>> Detector::detect(const std::vector<ImageView>& images, StageTimes* times) const {
  const Impl& m = *impl_;
  const bool cuda = m.device.is_cuda();
  auto sync = [&] {
    if (times != nullptr && cuda) torch::cuda::synchronize(m.device.has_index() ? m.device.index() : -1);
  };
  std::vector<std::vector<Detection>> results;
  results.reserve(images.size());
  for (size_t start = 0; start < images.size(); start += static_cast<size_t>(m.max_batch)) {
    const size_t count = std::min(images.size() - start, static_cast<size_t>(m.max_batch));
    const std::vector<ImageView> chunk(images.begin() + start, images.begin() + start + count);

    auto t0 = std::chrono::steady_clock::now();
    PreprocessedBatch batch = preprocess(chunk, m.config, m.device);
    std::vector<torch::Tensor> inputs{batch.images};
    if (batch.masks.defined()) inputs.push_back(batch.masks);
    const int64_t fill = std::max<int64_t>(m.min_batch - static_cast<int64_t>(count), 0);
    if (fill > 0) {
      for (torch::Tensor& t : inputs) {
        std::vector<int64_t> reps(t.dim(), 1);
        reps[0] = fill;
        t = torch::cat({t, t.narrow(0, t.size(0) - 1, 1).repeat(reps)}, 0);
      }
    }
    sync();
    if (times) times->preprocess_ms += ms_since(t0);

    t0 = std::chrono::steady_clock::now();
    const std::vector<torch::Tensor> outputs = run_engine(inputs);
    sync();
    if (times) times->engine_ms += ms_since(t0);

    t0 = std::chrono::steady_clock::now();
    const HostOutputs host = outputs_on_host(outputs);
    // NaN/inf (a float16 overflow) would pass NMS and top-k silently: refuse them.
    check_finite_outputs(host.boxes, host.scores, m.config.dtype);
    const int64_t queries = host.scores.size(1);
    for (size_t i = 0; i < count; ++i)
      results.push_back(detail::postprocess_host(host.boxes.data_ptr<float>() + i * queries * 4,
                                                 host.scores.data_ptr<float>() + i * queries,
                                                 host.labels.data_ptr<int64_t>() + i * queries, queries,
                                                 batch.metas[i], m.post));
    if (times) times->postprocess_ms += ms_since(t0);
  }
  return results;
}

std::vector<Detection> Detector::detect(const ImageView& image) const { return detect(std::vector<ImageView>{image})[0]; }

}  // namespace codetr
