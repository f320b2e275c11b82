// codetr-detect: run a codetr model directory (model.json + model.pt2) on images, videos and streams.
// Exit status: 0 every input processed; 1 some inputs failed (each is named on stderr, the others
// are still processed and written) or the run was interrupted (SIGINT/SIGTERM: every finished
// image is written); 2 bad command line, unusable model directory or unwritable output.
// Image I/O: OpenCV when built with it (any format, video), else binary PPM only (see image_io.h).
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

#include <unistd.h>

#include <csignal>

#include <nlohmann/json.hpp>

#include "codetr/codetr.h"
#include "core.h"
#include "image_io.h"
#include "inputs.h"
#include "video.h"

namespace fs = std::filesystem;
using codetr::cli::BgrImage;

namespace {

const char* kUsage =
    "usage: codetr-detect --model DIR [options] INPUT...\n"
    "  INPUT            image files and/or directories (their images, sorted, not recursive); with OpenCV\n"
    "                   also video files (.mp4 .avi .mkv .mov .webm ...), stream URLs and camera:N\n"
    "  --model DIR      directory written by `codetr export` (model.json + model.pt2)\n"
    "  --device D       cpu or cuda (default: the device in model.json; must match the package)\n"
    "  --score-thr X    drop detections scoring <= X (default: model.json postprocess.score_thr)\n"
    "  --nms T          soft, hard or none (default: model.json; soft uses its method/sigma/min_score)\n"
    "  --iou X          NMS IoU threshold (default: model.json)\n"
    "  --clip           clip boxes to the image (default: model.json postprocess.clip; mmdet does not)\n"
    "  --batch N        images per detect() call (default: the engine batch)\n"
    "  --out-dir D      annotated images (and <stem>.annotated.mkv per video) into D; D must not hold\n"
    "                   any input image\n"
    "  --draw-thr X     minimum score of a drawn box (default 0.3)\n"
    "  --jsonl FILE     one JSON record per image / video frame, appended as soon as it is done:\n"
    "                   {file, image_id, [frame, timestamp_ms], height, width,\n"
    "                    detections: [{bbox [x1,y1,x2,y2], score, label, class, category_id}]} or {.., error}\n"
    "  --json FILE      COCO-results JSON: [{file_name, image_id, category_id, bbox [x,y,w,h], score}],\n"
    "                   rewritten atomically (temp file + rename) after every batch and at any exit\n"
    "                   category_id: the COCO id when model.json's classes are COCO's 80, else the\n"
    "                   class index. image_id: when every input file's name is all digits and these\n"
    "                   numbers are distinct (COCO's 000000000139.jpg -> 139), that number; otherwise\n"
    "                   the input's position in the expanded, sorted input list (0-based)\n"
    "  --max-pixels N   refuse images with more pixels, from their header (default 100000000)\n"
    "  --allow-truncated  decode truncated/corrupt images as far as they go (default: an error)\n"
    "  --stride N       videos: detect every N-th frame (default 1)\n"
    "  --start F        videos: first frame (default 0)\n"
    "  --end F          videos: stop before frame F (default: the end)\n"
    "  --no-drop        live streams/cameras: never drop frames (default: keep up, drop the oldest)\n"
    "  --benchmark N    time N runs of one engine batch (after warm-up) instead of writing results\n"
    "  --cuda-graphs M  on or off (default off): run the engine as a CUDA graph (CUDA engines with\n"
    "                   fully static inputs only); engine runs are then serialised\n"
    "  --build-info     print this build's image I/O backend and exit\n"
#ifndef CODETR_HAVE_OPENCV
    "built without OpenCV: images are read and written as binary PPM (.ppm, P6) only, boxes are\n"
    "drawn without labels; no video input\n"
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
  std::string jsonl;
  bool clip = false;
  int64_t max_pixels = codetr::core::kDefaultMaxPixels;
  bool allow_truncated = false;
  int64_t stride = 1, start = 0, end = -1;
  bool no_drop = false;
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

int64_t parse_int(const std::string& flag, const std::string& v, int64_t minimum) {
  try {
    size_t used = 0;
    const long long i = std::stoll(v, &used);
    if (used == v.size() && i >= minimum) return i;
  } catch (const std::exception&) {
  }
  throw UsageError(flag + " expects an integer >= " + std::to_string(minimum) + ", got '" + v + "'");
}

int64_t parse_positive_int(const std::string& flag, const std::string& v) { return parse_int(flag, v, 1); }

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
    } else if (arg == "--build-info") {
      std::cout << "image_io " << codetr::cli::image_io_backend() << "\ncodetr " << codetr::version() << "\n";
      std::exit(0);
    } else if (arg == "--jsonl") a.jsonl = value();
    else if (arg == "--clip") a.clip = true;
    else if (arg == "--max-pixels") a.max_pixels = parse_positive_int(arg, value());
    else if (arg == "--allow-truncated") a.allow_truncated = true;
    else if (arg == "--stride") a.stride = parse_positive_int(arg, value());
    else if (arg == "--start") a.start = parse_int(arg, value(), 0);
    else if (arg == "--end") a.end = parse_positive_int(arg, value());
    else if (arg == "--no-drop") a.no_drop = true;
    else if (arg == "--model") a.model = value();
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

