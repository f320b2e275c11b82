// Test helper for tests/test_runtime*.py: runs the runtime's NMS or preprocessing on tensors that
// pytest wrote with torch.save (a list of tensors) and writes the results the same way, so they
// can be compared with torchvision.ops.nms and cv2.
//   codetr_runtime_probe nms IN OUT         IN: [boxes (N,4), scores (N), labels (N), params]
//                                           params: [type (0 none, 1 nms, 2 soft linear,
//                                           3 soft gaussian), iou, sigma, min_score]
//                                           OUT: [keep, scores]
//   codetr_runtime_probe preprocess DIR IN OUT   DIR/model.json; IN: [image (H,W,3) uint8 BGR]
//                                           OUT: [images, masks (empty without), meta]
//                                           meta: [resized h, resized w, w_scale, h_scale]
//   codetr_runtime_probe concurrent DIR THREADS  runs Detector::detect on distinct synthetic
//                                           images from THREADS threads at once (Detector with
//                                           2 runners) and checks each result equals a
//                                           sequential run; exit 0 when all equal
#include <fstream>
#include <iostream>
#include <iterator>
#include <random>
#include <thread>

#include <torch/serialize.h>

#include "codetr/codetr.h"

namespace {

std::vector<torch::Tensor> read_tensors(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw codetr::Error("cannot open " + path);
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<torch::Tensor> out;
  const c10::IValue list = torch::pickle_load(bytes);  // keeps the list alive while iterating
  for (const c10::IValue& v : list.isTuple() ? list.toTupleRef().elements().vec() : list.toListRef().vec()) out.push_back(v.toTensor());
  return out;
}

void write_tensors(const std::string& path, const std::vector<torch::Tensor>& tensors) {
  // A tuple (not a typed tensor list) so that torch.load(weights_only=True) accepts the file.
  std::vector<c10::IValue> items;
  for (const torch::Tensor& t : tensors) items.emplace_back(t.cpu());
  const std::vector<char> bytes = torch::pickle_save(c10::ivalue::Tuple::create(std::move(items)));
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out) throw codetr::Error("cannot write " + path);
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const std::string mode = argc > 1 ? argv[1] : "";
    if (mode == "nms" && argc == 4) {
      const auto in = read_tensors(argv[2]);
      const torch::Tensor params = in.at(3).to(torch::kDouble);
      codetr::NmsConfig cfg;
      const int type = static_cast<int>(params[0].item<double>());
      cfg.type = type == 0 ? codetr::NmsType::kNone : type == 1 ? codetr::NmsType::kHard : codetr::NmsType::kSoft;
      cfg.method = type == 3 ? codetr::SoftNmsMethod::kGaussian : codetr::SoftNmsMethod::kLinear;
      cfg.iou_threshold = static_cast<float>(params[1].item<double>());
      cfg.sigma = static_cast<float>(params[2].item<double>());
      cfg.min_score = static_cast<float>(params[3].item<double>());
      const codetr::NmsResult r = codetr::batched_nms(in.at(0), in.at(1), in.at(2), cfg);
      write_tensors(argv[3], {r.keep, r.scores});
      return 0;
    }
    if (mode == "preprocess" && argc == 5) {
      const codetr::ModelConfig cfg = codetr::load_model_config(argv[2]);
      const torch::Tensor image = read_tensors(argv[3]).at(0).contiguous();
      if (image.dim() != 3 || image.size(2) != 3 || image.scalar_type() != torch::kByte)
        throw codetr::Error("probe: image must be (H,W,3) uint8");
      const codetr::ImageView view{image.data_ptr<uint8_t>(), image.size(0), image.size(1), codetr::PixelOrder::kBGR, 0};
      const codetr::PreprocessedBatch b = codetr::preprocess({view}, cfg, torch::kCPU);
      const codetr::ImageMeta& m = b.metas[0];
      const torch::Tensor meta = torch::tensor({static_cast<double>(m.resized.height), static_cast<double>(m.resized.width),
                                                static_cast<double>(m.w_scale), static_cast<double>(m.h_scale)});
      write_tensors(argv[4], {b.images, b.masks.defined() ? b.masks : torch::empty({0}), meta});
      return 0;
    }
    if (mode == "concurrent" && argc == 4) {
      codetr::DetectorOptions options;
      options.num_runners = 2;
      const codetr::Detector detector(argv[2], options);
      const int threads = std::stoi(argv[3]);
      std::vector<std::vector<uint8_t>> images(threads);
      std::vector<codetr::ImageView> views;
      for (int t = 0; t < threads; ++t) {
        std::mt19937 rng(t);
        const int64_t h = 60 + 17 * t, w = 90 + 11 * t;
        images[t].resize(h * w * 3);
        for (auto& v : images[t]) v = static_cast<uint8_t>(rng() % 256);
        views.push_back({images[t].data(), h, w, codetr::PixelOrder::kBGR, 0});
      }
      std::vector<std::vector<codetr::Detection>> sequential, parallel(threads);
      for (const auto& v : views) sequential.push_back(detector.detect(v));
      std::vector<std::thread> pool;
      for (int t = 0; t < threads; ++t)
        pool.emplace_back([&, t] {
          for (int repeat = 0; repeat < 3; ++repeat) parallel[t] = detector.detect(views[t]);
        });
      for (auto& th : pool) th.join();
      for (int t = 0; t < threads; ++t) {
        bool same = sequential[t].size() == parallel[t].size() && !sequential[t].empty();
        for (size_t i = 0; same && i < sequential[t].size(); ++i) {
          const auto &a = sequential[t][i], &b = parallel[t][i];
          same = a.x1 == b.x1 && a.y1 == b.y1 && a.x2 == b.x2 && a.y2 == b.y2 && a.score == b.score && a.label == b.label;
        }
        if (!same) {
          std::cerr << "thread " << t << ": concurrent detections differ from the sequential ones\n";
          return 1;
        }
      }
      std::cout << threads << " threads: concurrent detections equal the sequential ones\n";
      return 0;
    }
    std::cerr << "usage: codetr_runtime_probe nms IN OUT | preprocess MODEL_DIR IN OUT | concurrent MODEL_DIR THREADS\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "codetr_runtime_probe: " << e.what() << "\n";
    return 1;
  }
}
