// codetr-detect: run a codetr model directory (model.json + model.pt2) on images.
//   codetr-detect --model DIR [--device cuda|cpu] [--score-thr X] [--nms soft|hard|none] [--iou X]
//                 [--batch N] [--out-dir D] [--json FILE] [--benchmark N] [--draw-thr X]
//                 [--cuda-graphs on|off] INPUT...
// Exit status: 0 all images processed; 1 some inputs failed (each is named on stderr, the others
// are still processed); 2 bad command line or unusable model directory.
// Image I/O: OpenCV when built with it (any format), else binary PPM only (see image_io.h).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "codetr/codetr.h"
#include "image_io.h"

namespace fs = std::filesystem;
using codetr::cli::BgrImage;

namespace {

const char* kUsage =
    "usage: codetr-detect --model DIR [options] INPUT...\n"
    "  INPUT            image files and/or directories (their images, sorted, not recursive)\n"
    "  --model DIR      directory written by `codetr export` (model.json + model.pt2)\n"
    "  --device D       cpu or cuda (default: the device in model.json; must match the package)\n"
    "  --score-thr X    drop detections scoring <= X (default: model.json postprocess.score_thr)\n"
    "  --nms T          soft, hard or none (default: model.json; soft uses its method/sigma/min_score)\n"
    "  --iou X          NMS IoU threshold (default: model.json)\n"
    "  --batch N        images per detect() call (default: the engine batch)\n"
    "  --out-dir D      write annotated images to D (boxes with score >= --draw-thr)\n"
    "  --draw-thr X     minimum score of a drawn box (default 0.3)\n"
    "  --json FILE      write COCO-results JSON: [{file_name, image_id, category_id, bbox [x,y,w,h], score}]\n"
    "                   category_id: the COCO id when model.json's classes are COCO's 80, else the\n"
    "                   class index; image_id: the file name's number when it is all digits, else\n"
    "                   the input's position (0-based)\n"
    "  --benchmark N    time N runs of one batch (after warm-up) instead of writing results\n"
    "  --cuda-graphs M  on or off (default off): run the engine as a CUDA graph (CUDA engines with\n"
    "                   fully static inputs only); engine runs are then serialised\n"
#ifndef CODETR_HAVE_OPENCV
    "built without OpenCV: images are read and written as binary PPM (.ppm, P6) only, boxes are\n"
    "drawn without labels\n"
#endif
    ;

struct Args {
  std::string model;
  std::string device;
  std::optional<float> score_thr;
  std::string nms;
  std::optional<float> iou;
  int batch = 0;
  std::string out_dir;
  std::string json;
  int benchmark = 0;
  float draw_thr = 0.3f;
  bool cuda_graphs = false;
  std::vector<std::string> inputs;
};

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

float parse_float(const std::string& flag, const std::string& v) {
  try {
    size_t used = 0;
    float f = std::stof(v, &used);
    if (used == v.size() && std::isfinite(f)) return f;
  } catch (const std::exception&) {
  }
  throw UsageError(flag + " expects a number, got '" + v + "'");
}

int parse_positive_int(const std::string& flag, const std::string& v) {
  try {
    size_t used = 0;
    int i = std::stoi(v, &used);
    if (used == v.size() && i > 0) return i;
  } catch (const std::exception&) {
  }
  throw UsageError(flag + " expects a positive integer, got '" + v + "'");
}

Args parse_args(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw UsageError(arg + " needs a value");
      return argv[++i];
    };
    if (arg == "-h" || arg == "--help") {
      std::cout << kUsage;
      std::exit(0);
    } else if (arg == "--model") a.model = value();
    else if (arg == "--device") a.device = value();
    else if (arg == "--score-thr") a.score_thr = parse_float(arg, value());
    else if (arg == "--nms") a.nms = value();
    else if (arg == "--iou") a.iou = parse_float(arg, value());
    else if (arg == "--batch") a.batch = parse_positive_int(arg, value());
    else if (arg == "--out-dir") a.out_dir = value();
    else if (arg == "--json") a.json = value();
    else if (arg == "--benchmark") a.benchmark = parse_positive_int(arg, value());
    else if (arg == "--draw-thr") a.draw_thr = parse_float(arg, value());
    else if (arg == "--cuda-graphs") {
      const std::string v = value();
      if (v != "on" && v != "off") throw UsageError("--cuda-graphs must be on or off, got '" + v + "'");
      a.cuda_graphs = v == "on";
    }
    else if (arg.size() > 1 && arg[0] == '-') throw UsageError("unknown option " + arg);
    else a.inputs.push_back(arg);
  }
  if (a.model.empty()) throw UsageError("--model DIR is required");
  if (a.inputs.empty()) throw UsageError("no INPUT images or directories given");
  if (!a.device.empty() && a.device != "cpu" && a.device != "cuda")
    throw UsageError("--device must be cpu or cuda, got '" + a.device + "'");
  if (!a.nms.empty() && a.nms != "soft" && a.nms != "hard" && a.nms != "none")
    throw UsageError("--nms must be soft, hard or none, got '" + a.nms + "'");
  if (a.iou && (*a.iou < 0 || *a.iou > 1)) throw UsageError("--iou must be in [0, 1]");
  return a;
}