// Expands INPUTs into files (directories: their images, sorted, not recursive) and video inputs.
// Problems (missing inputs, unlistable directories, looping symlinks) are reported and counted.
struct Inputs {
  std::vector<std::string> images, videos;
  bool any_dir = false;
};

Inputs collect_inputs(const std::vector<std::string>& inputs, int& failures) {
  Inputs out;
  for (const std::string& in : inputs) {
    std::error_code ec;
    if (codetr::cli::is_video_input(in) && !fs::is_directory(in, ec)) {
      out.videos.push_back(in);
    } else if (fs::is_directory(in, ec)) {
      out.any_dir = true;
      std::vector<std::string> found;
      fs::directory_iterator it(in, ec), end;
      for (; !ec && it != end; it.increment(ec)) {
        std::error_code entry_ec;
        // A looping or dangling symlink is reported, not fatal.
        const bool regular = it->is_regular_file(entry_ec);
        if (entry_ec) {
          std::cerr << "error: " << it->path().string() << ": " << entry_ec.message() << "\n";
          ++failures;
        } else if (regular && codetr::core::is_image_name(it->path().string(), codetr::cli::image_extensions())) {
          found.push_back(it->path().string());
        }
      }
      if (ec) {
        std::cerr << "error: cannot list directory " << in << ": " << ec.message() << "\n";
        ++failures;
      }
      std::sort(found.begin(), found.end());
      if (found.empty()) std::cerr << "warning: no images in directory " << in << "\n";
      out.images.insert(out.images.end(), found.begin(), found.end());
    } else if (fs::exists(in, ec)) {
      out.images.push_back(in);
    } else {
      std::cerr << "error: input " << in << " does not exist\n";
      ++failures;
    }
  }
  return out;
}

// SIGINT/SIGTERM ask the run to stop after the batch in flight; the outputs are then complete
// for every finished image.
volatile std::sig_atomic_t g_stop = 0;
void request_stop(int) { g_stop = 1; }

// An output file that must be writable before any image is processed: its folder is probed by
// creating (and removing) a file in it.
bool check_writable(const std::string& path, const char* flag) {
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    std::cerr << "error: " << flag << " " << path << " is a directory\n";
    return false;
  }
  const fs::path dir = fs::absolute(path).parent_path();
  const fs::path probe = dir / (".codetr-probe-" + std::to_string(::getpid()));
  std::ofstream f(probe);
  if (!f) {
    std::cerr << "error: " << flag << " " << path << ": cannot write into " << dir.string() << "\n";
    return false;
  }
  f.close();
  fs::remove(probe, ec);
  return true;
}

