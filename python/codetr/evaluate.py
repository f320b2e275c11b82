"""`codetr eval`: run a model over a COCO-format dataset, write COCO results JSON, compute COCO box
mAP with pycocotools, and compare two models image by image.

A model ("artifact") is one of:

* a model directory written by ``codetr export`` with an AOTInductor package: run by
  ``codetr.Detector`` (the C++ runtime through its binding);
* a model directory with an ONNX file: ``codetr.onnx_engine.OnnxEngine.detect`` (onnxruntime, with
  the runtime core's pre- and postprocessing under that model.json);
* ``eager``: the PyTorch model of a preset (+ checkpoint) with the preset's mmdetection test
  pipeline (``codetr.preprocess`` / ``codetr.postprocess``), one image per call.

Each is wrapped in the same small adapter (:class:`Model`): uint8 BGR images in, per image
``codetr.Detections`` out (boxes (N,4) float32 xyxy in original-image pixels, scores, labels as
class indices), so everything after it - results, mAP, comparison - is one code path.

mmdetection's CocoMetric is the reference for the numbers: class index -> category id by class
NAME through the annotation file's categories (``get_cat_ids(cat_names=classes)``), boxes as
[x, y, w, h] = [x1, y1, x2 - x1, y2 - y1], and COCOeval with maxDets (100, 300, 1000), so mAP
counts up to 300 detections per image as mmdet reports it (pycocotools' own default is 100).
"""
from __future__ import annotations

import contextlib
import io
import json
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from codetr.runtime import Detections

# COCOeval.stats in order, named as mmdetection's CocoMetric names them (maxDets 100/300/1000).
STAT_NAMES = ("mAP", "mAP_50", "mAP_75", "mAP_s", "mAP_m", "mAP_l",
              "AR@100", "AR@300", "AR@1000", "AR_s@1000", "AR_m@1000", "AR_l@1000")
MAX_DETS = (100, 300, 1000)


class EvalError(ValueError):
    """A request `codetr eval` cannot carry out; the message says what to change (exit 2)."""


# ----------------------------------------------------------------------------------------------
# models: artifact -> per-image detections
# ----------------------------------------------------------------------------------------------
@dataclass
class Model:
    """One artifact behind one interface: ``detect(list of uint8 HxWx3 BGR) -> list of Detections``."""
    name: str
    classes: List[str]
    detect: Callable[[List[np.ndarray]], List[Detections]]


def open_model(spec: str, *, preset=None, checkpoint: Optional[Path] = None, device: Optional[str] = None,
               dtype: str = "float32") -> Model:
    """``spec``: a model directory (format from its model.json) or "eager" (needs ``preset``)."""
    if spec == "eager":
        return _eager_model(preset, checkpoint, device or "cpu", dtype)
    from codetr.modeljson import load_model_json

    model_dir = Path(spec)
    if not model_dir.is_dir():
        raise EvalError(f"{spec}: not a model directory (one written by `codetr export`) and not 'eager'")
    engine_format = load_model_json(model_dir)["engine"]["format"]
    if engine_format == "onnx":
        from codetr.onnx_engine import OnnxEngine

        providers = ["CUDAExecutionProvider"] if device == "cuda" else None
        engine = OnnxEngine(model_dir, providers=providers)
        return Model(f"{model_dir} (onnx)", engine.classes, engine.detect)
    from codetr.runtime import Detector

    detector = Detector(model_dir, device)
    return Model(f"{model_dir} ({engine_format}, {detector.device})", detector.classes, detector.detect)


def _eager_model(preset, checkpoint: Optional[Path], device: str, dtype: str) -> Model:
    from codetr.export import DTYPES
    from codetr.models import build_model
    from codetr.postprocess import postprocess_single
    from codetr.preprocess import preprocess
    from codetr.presets import get_preset

    if preset is None:
        raise EvalError("the eager model needs --preset (and --checkpoint for real weights)")
    try:
        preset = get_preset(preset)
    except KeyError as exc:
        raise EvalError(exc.args[0]) from None
    if dtype not in DTYPES:
        raise EvalError(f"unknown --dtype {dtype!r}; choose one of {list(DTYPES)}")
    if checkpoint is None:
        warnings.warn("eager model without --checkpoint: RANDOM weights, the mAP is meaningless", stacklevel=2)
    elif not Path(checkpoint).is_file():
        raise EvalError(f"--checkpoint {checkpoint}: no such file")
    if device == "cuda" and not torch.cuda.is_available():
        raise EvalError("--device cuda requested but this torch sees no CUDA GPU")
    model = build_model(preset, checkpoint=checkpoint, device=device, dtype=DTYPES[dtype])

    def detect(images: List[np.ndarray]) -> List[Detections]:
        results = []
        for image in images:  # one image per batch: no padding from a larger companion
            batch, masks, metas = preprocess([image], preset, device=device, dtype=DTYPES[dtype])
            with torch.no_grad():
                boxes, scores, labels = model(batch, masks)
            out = postprocess_single(boxes[0], scores[0], labels[0], metas[0], preset, dtype)
            results.append(Detections(out["bboxes"].numpy(), out["scores"].numpy(), out["labels"].numpy(),
                                      model.classes))
        return results

    return Model(f"eager {preset.name} ({dtype}, {device})", list(model.classes), detect)