bool is_image_name(const fs::path& p) {
  std::string e = p.extension().string();
  std::transform(e.begin(), e.end(), e.begin(), [](unsigned char c) { return std::tolower(c); });
  return codetr::cli::image_extensions().count(e) > 0;
}

// Expands INPUTs into files; missing inputs are reported and counted as failures.
std::vector<std::string> collect_inputs(const std::vector<std::string>& inputs, int& failures, bool& any_dir) {
  std::vector<std::string> files;
  for (const std::string& in : inputs) {
    std::error_code ec;
    if (fs::is_directory(in, ec)) {
      any_dir = true;
      std::vector<std::string> found;
      for (const auto& entry : fs::directory_iterator(in, ec))
        if (entry.is_regular_file() && is_image_name(entry.path())) found.push_back(entry.path().string());
      if (ec) {
        std::cerr << "error: cannot list directory " << in << ": " << ec.message() << "\n";
        ++failures;
      }
      std::sort(found.begin(), found.end());
      if (found.empty()) std::cerr << "warning: no images in directory " << in << "\n";
      files.insert(files.end(), found.begin(), found.end());
    } else if (fs::exists(in, ec)) {
      files.push_back(in);
    } else {
      std::cerr << "error: input " << in << " does not exist\n";
      ++failures;
    }
  }
  return files;
}

int64_t image_id_for(const std::string& path, size_t position) {
  const std::string stem = fs::path(path).stem().string();
  if (!stem.empty() && stem.size() <= 18 && std::all_of(stem.begin(), stem.end(), ::isdigit)) return std::stoll(stem);
  return static_cast<int64_t>(position);
}

double percentile(std::vector<double> v, double q) {
  std::sort(v.begin(), v.end());
  const size_t idx = std::min(v.size() - 1, static_cast<size_t>(std::ceil(q * v.size())) - (q > 0 ? 1 : 0));
  return v[idx];
}

codetr::DetectorOptions detector_options(const Args& a, const codetr::ModelConfig& cfg) {
  codetr::DetectorOptions o;
  o.device = a.device;
  o.score_thr = a.score_thr;
  codetr::NmsConfig nms = cfg.postprocess.nms;
  if (a.nms == "none") nms.type = codetr::NmsType::kNone;
  if (a.nms == "hard") nms.type = codetr::NmsType::kHard;
  if (a.nms == "soft") {
    if (nms.type != codetr::NmsType::kSoft) nms = codetr::NmsConfig{codetr::NmsType::kSoft, nms.iou_threshold};
    nms.type = codetr::NmsType::kSoft;
  }
  if (a.iou) nms.iou_threshold = *a.iou;
  o.nms = nms;
  o.cuda_graphs = a.cuda_graphs;
  return o;
}

codetr::ImageView view_of(const BgrImage& image) {
  return {image.pixels.data(), image.height, image.width, codetr::PixelOrder::kBGR, image.width * 3};
}

int run_benchmark(const codetr::Detector& detector, const std::vector<BgrImage>& images, int iterations) {
  // One full engine batch: the inputs, repeated when there are fewer than the engine takes.
  std::vector<codetr::ImageView> views;
  for (const BgrImage& m : images) views.push_back(view_of(m));
  for (size_t i = 0; views.size() < static_cast<size_t>(detector.max_batch()); ++i) views.push_back(views[i]);
  const int warmup = std::max(3, iterations / 10);
  std::cerr << "benchmark: " << warmup << " warm-up runs, then " << iterations << " timed runs of a batch of "
            << views.size() << " image(s) on " << detector.device() << "\n";
  for (int i = 0; i < warmup; ++i) detector.detect(views);
  // Stage times synchronise the device at every stage boundary, which a plain call does not: the
  // end-to-end time comes from plain calls, the stage times from timed calls, taken alternately.
  std::vector<double> total, pre, eng, post;
  for (int i = 0; i < iterations; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    detector.detect(views);
    total.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    codetr::StageTimes t;
    detector.detect(views, &t);
    pre.push_back(t.preprocess_ms);
    eng.push_back(t.engine_ms);
    post.push_back(t.postprocess_ms);
  }
  double sum = 0;
  for (double v : total) sum += v;
  auto row = [&](const char* name, const std::vector<double>& v) {
    std::cout << std::left << std::setw(12) << name << std::right << std::fixed << std::setprecision(2) << std::setw(10)
              << percentile(v, 0.5) << std::setw(10) << percentile(v, 0.9) << std::setw(10) << percentile(v, 0.99) << "\n";
  };
  std::cout << std::left << std::setw(12) << "stage (ms)" << std::right << std::setw(10) << "median" << std::setw(10)
            << "p90" << std::setw(10) << "p99" << "\n";
  row("preprocess", pre);
  row("engine", eng);
  row("postprocess", post);
  row("end-to-end", total);
  std::cout << "batch " << views.size() << ", " << iterations << " runs: " << std::setprecision(2)
            << 1000.0 * views.size() * iterations / sum << " images/s\n";
  return 0;
}

