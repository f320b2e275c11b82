// codetr-detect: run a codetr model directory (model.json + model.pt2) on images.
//   codetr-detect --model DIR [--device cuda|cpu] [--score-thr X] [--nms soft|hard|none] [--iou X]
//                 [--batch N] [--out-dir D] [--json FILE] [--benchmark N] [--draw-thr X] INPUT...
// Exit status: 0 all images processed; 1 some inputs failed (each is named on stderr, the others
// are still processed); 2 bad command line or unusable model directory.
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
#include <opencv2/core.hpp>
#include <opencv2/core/utils/logger.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "codetr/codetr.h"

namespace fs = std::filesystem;

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
    "  --benchmark N    time N runs of one batch (after warm-up) instead of writing results\n";

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
  static const std::set<std::string> exts = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"};
  std::string e = p.extension().string();
  std::transform(e.begin(), e.end(), e.begin(), [](unsigned char c) { return std::tolower(c); });
  return exts.count(e) > 0;
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

cv::Scalar class_colour(int64_t label) {
  // Golden-ratio hue steps give neighbouring classes distinct colours.
  const double hue = std::fmod(static_cast<double>(label) * 0.618033988749895, 1.0) * 180.0;
  cv::Mat hsv(1, 1, CV_8UC3, cv::Scalar(hue, 200, 255)), bgr;
  cv::cvtColor(hsv, bgr, cv::COLOR_HSV2BGR);
  const cv::Vec3b c = bgr.at<cv::Vec3b>(0, 0);
  return cv::Scalar(c[0], c[1], c[2]);
}

void draw(cv::Mat& image, const std::vector<codetr::Detection>& dets, const std::vector<std::string>& classes,
          float draw_thr) {
  const int thickness = std::max(1, std::min(image.rows, image.cols) / 300);
  const double font_scale = std::max(0.4, std::min(image.rows, image.cols) / 800.0);
  for (const codetr::Detection& d : dets) {
    if (d.score < draw_thr) continue;
    const cv::Scalar colour = class_colour(d.label);
    const cv::Point p1(static_cast<int>(std::lround(d.x1)), static_cast<int>(std::lround(d.y1)));
    const cv::Point p2(static_cast<int>(std::lround(d.x2)), static_cast<int>(std::lround(d.y2)));
    cv::rectangle(image, p1, p2, colour, thickness);
    std::ostringstream text;
    const bool known = d.label >= 0 && d.label < static_cast<int64_t>(classes.size());
    text << (known ? classes[d.label] : "class " + std::to_string(d.label)) << " " << std::fixed
         << std::setprecision(2) << d.score;
    int baseline = 0;
    const cv::Size ts = cv::getTextSize(text.str(), cv::FONT_HERSHEY_SIMPLEX, font_scale, 1, &baseline);
    const int top = std::max(p1.y - ts.height - baseline, 0);
    cv::rectangle(image, cv::Point(p1.x, top), cv::Point(p1.x + ts.width, top + ts.height + baseline), colour, cv::FILLED);
    cv::putText(image, text.str(), cv::Point(p1.x, top + ts.height), cv::FONT_HERSHEY_SIMPLEX, font_scale,
                cv::Scalar(0, 0, 0), 1, cv::LINE_AA);
  }
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
  return o;
}

int run_benchmark(const codetr::Detector& detector, const std::vector<cv::Mat>& images, int iterations) {
  std::vector<codetr::ImageView> views;
  for (const cv::Mat& m : images)
    views.push_back({m.data, m.rows, m.cols, codetr::PixelOrder::kBGR, static_cast<int64_t>(m.step[0])});
  const int warmup = std::max(3, iterations / 10);
  std::cerr << "benchmark: " << warmup << " warm-up runs, then " << iterations << " timed runs of a batch of "
            << views.size() << " image(s) on " << detector.device().str() << "\n";
  for (int i = 0; i < warmup; ++i) detector.detect(views);
  std::vector<double> total, pre, eng, post;
  for (int i = 0; i < iterations; ++i) {
    codetr::StageTimes t;
    const auto t0 = std::chrono::steady_clock::now();
    detector.detect(views, &t);
    total.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
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

  auto read_image = [&](const std::string& path, cv::Mat& out) {
    std::error_code ec;
    if (fs::file_size(path, ec) == 0 || ec) {
      std::cerr << "error: " << path << ": " << (ec ? ec.message() : "empty file") << "\n";
      return false;
    }
    out = cv::imread(path, cv::IMREAD_COLOR);
    if (out.empty()) {
      std::cerr << "error: " << path << ": cannot decode image (unsupported, corrupt or truncated)\n";
      return false;
    }
    return true;
  };

  if (args.benchmark > 0) {
    std::vector<cv::Mat> images;
    for (const std::string& f : files) {
      cv::Mat m;
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
    std::vector<cv::Mat> mats;
    for (size_t i = start; i < std::min(files.size(), start + batch); ++i) {
      cv::Mat m;
      if (read_image(files[i], m)) {
        positions.push_back(i);
        mats.push_back(m);
      } else {
        ++failures;
      }
    }
    if (mats.empty()) continue;
    std::vector<codetr::ImageView> views;
    for (const cv::Mat& m : mats)
      views.push_back({m.data, m.rows, m.cols, codetr::PixelOrder::kBGR, static_cast<int64_t>(m.step[0])});
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
        draw(mats[k], dets[k], cfg.classes, args.draw_thr);
        // Distinct output names when inputs from several directories share a file name.
        fs::path out = fs::path(args.out_dir) / file_name;
        for (int n = 1; written.count(out.string()); ++n)
          out = fs::path(args.out_dir) / (fs::path(file_name).stem().string() + "_" + std::to_string(n) +
                                          fs::path(file_name).extension().string());
        written.insert(out.string());
        bool ok = false;
        try {
          ok = cv::imwrite(out.string(), mats[k]);
        } catch (const cv::Exception& e) {
          std::cerr << "error: " << out.string() << ": " << e.what() << "\n";
        }
        if (!ok) {
          std::cerr << "error: cannot write annotated image " << out.string() << "\n";
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
    cv::utils::logging::setLogLevel(cv::utils::logging::LOG_LEVEL_ERROR);
    return run(parse_args(argc, argv));
  } catch (const UsageError& e) {
    std::cerr << "codetr-detect: " << e.what() << "\n" << kUsage;
    return 2;
  } catch (const c10::Error& e) {
    std::cerr << "codetr-detect: torch error: " << e.what_without_backtrace() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "codetr-detect: " << e.what() << "\n";
    return 2;
  }
}
