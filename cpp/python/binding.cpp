// codetr._lib._runtime: the Python face of libcodetr. Python runs the same Detector, model.json
// parser, preprocessing and postprocessing as the C++ library and codetr-detect: every rule lives
// in libcodetr (core/ and src/), this file only converts numpy arrays and Python values.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "codetr/codetr.h"
#include "core.h"
#include "inputs.h"

namespace py = pybind11;
using namespace codetr;

namespace {

using U8Array = py::array_t<uint8_t, py::array::forcecast>;

// An HxWx3 uint8 numpy array as an ImageView (rows may be strided; pixels must be packed).
ImageView view_of(const py::array& array, PixelOrder order, size_t index) {
  const std::string what = "image " + std::to_string(index);
  if (array.dtype().kind() != 'u' || array.itemsize() != 1)
    throw Error(what + ": expected a uint8 array, got dtype " + std::string(py::str(array.dtype())));
  if (array.ndim() != 3 || array.shape(2) != 3)
    throw Error(what + ": expected shape (H, W, 3), got " + std::string(py::str(py::tuple(py::cast(
                    std::vector<py::ssize_t>(array.shape(), array.shape() + array.ndim()))))));
  if (array.strides(2) != 1 || array.strides(1) != 3 || array.strides(0) < array.shape(1) * 3)
    throw Error(what + ": pixels must be packed (strides (row, 3, 1)); pass np.ascontiguousarray(image)");
  return ImageView{static_cast<const uint8_t*>(array.data()), array.shape(0), array.shape(1), order, array.strides(0)};
}

PixelOrder order_of(const std::string& order) {
  if (order == "bgr") return PixelOrder::kBGR;
  if (order == "rgb") return PixelOrder::kRGB;
  throw Error("order must be 'bgr' or 'rgb', got '" + order + "'");
}

std::vector<ImageView> views_of(const std::vector<py::array>& images, const std::string& order) {
  const PixelOrder o = order_of(order);
  std::vector<ImageView> views;
  for (size_t i = 0; i < images.size(); ++i) views.push_back(view_of(images[i], o, i));
  return views;
}

py::tuple detections_arrays(const std::vector<Detection>& dets) {
  const py::ssize_t n = static_cast<py::ssize_t>(dets.size());
  py::array_t<float> boxes({n, py::ssize_t{4}});
  py::array_t<float> scores(n);
  py::array_t<int64_t> labels(n);
  auto b = boxes.mutable_unchecked<2>();
  auto s = scores.mutable_unchecked<1>();
  auto l = labels.mutable_unchecked<1>();
  for (py::ssize_t i = 0; i < n; ++i) {
    const Detection& d = dets[i];
    b(i, 0) = d.x1, b(i, 1) = d.y1, b(i, 2) = d.x2, b(i, 3) = d.y2;
    s(i) = d.score;
    l(i) = d.label;
  }
  return py::make_tuple(boxes, scores, labels);
}

core::ImageMeta meta_of(const py::dict& meta) {
  core::ImageMeta m;
  const auto ori = meta["ori_shape"].cast<std::pair<int64_t, int64_t>>();
  const auto img = meta["img_shape"].cast<std::pair<int64_t, int64_t>>();
  const auto scale = meta["scale_factor"].cast<std::pair<float, float>>();
  m.original = {ori.first, ori.second};
  m.resized = {img.first, img.second};
  m.w_scale = scale.first;
  m.h_scale = scale.second;
  return m;
}

template <typename T>
const T* checked(const py::array_t<T, py::array::c_style | py::array::forcecast>& a, py::ssize_t rows, int cols,
                 const char* name) {
  const bool ok = cols == 0 ? (a.ndim() == 1 && a.shape(0) == rows) : (a.ndim() == 2 && a.shape(0) == rows && a.shape(1) == cols);
  if (!ok)
    throw Error(std::string(name) + " must have shape (" + std::to_string(rows) + (cols ? ", " + std::to_string(cols) : ",") +
                ")");
  return a.data();
}

using F32 = py::array_t<float, py::array::c_style | py::array::forcecast>;
using I64 = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;

}  // namespace