int run(const Args& args) {
  // The model first: a bad model directory is a usage-level failure (exit 2), before any image.
  codetr::ModelConfig cfg;
  std::unique_ptr<codetr::Detector> detector;
  try {
    cfg = codetr::load_model_config(args.model);
    detector = std::make_unique<codetr::Detector>(args.model, detector_options(args, cfg));
  } catch (const std::exception& e) {
    std::cerr << "error: cannot use model directory " << args.model << ": " << e.what() << "\n";
    return 2;
  }
  const bool coco_ids = codetr::is_coco80(cfg.classes);
  const size_t batch = args.batch > 0 ? static_cast<size_t>(args.batch) : static_cast<size_t>(detector->max_batch());

  int failures = 0;
  bool any_dir = false;
  const std::vector<std::string> files = collect_inputs(args.inputs, failures, any_dir);

  if (!args.out_dir.empty()) {
    std::error_code ec;
    fs::create_directories(args.out_dir, ec);
    if (ec) {
      std::cerr << "error: cannot create --out-dir " << args.out_dir << ": " << ec.message() << "\n";
      return 2;
    }
  }

  auto read_image = [&](const std::string& path, BgrImage& out) {
    std::string error;
    if (codetr::cli::read_image(path, out, error)) return true;
    std::cerr << "error: " << path << ": " << error << "\n";
    return false;
  };

  if (args.benchmark > 0) {
    std::vector<BgrImage> images;
    for (const std::string& f : files) {
      BgrImage m;
      if (read_image(f, m)) images.push_back(m);
      if (images.size() == batch) break;
    }
    if (images.empty()) {
      std::cerr << "error: no readable image to benchmark\n";
      return 1;
    }
    run_benchmark(*detector, images, args.benchmark);
    return failures > 0 ? 1 : 0;
  }

  nlohmann::json results = nlohmann::json::array();
  std::set<std::string> written;
  size_t done = 0;
  for (size_t start = 0; start < files.size(); start += batch) {
    std::vector<size_t> positions;
    std::vector<BgrImage> mats;
    for (size_t i = start; i < std::min(files.size(), start + batch); ++i) {
      BgrImage m;
      if (read_image(files[i], m)) {
        positions.push_back(i);
        mats.push_back(m);
      } else {
        ++failures;
      }
    }
    if (mats.empty()) continue;
    std::vector<codetr::ImageView> views;
    for (const BgrImage& m : mats) views.push_back(view_of(m));
    std::vector<std::vector<codetr::Detection>> dets;
    try {
      dets = detector->detect(views);
    } catch (const std::exception& e) {
      for (size_t p : positions) std::cerr << "error: " << files[p] << ": " << e.what() << "\n";
      failures += static_cast<int>(positions.size());
      continue;
    }
    for (size_t k = 0; k < positions.size(); ++k) {
      const std::string& path = files[positions[k]];
      const std::string file_name = fs::path(path).filename().string();
      for (const codetr::Detection& d : dets[k]) {
        results.push_back({{"file_name", file_name},
                           {"image_id", image_id_for(path, positions[k])},
                           {"category_id", coco_ids ? codetr::coco80_category_id(static_cast<int>(d.label)) : d.label},
                           {"bbox", {d.x1, d.y1, d.x2 - d.x1, d.y2 - d.y1}},
                           {"score", d.score}});
      }
      if (!args.out_dir.empty()) {
        codetr::cli::draw_detections(mats[k], dets[k], cfg.classes, args.draw_thr);
        // Distinct output names when inputs from several directories share a file name.
        fs::path out = fs::path(args.out_dir) / file_name;
        for (int n = 1; written.count(out.string()); ++n)
          out = fs::path(args.out_dir) / (fs::path(file_name).stem().string() + "_" + std::to_string(n) +
                                          fs::path(file_name).extension().string());
        written.insert(out.string());
        std::string error;
        if (!codetr::cli::write_image(out.string(), mats[k], error)) {
          std::cerr << "error: " << out.string() << ": " << error << "\n";
          ++failures;
        }
      }
      ++done;
      if (any_dir || files.size() > 1)
        std::cerr << "[" << positions[k] + 1 << "/" << files.size() << "] " << path << ": " << dets[k].size()
                  << " detections\n";
    }
  }

  if (!args.json.empty()) {
    std::ofstream out(args.json);
    out << results.dump(1) << "\n";
    if (!out) {
      std::cerr << "error: cannot write --json " << args.json << "\n";
      ++failures;
    }
  }
  std::cerr << "processed " << done << " of " << files.size() << " image(s)";
  if (failures > 0) std::cerr << ", " << failures << " failure(s)";
  std::cerr << "\n";
  return failures > 0 ? 1 : 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    codetr::cli::init_image_io();
    return run(parse_args(argc, argv));
  } catch (const UsageError& e) {
    std::cerr << "codetr-detect: " << e.what() << "\n" << kUsage;
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "codetr-detect: " << e.what() << "\n";
    return 2;
  }
}