# ----------------------------------------------------------------------------------------------
# dataset
# ----------------------------------------------------------------------------------------------
@dataclass
class Dataset:
    coco: object                  # pycocotools.coco.COCO of the annotation file
    images: List[Dict]            # the evaluated image entries (id, file_name, height, width)
    image_dir: Path
    image_ids: List[int] = field(init=False)

    def __post_init__(self):
        self.image_ids = [int(im["id"]) for im in self.images]


def _pycocotools():
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        raise EvalError("codetr eval computes mAP with pycocotools: pip install pycocotools "
                        "(or pip install 'codetr[eval]')") from None
    return COCO, COCOeval


def load_dataset(annotations: Path, image_dir: Path, max_images: Optional[int] = None) -> Dataset:
    """Read and check a COCO-format annotation file; the first ``max_images`` images (file order)."""
    COCO, _ = _pycocotools()
    annotations, image_dir = Path(annotations), Path(image_dir)
    if not annotations.is_file():
        raise EvalError(f"--annotations {annotations}: no such file")
    if not image_dir.is_dir():
        raise EvalError(f"--images {image_dir}: no such directory")
    try:
        data = json.loads(annotations.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EvalError(f"{annotations}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise EvalError(f"{annotations}: a COCO annotation file is a JSON object, got {type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise EvalError(f"{annotations}: '{key}' must be a list (COCO format)")
    if not data["images"] or not data["categories"]:
        raise EvalError(f"{annotations}: no {'images' if not data['images'] else 'categories'}")
    for what, required in (("images", ("id", "file_name", "height", "width")),
                           ("annotations", ("id", "image_id", "category_id", "bbox")),
                           ("categories", ("id", "name"))):
        for i, entry in enumerate(data[what]):
            missing = [k for k in required if not isinstance(entry, dict) or k not in entry]
            if missing:
                raise EvalError(f"{annotations}: {what}[{i}] has no {', '.join(repr(k) for k in missing)}")
    for i, ann in enumerate(data["annotations"]):
        ann.setdefault("iscrowd", 0)
        if "area" not in ann:  # COCOeval's area ranges need it; the box area is the usual fallback
            ann["area"] = float(ann["bbox"][2]) * float(ann["bbox"][3])
    if max_images is not None and max_images < 1:
        raise EvalError(f"--max-images must be >= 1, got {max_images}")
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress to stdout
        coco.createIndex()
    return Dataset(coco, data["images"][:max_images], image_dir)


def read_image(path: Path, height: int, width: int) -> np.ndarray:
    """uint8 HxWx3 BGR as mmdet loads it (cv2, EXIF orientation applied); the size must match the
    annotation file's, or the boxes would be scored in another frame."""
    try:
        import cv2
    except ImportError:
        raise EvalError("codetr eval reads images with OpenCV: pip install opencv-python-headless") from None
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"{path}: not a readable image")
    if image.shape[:2] != (height, width):
        raise ValueError(f"{path}: image is {image.shape[0]}x{image.shape[1]} (HxW), the annotation file "
                         f"says {height}x{width}")
    return image


# ----------------------------------------------------------------------------------------------
# running a model
# ----------------------------------------------------------------------------------------------
class Progress:
    """A stderr counter: rewritten in place on a terminal, a line every few seconds otherwise."""

    def __init__(self, label: str, total: int, stream=None, interval_s: float = 5.0):
        self.label, self.total, self.stream = label, total, stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.interval_s = interval_s
        self.start = self.last = time.perf_counter()

    def update(self, done: int, failed: int) -> None:
        now = time.perf_counter()
        final = done == self.total
        if not (final or self.tty or now - self.last >= self.interval_s):
            return
        self.last = now
        rate = done / max(now - self.start, 1e-9)
        text = f"[codetr eval] {self.label}: {done}/{self.total} images ({rate:.1f}/s)"
        if failed:
            text += f", {failed} failed"
        self.stream.write(("\r" + text + ("\n" if final else "")) if self.tty else text + "\n")
        self.stream.flush()


@dataclass
class RunResult:
    detections: Dict[int, Detections]   # image id -> detections (images that did not fail)
    failures: Dict[int, str]            # image id -> one-line error
    seconds: float


def run_model(model: Model, dataset: Dataset, batch: int = 1, progress: Optional[Progress] = None) -> RunResult:
    """Detections for every dataset image. An image that cannot be read or run is recorded in
    ``failures`` and the others go on (a failing batch is retried image by image, so only the bad
    image is lost)."""
    detections: Dict[int, Detections] = {}
    failures: Dict[int, str] = {}
    start = time.perf_counter()
    entries = dataset.images
    for first in range(0, len(entries), batch):
        chunk, images = [], []
        for entry in entries[first:first + batch]:
            try:
                images.append(read_image(dataset.image_dir / entry["file_name"], int(entry["height"]),
                                         int(entry["width"])))
                chunk.append(entry)
            except EvalError:
                raise
            except Exception as exc:  # noqa: BLE001  (a bad image costs only itself)
                failures[int(entry["id"])] = _one_line(exc)
        try:
            results = model.detect(images) if images else []
        except Exception as exc:  # noqa: BLE001
            if len(images) == 1:
                failures[int(chunk[0]["id"])] = _one_line(exc)
                results = [None]
            else:
                results = [_detect_alone(model, entry, image, failures) for entry, image in zip(chunk, images)]
        for entry, dets in zip(chunk, results):
            if dets is not None:
                detections[int(entry["id"])] = dets
        if progress is not None:
            progress.update(min(first + batch, len(entries)), len(failures))
    return RunResult(detections, failures, time.perf_counter() - start)


def _detect_alone(model: Model, entry: Dict, image: np.ndarray, failures: Dict[int, str]) -> Optional[Detections]:
    try:
        return model.detect([image])[0]
    except Exception as exc:  # noqa: BLE001
        failures[int(entry["id"])] = _one_line(exc)
        return None


def _one_line(exc: BaseException) -> str:
    text = " | ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return f"{type(exc).__name__}: {text}" if not isinstance(exc, (ValueError, OSError)) else text


# ----------------------------------------------------------------------------------------------
# results and mAP
# ----------------------------------------------------------------------------------------------
def category_ids(classes: Sequence[str], coco) -> Dict[int, int]:
    """Class index -> the annotation file's category id with the same name (mmdetection's rule).
    Classes the file does not name are left out (their detections cannot be scored)."""
    by_name = {}
    for cat in coco.dataset["categories"]:
        by_name.setdefault(cat["name"], int(cat["id"]))
    mapping = {i: by_name[name] for i, name in enumerate(classes) if name in by_name}
    if not mapping:
        raise EvalError(f"none of the model's {len(classes)} class names (e.g. {list(classes[:3])}) is a category "
                        f"name of the annotation file (e.g. {[c['name'] for c in coco.dataset['categories'][:3]]})")
    return mapping


def coco_results(detections: Dict[int, Detections], cat_ids: Dict[int, int]) -> List[Dict]:
    """COCO results entries {image_id, category_id, bbox [x, y, w, h], score}, per image in the
    model's order; detections of classes without a category are dropped."""
    out = []
    for image_id, dets in detections.items():
        for (x1, y1, x2, y2), score, label in zip(dets.boxes.tolist(), dets.scores.tolist(), dets.labels.tolist()):
            if label in cat_ids:
                out.append({"image_id": image_id, "category_id": cat_ids[label],
                            "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score})
    return out


def coco_map(coco, results: List[Dict], image_ids: Sequence[int]) -> Dict[str, float]:
    """COCOeval (bbox) over ``image_ids`` with mmdetection's maxDets -> {STAT_NAMES: value}
    (-1 where the annotation file has no box in that area range, as pycocotools reports it)."""
    COCO, COCOeval = _pycocotools()
    with contextlib.redirect_stdout(io.StringIO()):
        if results:
            dt = coco.loadRes([dict(r) for r in results])  # loadRes adds keys to the dicts it gets
        else:  # loadRes cannot take an empty list: an empty result set scores 0
            dt = COCO()
            dt.dataset = {"images": coco.dataset["images"], "categories": coco.dataset["categories"],
                          "annotations": []}
            dt.createIndex()
        ev = COCOeval(coco, dt, "bbox")
        ev.params.imgIds = list(image_ids)
        ev.params.maxDets = list(MAX_DETS)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return dict(zip(STAT_NAMES, (float(v) for v in ev.stats)))


# ----------------------------------------------------------------------------------------------
# comparing two models
# ----------------------------------------------------------------------------------------------
def compare_runs(a: Dict[int, Detections], b: Dict[int, Detections], iou_threshold: float = 0.99,
                 min_score: float = 0.0) -> Dict[str, object]:
    """Image by image (images both runs have): detections with score >= ``min_score`` are matched
    one to one (same label, IoU >= ``iou_threshold``; greedy in ``a``'s score order,
    :func:`codetr.precision.match_detections`). ``matched_fraction`` = pairs / max(len a, len b)
    summed over images (1.0: every detection of either side has its twin);
    ``max_score_diff`` over the pairs."""
    from codetr.precision import match_detections

    pairs = count_a = count_b = 0
    max_diff = 0.0
    for image_id in sorted(a.keys() & b.keys()):
        da, db = _above(a[image_id], min_score), _above(b[image_id], min_score)
        matched = match_detections(torch.from_numpy(da[0]), torch.from_numpy(da[2]), torch.from_numpy(db[0]),
                                   torch.from_numpy(db[2]), iou_threshold)
        pairs += len(matched)
        count_a, count_b = count_a + len(da[1]), count_b + len(db[1])
        for i, j in matched:
            max_diff = max(max_diff, abs(float(da[1][i]) - float(db[1][j])))
    total = max(count_a, count_b)
    return {"images": len(a.keys() & b.keys()), "detections_a": count_a, "detections_b": count_b, "matched": pairs,
            "matched_fraction": pairs / total if total else 1.0, "max_score_diff": max_diff,
            "iou_threshold": iou_threshold, "min_score": min_score}


def _above(dets: Detections, min_score: float):
    """(boxes, scores, labels) with score >= min_score, by descending score (stable)."""
    keep = np.flatnonzero(dets.scores >= min_score)
    order = keep[np.argsort(-dets.scores[keep], kind="stable")]
    return dets.boxes[order].astype(np.float64), dets.scores[order], dets.labels[order]


# ----------------------------------------------------------------------------------------------
# the command
# ----------------------------------------------------------------------------------------------
def evaluate(model: Model, dataset: Dataset, output: Path, *, compare: Optional[Model] = None, batch: int = 1,
             iou_threshold: float = 0.99, min_score: float = 0.0, log: Callable[[str], None] = print,
             progress_stream=None) -> Dict[str, object]:
    """Run ``model`` (and ``compare``), write OUTPUT/results.json (+ results_compare.json) and
    OUTPUT/metrics.json; returns the metrics. Failed images are listed under "failed"."""
    if compare is not None and list(compare.classes) != list(model.classes):
        raise EvalError(f"the two models have different classes ({len(model.classes)} vs {len(compare.classes)}, "
                        "or another order): their labels cannot be compared")
    cat_ids = category_ids(model.classes, dataset.coco)
    unnamed = [name for i, name in enumerate(model.classes) if i not in cat_ids]
    if unnamed:
        log(f"[codetr eval] note: {len(unnamed)} model classes are no category of the annotation file; "
            f"their detections are not scored (e.g. {unnamed[:5]})")
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)

    metrics: Dict[str, object] = {"images": len(dataset.images), "maxDets": list(MAX_DETS)}
    runs = {}
    for key, m, results_file in (("model", model, "results.json"), ("compare", compare, "results_compare.json")):
        if m is None:
            continue
        run = run_model(m, dataset, batch, Progress(m.name, len(dataset.images), progress_stream))
        results = coco_results(run.detections, cat_ids)
        (output / results_file).write_text(json.dumps(results))
        stats = coco_map(dataset.coco, results, dataset.image_ids)
        metrics[key] = {"name": m.name, "results": str(output / results_file), "seconds": round(run.seconds, 3),
                        "failed": {str(k): v for k, v in run.failures.items()}, **stats}
        runs[key] = run
        log(f"[codetr eval] {m.name}: mAP {stats['mAP']:.4f}  mAP_50 {stats['mAP_50']:.4f}  "
            f"mAP_75 {stats['mAP_75']:.4f}  ({len(run.detections)} images in {run.seconds:.1f} s"
            + (f", {len(run.failures)} FAILED" if run.failures else "") + ")")
        for image_id, message in list(run.failures.items())[:10]:
            log(f"[codetr eval]   image {image_id} failed: {message}")
    if compare is not None:
        summary = compare_runs(runs["model"].detections, runs["compare"].detections, iou_threshold, min_score)
        summary["mAP_delta"] = metrics["compare"]["mAP"] - metrics["model"]["mAP"]
        metrics["comparison"] = summary
        log(f"[codetr eval] compare: mAP delta {summary['mAP_delta']:+.4f}, matched "
            f"{summary['matched']}/{max(summary['detections_a'], summary['detections_b'])} detections "
            f"({summary['matched_fraction']:.4f}; same label, IoU >= {iou_threshold}), "
            f"max score diff {summary['max_score_diff']:.3g}")
    (output / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    log(f"[codetr eval] wrote {output / 'metrics.json'}")
    return metrics