PYBIND11_MODULE(_runtime, m) {
  m.doc() = "codetr's C++ runtime (libcodetr): Detector, model.json, pre- and postprocessing";
  py::register_exception<Error>(m, "Error", PyExc_ValueError);

  m.def("version", &codetr::version);
  m.def("find_ops_library", &find_ops_library);
  m.def("load_ops_library", &load_ops_library, py::arg("path") = "");
  m.def("nonfinite_message", &core::nonfinite_message, py::arg("what"), py::arg("bad"), py::arg("total"),
        py::arg("dtype"));
  m.def("model_json_version", [] { return kModelJsonVersion; });
  m.def("coco80_classes", &coco80_classes, "The 80 COCO class names in the standard order.");
  m.def("coco80_category_id", &coco80_category_id, py::arg("class_index"), "COCO category id of class 0..79.");
  m.def(
      "parse_model_config",
      [](const std::string& text, const std::string& source) { return model_config_to_json(parse_model_config(text, source)); },
      py::arg("text"), py::arg("source") = "model.json",
      "Parses model.json text with the runtime's parser; returns it re-serialised (canonical JSON).");
  m.def(
      "check_engine_contract",
      [](const std::string& contract, const std::string& model_json_text) {
        core::check_engine_contract(contract, parse_model_config(model_json_text), "model.pt2", "model.json");
      },
      py::arg("contract"), py::arg("model_json"));

  m.def(
      "result_record",
      [](const F32& boxes, const F32& scores, const I64& labels, const std::vector<std::string>& classes,
         const std::string& file, int64_t image_id, int64_t height, int64_t width, const std::string& error,
         int64_t frame, double timestamp_ms) {
        core::ImageResult r;
        r.file = file, r.image_id = image_id, r.height = height, r.width = width, r.error = error;
        r.frame = frame, r.timestamp_ms = timestamp_ms;
        const py::ssize_t n = scores.ndim() == 1 ? scores.shape(0) : -1;
        const float* b = checked(boxes, n, 4, "boxes");
        const float* s = checked(scores, n, 0, "scores");
        const int64_t* l = checked(labels, n, 0, "labels");
        for (py::ssize_t i = 0; i < n; ++i) r.detections.push_back({b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3], s[i], l[i]});
        return core::result_record_json(r, classes);
      },
      py::arg("boxes"), py::arg("scores"), py::arg("labels"), py::arg("classes"), py::arg("file"), py::arg("image_id"),
      py::arg("height"), py::arg("width"), py::arg("error") = "", py::arg("frame") = -1, py::arg("timestamp_ms") = 0.0,
      "One image's JSON Lines record, exactly as codetr-detect writes it.");

  m.def(
      "image_extensions", [] { return core::image_extensions(); },
      "Extensions (lower case, with the dot) codetr-detect scans directory INPUTs for.");
  m.def(
      "is_image_name", [](const std::string& path) { return core::is_image_name(path); }, py::arg("path"),
      "Whether codetr-detect takes `path` from a directory INPUT (its extension, any case).");
  m.def("image_ids", &core::image_ids, py::arg("files"),
        "codetr-detect's image_id of each file of the expanded input list.");
  m.attr("default_max_pixels") = core::kDefaultMaxPixels;
  m.attr("image_head_bytes") = core::kImageHeadBytes;
  m.def(
      "pixel_limit_error",
      [](const py::bytes& head, int64_t max_pixels) { return core::pixel_limit_error(head, max_pixels); },
      py::arg("head"), py::arg("max_pixels"),
      "codetr-detect's --max-pixels rule on an encoded image's first bytes (PNG/JPEG header): the "
      "error message, or '' when the declared size is within the limit or unknown.");

  m.def(
      "validate_engine_inputs",
      [](const std::vector<std::vector<int64_t>>& shapes, const std::vector<std::string>& dtypes,
         const std::string& model_json_text) {
        core::validate_input_shapes(shapes, dtypes, parse_model_config(model_json_text));
      },
      py::arg("shapes"), py::arg("dtypes"), py::arg("model_json"),
      "Checks an engine call's input shapes/dtypes against model.json (raises codetr Error).");

  m.def(
      "preprocess",
      [](const std::vector<py::array>& images, const std::string& pipeline_json, const std::string& order) {
        const ModelConfig cfg = parse_pipeline_config(pipeline_json);
        const std::vector<ImageView> views = views_of(images, order);
        const core::BatchPlan plan = core::plan_batch(views, cfg);
        const py::ssize_t n = static_cast<py::ssize_t>(views.size());
        py::array_t<float> out({n, py::ssize_t{3}, static_cast<py::ssize_t>(plan.pad_h), static_cast<py::ssize_t>(plan.pad_w)});
        py::object masks = py::none();
        bool* mask_ptr = nullptr;
        if (cfg.preprocess.padding_mask) {
          py::array_t<bool> mk({n, static_cast<py::ssize_t>(plan.pad_h), static_cast<py::ssize_t>(plan.pad_w)});
          mask_ptr = mk.mutable_data();
          masks = mk;
        }
        float* out_ptr = out.mutable_data();
        {
          py::gil_scoped_release release;
          core::preprocess_host(views, plan, cfg.preprocess, out_ptr, mask_ptr);
        }
        py::list metas;
        for (const core::ImageMeta& meta : plan.metas) {
          py::dict d;
          d["ori_shape"] = py::make_tuple(meta.original.height, meta.original.width);
          d["img_shape"] = py::make_tuple(meta.resized.height, meta.resized.width);
          d["scale_factor"] = py::make_tuple(meta.w_scale, meta.h_scale);
          d["pad_shape"] = py::make_tuple(plan.pad_h, plan.pad_w);
          metas.append(d);
        }
        return py::make_tuple(out, masks, metas);
      },
      py::arg("images"), py::arg("pipeline_json"), py::arg("order") = "bgr",
      "uint8 HxWx3 images (one padded size) -> (float32 (B,3,H,W), bool (B,H,W) or None, metas).");

  m.def(
      "postprocess",
      [](const F32& boxes, const F32& scores, const I64& labels, const py::dict& meta, const std::string& pipeline_json,
         int64_t num_classes) {
        const ModelConfig cfg = parse_pipeline_config(pipeline_json);
        const py::ssize_t k = scores.ndim() == 1 ? scores.shape(0) : -1;
        const float* b = checked(boxes, k, 4, "boxes");
        const float* s = checked(scores, k, 0, "scores");
        const int64_t* l = checked(labels, k, 0, "labels");
        core::check_finite("boxes", b, k * 4, cfg.dtype);
        core::check_finite("scores", s, k, cfg.dtype);
        return detections_arrays(core::postprocess(b, s, l, k, meta_of(meta), cfg.postprocess, num_classes));
      },
      py::arg("boxes"), py::arg("scores"), py::arg("labels"), py::arg("meta"), py::arg("pipeline_json"),
      py::arg("num_classes"),
      "One image's model outputs (K,4)/(K,)/(K,) -> (boxes (N,4) original pixels, scores, labels).");

  m.def(
      "batched_nms",
      [](const F32& boxes, const F32& scores, const I64& labels, const std::string& pipeline_json) {
        const ModelConfig cfg = parse_pipeline_config(pipeline_json);
        const py::ssize_t n = scores.ndim() == 1 ? scores.shape(0) : -1;
        const core::Kept kept = core::batched_nms(checked(boxes, n, 4, "boxes"), checked(scores, n, 0, "scores"),
                                                  checked(labels, n, 0, "labels"), n, cfg.postprocess.nms);
        return py::make_tuple(py::array_t<int64_t>(kept.keep.size(), kept.keep.data()),
                              py::array_t<float>(kept.scores.size(), kept.scores.data()));
      },
      py::arg("boxes"), py::arg("scores"), py::arg("labels"), py::arg("pipeline_json"),
      "mmcv.ops.batched_nms with the pipeline's postprocess.nms -> (keep, scores).");

  m.def(
      "resize_u8",
      [](const py::array& image, int64_t height, int64_t width) {
        const ImageView view = view_of(image, PixelOrder::kBGR, 0);
        if (height < 1 || width < 1) throw Error("resize: output size must be positive");
        py::array_t<uint8_t> out({static_cast<py::ssize_t>(height), static_cast<py::ssize_t>(width), py::ssize_t{3}});
        uint8_t* dst = out.mutable_data();
        {
          py::gil_scoped_release release;
          core::resize_u8(view, {height, width}, dst);
        }
        return out;
      },
      py::arg("image"), py::arg("height"), py::arg("width"), "cv2.resize(image, (width, height), INTER_LINEAR), bit-exact.");

  py::class_<Detector>(m, "Detector")
      .def(py::init([](const std::string& model_dir, const std::string& device, int device_index,
                       const std::string& ops_library, size_t num_runners, bool cuda_graphs,
                       std::optional<float> score_thr, std::optional<int64_t> max_per_img, std::optional<bool> clip_boxes) {
             DetectorOptions options;
             options.device = device;
             options.device_index = device_index;
             options.ops_library = ops_library;
             options.num_runners = num_runners;
             options.cuda_graphs = cuda_graphs;
             options.score_thr = score_thr;
             options.max_per_img = max_per_img;
             options.clip_boxes = clip_boxes;
             py::gil_scoped_release release;
             return std::make_unique<Detector>(model_dir, options);
           }),
           py::arg("model_dir"), py::arg("device") = "", py::arg("device_index") = -1, py::arg("ops_library") = "",
           py::arg("num_runners") = 1, py::arg("cuda_graphs") = false, py::arg("score_thr") = py::none(),
           py::arg("max_per_img") = py::none(), py::arg("clip_boxes") = py::none())
      .def(
          "detect",
          [](const Detector& self, const std::vector<py::array>& images, const std::string& order, bool timed) {
            const std::vector<ImageView> views = views_of(images, order);
            std::vector<std::vector<Detection>> results;
            StageTimes times;
            {
              py::gil_scoped_release release;
              results = self.detect(views, timed ? &times : nullptr);
            }
            py::list out;
            for (const auto& dets : results) out.append(detections_arrays(dets));
            if (!timed) return py::object(out);
            py::dict t;
            t["preprocess_ms"] = times.preprocess_ms;
            t["engine_ms"] = times.engine_ms;
            t["postprocess_ms"] = times.postprocess_ms;
            return py::object(py::make_tuple(out, t));
          },
          py::arg("images"), py::arg("order") = "bgr", py::arg("timed") = false,
          "images: list of uint8 HxWx3 arrays -> list of (boxes (N,4) float32, scores (N,), labels (N,) int64)")
      .def(
          "detect_each",
          [](const Detector& self, const std::vector<py::array>& images, const std::string& order) {
            const PixelOrder pixel_order = order_of(order);
            // An array that is not an image fails alone, with the message detect() on it alone gives;
            // the images go to Detector::detect_each.
            std::vector<DetectOutcome> outcomes(images.size());
            std::vector<ImageView> views;
            std::vector<size_t> positions;
            for (size_t i = 0; i < images.size(); ++i) {
              try {
                views.push_back(view_of(images[i], pixel_order, 0));
                positions.push_back(i);
              } catch (const Error& e) {
                outcomes[i].error = e.what();
              }
            }
            {
              py::gil_scoped_release release;
              std::vector<DetectOutcome> detected = self.detect_each(views);
              for (size_t k = 0; k < positions.size(); ++k) outcomes[positions[k]] = std::move(detected[k]);
            }
            py::list out;
            for (const DetectOutcome& o : outcomes)
              out.append(o.error.empty() ? py::object(detections_arrays(o.detections)) : py::object(py::str(o.error)));
            return out;
          },
          py::arg("images"), py::arg("order") = "bgr",
          "Detector::detect_each: images -> per image (boxes, scores, labels), or its error message (str)")
      .def(
          "run_stream",
          [](const Detector& self, py::iterator frames, py::function on_result, const std::string& order,
             size_t queue_depth, size_t batch) {
            const PixelOrder pixel_order = order_of(order);
            int64_t next_index = 0;
            bool started = false;
            // Python objects cross the pipeline's threads: every touch takes the GIL, including
            // the release of the last reference to a frame's array.
            FrameSource source = [&](Frame& frame) {
              py::gil_scoped_acquire gil;
              // Advance only when the next frame is asked for: an error raised by the iterator then
              // belongs to that frame, after the previous one went down the pipeline.
              if (started) ++frames;
              started = true;
              if (frames == py::iterator::sentinel()) return false;
              py::object item = py::reinterpret_borrow<py::object>(*frames);
              py::array array;
              double timestamp = 0;
              int64_t index = next_index;
              if (py::isinstance<py::tuple>(item)) {
                const py::tuple t = item.cast<py::tuple>();
                if (t.size() != 3) throw Error("a stream item is an image or (index, timestamp_ms, image)");
                index = t[0].cast<int64_t>();
                timestamp = t[1].cast<double>();
                array = t[2].cast<py::array>();
              } else {
                array = item.cast<py::array>();
              }
              next_index = index + 1;
              frame.image = view_of(array, pixel_order, static_cast<size_t>(index));
              frame.index = index;
              frame.timestamp_ms = timestamp;
              frame.owner = std::shared_ptr<const void>(new py::object(array), [](const void* p) {
                py::gil_scoped_acquire release_gil;
                delete static_cast<const py::object*>(p);
              });
              return true;
            };
            FrameSink sink = [&](const Frame& frame, const std::vector<Detection>& dets, const std::string& error) {
              py::gil_scoped_acquire gil;
              on_result(frame.index, frame.timestamp_ms, detections_arrays(dets), error.empty() ? py::object(py::none())
                                                                                               : py::str(error));
            };
            StreamOptions options;
            options.queue_depth = queue_depth;
            options.batch = batch;
            StreamStats stats;
            {
              py::gil_scoped_release release;
              stats = self.run_stream(source, sink, options);
            }
            py::dict d;
            d["frames"] = stats.frames;
            d["failed"] = stats.failed;
            d["seconds"] = stats.seconds;
            return d;
          },
          py::arg("frames"), py::arg("on_result"), py::arg("order") = "bgr", py::arg("queue_depth") = 8,
          py::arg("batch") = 0,
          "Pipelined detection over an iterator of images or (index, timestamp_ms, image); on_result(index, "
          "timestamp_ms, (boxes, scores, labels), error or None) is called in order.")
      .def_property_readonly("classes", [](const Detector& self) { return self.config().classes; })
      .def_property_readonly("max_batch", &Detector::max_batch)
      .def_property_readonly("device", &Detector::device)
      .def_property_readonly("ops_library", &Detector::ops_library)
      .def_property_readonly("config_json", [](const Detector& self) { return model_config_to_json(self.config()); });
}