// Writes `text` to `path` atomically: a reader (or a crash) sees the old or the new content.
bool write_atomically(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp-" + std::to_string(::getpid());
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << text;
    out.flush();
    if (!out) return false;
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  return !ec;
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
  if (a.clip) o.clip_boxes = true;
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
  const codetr::cli::ReadOptions read_options{args.max_pixels, args.allow_truncated};

  int failures = 0;
  const Inputs inputs = collect_inputs(args.inputs, failures);
  const std::vector<std::string>& files = inputs.images;
  const std::vector<int64_t> ids = codetr::core::image_ids(files);

  auto read_image = [&](const std::string& path, BgrImage& out) {
    std::string error;
    if (codetr::cli::read_image(path, read_options, out, error)) return true;
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
    run_benchmark(*detector, images, static_cast<int>(args.benchmark));
    return failures > 0 ? 1 : 0;
  }

  // Every output is checked before the first image: a bad path costs no work.
  if (!args.json.empty() && !check_writable(args.json, "--json")) return 2;
  if (!args.jsonl.empty() && !check_writable(args.jsonl, "--jsonl")) return 2;
  if (!args.out_dir.empty()) {
    std::error_code ec;
    fs::create_directories(args.out_dir, ec);
    if (ec || !check_writable((fs::path(args.out_dir) / "x").string(), "--out-dir")) {
      if (ec) std::cerr << "error: cannot create --out-dir " << args.out_dir << ": " << ec.message() << "\n";
      return 2;
    }
    // Annotated images keep their file names: an out-dir holding inputs would overwrite them.
    const fs::path out = fs::weakly_canonical(args.out_dir, ec);
    for (const std::string& f : files)
      if (fs::weakly_canonical(fs::absolute(f).parent_path(), ec) == out) {
        std::cerr << "error: --out-dir " << args.out_dir << " holds the input " << f
                  << " (annotated images would overwrite it); choose another folder\n";
        return 2;
      }
  }
  std::ofstream jsonl;
  if (!args.jsonl.empty()) jsonl.open(args.jsonl, std::ios::trunc);
  auto write_record = [&](const codetr::core::ImageResult& r) {
    if (!jsonl.is_open()) return;
    jsonl << codetr::core::result_record_json(r, cfg.classes) << "\n";
    jsonl.flush();  // a kill loses nothing that was finished
  };

  std::signal(SIGINT, request_stop);
  std::signal(SIGTERM, request_stop);

  nlohmann::json results = nlohmann::json::array();
  auto write_json = [&] {
    if (args.json.empty()) return true;
    if (write_atomically(args.json, results.dump(1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n"))
      return true;
    std::cerr << "error: cannot write --json " << args.json << "\n";
    ++failures;
    return false;
  };
  write_json();  // a valid (empty) result file exists from the start

  std::set<std::string> written;
  size_t done = 0;
  auto finish_image = [&](size_t position, BgrImage& image, const std::vector<codetr::Detection>& dets) {
    const std::string& path = files[position];
    const std::string file_name = fs::path(path).filename().string();
    for (const codetr::Detection& d : dets)
      results.push_back({{"file_name", file_name},
                         {"image_id", ids[position]},
                         {"category_id", coco_ids ? codetr::coco80_category_id(static_cast<int>(d.label)) : d.label},
                         {"bbox", {d.x1, d.y1, d.x2 - d.x1, d.y2 - d.y1}},
                         {"score", d.score}});
    codetr::core::ImageResult r{path, ids[position], -1, 0, image.height, image.width, dets, ""};
    write_record(r);
    if (!args.out_dir.empty()) {
      codetr::cli::draw_detections(image, dets, cfg.classes, args.draw_thr);
      // Distinct output names when inputs from several directories share a file name.
      fs::path out = fs::path(args.out_dir) / file_name;
      for (int n = 1; written.count(out.string()); ++n)
        out = fs::path(args.out_dir) / (fs::path(file_name).stem().string() + "_" + std::to_string(n) +
                                        fs::path(file_name).extension().string());
      written.insert(out.string());
      std::string error;
      if (!codetr::cli::write_image(out.string(), image, error)) {
        std::cerr << "error: " << out.string() << ": " << error << "\n";
        ++failures;
      }
    }
    ++done;
    if (inputs.any_dir || files.size() > 1)
      std::cerr << "[" << position + 1 << "/" << files.size() << "] " << path << ": " << dets.size() << " detections\n";
  };
  auto fail_image = [&](size_t position, const std::string& error, int64_t h = 0, int64_t w = 0) {
    std::cerr << "error: " << files[position] << ": " << error << "\n";
    write_record(codetr::core::ImageResult{files[position], ids[position], -1, 0, h, w, {}, error});
    ++failures;
  };

  for (size_t start = 0; start < files.size() && !g_stop; start += batch) {
    std::vector<size_t> positions;
    std::vector<BgrImage> mats;
    for (size_t i = start; i < std::min(files.size(), start + batch); ++i) {
      BgrImage m;
      std::string error;
      if (codetr::cli::read_image(files[i], read_options, m, error)) {
        positions.push_back(i);
        mats.push_back(std::move(m));
      } else {
        fail_image(i, error);
      }
    }
    if (mats.empty()) continue;
    std::vector<codetr::ImageView> views;
    for (const BgrImage& m : mats) views.push_back(view_of(m));
    // One bad image must not fail its batch companions: detect_each gives each its own outcome.
    const std::vector<codetr::DetectOutcome> outcomes = detector->detect_each(views);
    for (size_t k = 0; k < positions.size(); ++k) {
      if (outcomes[k].error.empty())
        finish_image(positions[k], mats[k], outcomes[k].detections);
      else
        fail_image(positions[k], outcomes[k].error, mats[k].height, mats[k].width);
    }
    write_json();
  }

  for (const std::string& video : inputs.videos) {
    if (g_stop) break;
    codetr::cli::VideoOptions vo;
    vo.stride = args.stride, vo.start = args.start, vo.end = args.end, vo.drop_frames = !args.no_drop;
    vo.batch = batch;
    vo.draw_thr = args.draw_thr;
    if (!args.out_dir.empty())
      vo.out_video = (fs::path(args.out_dir) / (fs::path(video).stem().string() + ".annotated.mkv")).string();
    const int64_t video_id = static_cast<int64_t>(files.size() + (&video - inputs.videos.data()));
    const codetr::cli::VideoResult vr = codetr::cli::run_video(
        *detector, video, vo,
        [&](int64_t frame, double ts, const std::vector<codetr::Detection>& dets, const std::string& error, int64_t h,
            int64_t w) {
          write_record(codetr::core::ImageResult{video, video_id, frame, ts, h, w, dets, error});
          if (!error.empty()) std::cerr << "error: " << video << " frame " << frame << ": " << error << "\n";
        },
        &g_stop);
    failures += static_cast<int>(vr.failed);
    std::cerr << video << ": " << vr.frames << " frame(s) in " << vr.seconds << " s";
    if (vr.dropped) std::cerr << ", " << vr.dropped << " dropped";
    std::cerr << "\n";
    if (!vr.error.empty()) {
      std::cerr << "error: " << video << ": " << vr.error << "\n";
      ++failures;
    }
  }

  write_json();
  std::cerr << "processed " << done << " of " << files.size() << " image(s)";
  if (failures > 0) std::cerr << ", " << failures << " failure(s)";
  if (g_stop) std::cerr << "; interrupted, every finished image is written";
  std::cerr << "\n";
  return failures > 0 || g_stop ? 1 : 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const Args args = parse_args(argc, argv);
    codetr::cli::init_image_io(args.max_pixels);
    return run(args);
  } catch (const UsageError& e) {
    std::cerr << "codetr-detect: " << e.what() << "\n" << kUsage;
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "codetr-detect: " << e.what() << "\n";
    return 2;
  }
}
