#include "engine.h"

#include <cstring>
#include <sstream>

#include <ATen/Context.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

#include "cuda_graph.h"

#ifdef CODETR_RUNTIME_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "preprocess_cuda.h"
#endif

namespace codetr::detail {
namespace {

std::string shape_str(const std::vector<int64_t>& shape) {
  std::ostringstream s;
  s << "[";
  for (size_t i = 0; i < shape.size(); ++i) s << (i ? ", " : "") << shape[i];
  s << "]";
  return s.str();
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

#ifdef CODETR_RUNTIME_CUDA
// The batch's images packed row by row into one pinned staging buffer (torch's caching host
// allocator: reused across calls, and not handed out again before the copy that reads it has
// finished), one host-to-device copy, then one fused kernel per image writing its slot of the
// batch tensor (and of the mask), all on the current stream.
void preprocess_with_cuda_kernel(const std::vector<ImageView>& images, const core::BatchPlan& plan,
                                 const ModelConfig& config, const torch::Device& device, EngineBatch& batch) {
  const PreprocessConfig& pp = config.preprocess;
  cuda::ImageDtype dtype = cuda::ImageDtype::kFloat32;
  if (config.dtype == "float16") dtype = cuda::ImageDtype::kFloat16;
  else if (config.dtype == "bfloat16") dtype = cuda::ImageDtype::kBFloat16;

  const c10::DeviceIndex index = device.has_index() ? device.index() : c10::cuda::current_device();
  const c10::cuda::CUDAGuard device_guard(index);
  const int64_t n = static_cast<int64_t>(images.size());
  std::vector<int64_t> image_offsets(n);
  int64_t total_bytes = 0;
  for (int64_t i = 0; i < n; ++i) {
    image_offsets[i] = total_bytes;
    total_bytes += images[i].height * images[i].width * 3;
  }
  torch::Tensor staging, pixels;
  try {
    staging = torch::empty({total_bytes}, torch::TensorOptions().dtype(torch::kByte).pinned_memory(true));
  } catch (const c10::Error& e) {
    throw Error("preprocess (CUDA): allocating " + std::to_string(total_bytes) +
                " bytes of pinned staging memory failed: " + e.what_without_backtrace());
  }
  uint8_t* packed = staging.data_ptr<uint8_t>();
  for (int64_t i = 0; i < n; ++i) {
    const ImageView& view = images[i];
    const int64_t row_bytes = view.width * 3, stride = core::row_stride_of(view);
    uint8_t* dst = packed + image_offsets[i];
    for (int64_t y = 0; y < view.height; ++y)
      std::memcpy(dst + y * row_bytes, view.data + y * stride, static_cast<size_t>(row_bytes));
  }
  const torch::Device cuda_device(torch::kCUDA, index);
  try {
    pixels = torch::empty({total_bytes}, torch::TensorOptions().dtype(torch::kByte).device(cuda_device))
                 .copy_(staging, /*non_blocking=*/true);
  } catch (const c10::Error& e) {
    throw Error("preprocess (CUDA): uploading " + std::to_string(total_bytes) + " image bytes failed: " +
                e.what_without_backtrace());
  }
  torch::Tensor out = torch::empty({n, 3, plan.pad_h, plan.pad_w},
                                   torch::TensorOptions().dtype(dtype_from_name(config.dtype)).device(cuda_device));
  torch::Tensor masks;
  if (pp.padding_mask)
    masks = torch::empty({n, plan.pad_h, plan.pad_w}, torch::TensorOptions().dtype(torch::kBool).device(cuda_device));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(index).stream();
  const int64_t plane = plan.pad_h * plan.pad_w;
  for (int64_t i = 0; i < n; ++i) {
    cuda::PreprocessLaunch launch;
    launch.image = pixels.data_ptr<uint8_t>() + image_offsets[i];
    launch.in_height = static_cast<int>(images[i].height);
    launch.in_width = static_cast<int>(images[i].width);
    launch.row_stride = images[i].width * 3;
    launch.resized_height = static_cast<int>(plan.metas[i].resized.height);
    launch.resized_width = static_cast<int>(plan.metas[i].resized.width);
    launch.pad_height = static_cast<int>(plan.pad_h);
    launch.pad_width = static_cast<int>(plan.pad_w);
    launch.flip_channels = core::needs_channel_flip(images[i], pp);
    for (int c = 0; c < 3; ++c) {
      launch.mean[c] = pp.mean[c];
      launch.std[c] = pp.std[c];
      launch.pad_output[c] =
          pp.pad_stage == PadStage::kBeforeNormalize ? (pp.pad_value - pp.mean[c]) / pp.std[c] : pp.pad_value;
    }
    launch.dtype = dtype;
    launch.output = static_cast<char*>(out.data_ptr()) + i * 3 * plane * out.element_size();
    launch.mask = pp.padding_mask ? masks.data_ptr<bool>() + i * plane : nullptr;
    cuda::launch_preprocess(launch, stream);
  }
  batch.inputs.push_back(out);
  if (pp.padding_mask) batch.inputs.push_back(masks);
}
#endif

}  // namespace

std::string message_of(const std::exception& e) {
  if (const auto* c10_error = dynamic_cast<const c10::Error*>(&e)) return c10_error->what_without_backtrace();
  return e.what();
}

torch::ScalarType dtype_from_name(const std::string& name) {
  if (name == "float32") return torch::kFloat;
  if (name == "float16") return torch::kHalf;
  if (name == "bfloat16") return torch::kBFloat16;
  if (name == "bool") return torch::kBool;
  if (name == "int64") return torch::kLong;
  throw Error("unknown dtype name '" + name + "'");
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

void validate_engine_inputs(const std::vector<torch::Tensor>& inputs, const ModelConfig& config,
                            const torch::Device& device) {
  std::vector<std::vector<int64_t>> shapes;
  std::vector<std::string> dtypes;
  for (const torch::Tensor& t : inputs) {
    if (!t.defined()) throw Error("an engine input is undefined");
    shapes.push_back(t.sizes().vec());
    dtypes.push_back(dtype_name(t.scalar_type()));
  }
  core::validate_input_shapes(shapes, dtypes, config);
  for (size_t i = 0; i < inputs.size(); ++i) {
    const std::string& name = config.inputs[i].name;
    const torch::Device d = inputs[i].device();
    if (d.type() != device.type() || (device.has_index() && d.index() != device.index()))
      throw Error("engine input '" + name + "' is on " + d.str() + ", the engine runs on " + device.str());
    if (!inputs[i].is_contiguous())
      throw Error("engine input '" + name + "' must be contiguous (the package reads it as a dense buffer)");
  }
}

void validate_engine_outputs(const std::vector<torch::Tensor>& outputs, const std::vector<TensorSpec>& specs,
                             int64_t batch) {
  if (outputs.size() != specs.size())
    throw Error("engine returned " + std::to_string(outputs.size()) + " outputs, model.json 'outputs' lists " +
                std::to_string(specs.size()));
  for (size_t i = 0; i < outputs.size(); ++i) check_tensor(outputs[i], specs[i], "output");
  for (const torch::Tensor& out : outputs)
    if (out.size(0) != batch)
      throw Error("engine returned batch " + std::to_string(out.size(0)) + " for input batch " + std::to_string(batch));
  if (outputs[0].size(1) != outputs[1].size(1) || outputs[1].size(1) != outputs[2].size(1) || outputs[0].size(2) != 4)
    throw Error("engine outputs disagree on the number of queries: boxes " + c10::str(outputs[0].sizes()) + ", scores " +
                c10::str(outputs[1].sizes()) + ", labels " + c10::str(outputs[2].sizes()));
}

EngineBatch preprocess_batch(const std::vector<ImageView>& images, const ModelConfig& config,
                             const torch::Device& device) {
  EngineBatch batch;
  batch.plan = core::plan_batch(images, config);
  const core::BatchPlan& plan = batch.plan;
#ifdef CODETR_RUNTIME_CUDA
  if (device.is_cuda()) {
    preprocess_with_cuda_kernel(images, plan, config, device, batch);
    return batch;
  }
#endif
  const int64_t n = static_cast<int64_t>(images.size());
  torch::Tensor out = torch::empty({n, 3, plan.pad_h, plan.pad_w}, torch::kFloat);
  torch::Tensor masks;
  if (config.preprocess.padding_mask) masks = torch::empty({n, plan.pad_h, plan.pad_w}, torch::kBool);
  core::preprocess_host(images, plan, config.preprocess, out.data_ptr<float>(),
                        masks.defined() ? masks.data_ptr<bool>() : nullptr);
  // The cast rounds to nearest even, as the CUDA kernel does.
  batch.inputs.push_back(out.to(device, dtype_from_name(config.dtype)).contiguous());
  if (masks.defined()) batch.inputs.push_back(masks.to(device));
  return batch;
}

Engine::Engine(const std::string& package, const ModelConfig& config, const std::string& model_json,
               const torch::Device& device, size_t num_runners, bool cuda_graphs)
    : config_(config), device_(device) {
  try {
    loader_ = std::make_unique<torch::inductor::AOTIModelPackageLoader>(
        package, "model", /*run_single_threaded=*/false, num_runners < 1 ? 1 : num_runners,
        static_cast<c10::DeviceIndex>(device.has_index() ? device.index() : -1));
  } catch (const std::exception& e) {
    throw Error("cannot load the engine package " + package + ": " + message_of(e));
  }
  const auto metadata = loader_->get_metadata();
  if (auto it = metadata.find("AOTI_DEVICE_KEY"); it != metadata.end() && it->second != config.device)
    throw Error(package + " was compiled for " + it->second + ", but " + model_json + " says " + config.device);
  const auto contract = metadata.find(core::kEngineContractKey);
  if (contract == metadata.end())
    throw Error(package + " records no '" + std::string(core::kEngineContractKey) +
                "' (what it was compiled for): it was not written by this codetr's export; re-export the model");
  core::check_engine_contract(contract->second, config, package, model_json);
  // A float32 engine computes in IEEE float32, as mmdetection's CPU reference does: libtorch lets
  // cuDNN convolutions use TF32 (10-bit mantissa) by default, enough to change which encoder
  // proposals a Co-DINO selects. Process-wide (libtorch has one switch); float16/bfloat16 engines
  // are the fast path and are left alone.
  if (device.is_cuda() && config.dtype == "float32") {
    at::globalContext().setAllowTF32CuDNN(false);
    at::globalContext().setAllowTF32CuBLAS(false);
  }
  if (cuda_graphs) graph_ = std::make_unique<CudaGraphRunner>(*loader_, device_);
}

Engine::~Engine() = default;

std::vector<torch::Tensor> Engine::run(const std::vector<torch::Tensor>& inputs) const {
  validate_engine_inputs(inputs, config_, device_);
  std::vector<torch::Tensor> outputs;
  if (graph_) {
    outputs = graph_->run(inputs);
  } else {
    try {
      outputs = loader_->run(inputs);
    } catch (const std::exception& e) {
      throw Error("engine run failed: " + message_of(e));
    }
  }
  validate_engine_outputs(outputs, config_.outputs, inputs[0].size(0));
  return outputs;
}

}  // namespace codetr::detail
