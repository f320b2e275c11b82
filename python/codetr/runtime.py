"""``codetr.Detector``: an exported model directory run by the C++ runtime (libcodetr), from Python.

    det = codetr.Detector("engines/swin_l")             # device from model.json
    result = det.detect(cv2.imread("photo.jpg"))       # BGR uint8 HxWx3 -> Detections
    results = det.detect([img0, img1])                 # a list -> a list, batched by the engine

The binding (codetr._lib._runtime) calls the same ``codetr::Detector`` as codetr-detect:
preprocessing, engine, postprocessing and every check are the C++ library's, so results equal the
CLI's bit for bit. The GIL is released while it runs.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Union

import numpy as np

from codetr._native import runtime


def decode_image(data: bytes, max_pixels: int = runtime.default_max_pixels, what: str = "image data") -> np.ndarray:
    """Encoded image bytes (any format OpenCV reads) -> BGR uint8 HxWx3, under codetr-detect's
    --max-pixels rule: a PNG/JPEG header declaring more pixels is refused before anything is
    decoded. ValueError naming the problem (``what``: how an empty input is called)."""
    import cv2

    if not data:
        raise ValueError(f"empty {what}")
    over = runtime.pixel_limit_error(bytes(data[:runtime.image_head_bytes]), max_pixels)
    if over:
        raise ValueError(over)
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f"cannot decode {len(data)} bytes as an image")
    return img


@dataclass
class Detections:
    """One image's detections, in original-image pixels."""
    boxes: np.ndarray        # (N, 4) float32 xyxy
    scores: np.ndarray       # (N,) float32
    labels: np.ndarray       # (N,) int64 class indices
    classes: List[str]       # the model's class names (shared, not copied)

    @property
    def class_names(self) -> List[str]:
        """The labels' names, (N,)."""
        return [self.classes[i] for i in self.labels.tolist()]

    def __len__(self) -> int:
        return len(self.scores)


def result_json(dets: Optional[Detections], *, file_name: str, image_id: int, height: int, width: int,
                error: Optional[str] = None) -> str:
    """One image's record as one line of JSON text, exactly codetr-detect's JSON Lines record (written
    by the C++ core, so the two cannot drift): detections (or ``error`` when ``dets`` is None). A file
    name that is not valid UTF-8 (a surrogate-escaped str) is passed as its bytes."""
    file_name = file_name.encode("utf-8", "surrogateescape")
    if dets is None:
        empty = np.zeros((0, 4), np.float32)
        return runtime.result_record(empty, np.zeros(0, np.float32), np.zeros(0, np.int64), [], file_name, image_id,
                                     height, width, error or "failed")
    return runtime.result_record(dets.boxes, dets.scores, dets.labels, dets.classes, file_name, image_id, height,
                                 width, error or "")


def result_record(dets: Optional[Detections], *, file_name: str, image_id: int, height: int, width: int,
                  error: Optional[str] = None) -> Dict:
    """``result_json`` parsed: the record as a dict."""
    return json.loads(result_json(dets, file_name=file_name, image_id=image_id, height=height, width=width,
                                  error=error))


class Detector:
    """A model directory written by ``codetr export`` (model.json + model.pt2), loaded once.

    device: "cpu" or "cuda" (default: model.json's; an AOTInductor package runs only there).
    score_thr / max_per_img / clip_boxes override model.json's postprocess section (clip_boxes
    default False, as mmdetection). cuda_graphs: run a static CUDA engine as one CUDA graph.
    num_runners: engine instances for concurrent detect() calls from several threads.
    Errors (bad model dir, bad image) raise ``codetr.Error`` (a ValueError) naming the problem.
    """

    def __init__(self, model_dir: Union[str, Path], device: Optional[str] = None, *, device_index: int = -1,
                 score_thr: Optional[float] = None, max_per_img: Optional[int] = None,
                 clip_boxes: Optional[bool] = None, cuda_graphs: bool = False, num_runners: int = 1,
                 ops_library: Optional[str] = None):
        self.model_dir = Path(model_dir)
        self._impl = runtime.Detector(str(model_dir), device or "", device_index, ops_library or "", num_runners,
                                      cuda_graphs, score_thr, max_per_img, clip_boxes)
        self.classes: List[str] = list(self._impl.classes)
        self.config: Dict = json.loads(self._impl.config_json)

    @property
    def max_batch(self) -> int:
        """Images per engine call."""
        return self._impl.max_batch

    @property
    def device(self) -> str:
        return self._impl.device

    def detect(self, images: Union[np.ndarray, Sequence[np.ndarray]], order: str = "bgr"
               ) -> Union[Detections, List[Detections]]:
        """uint8 HxWx3 image(s) (``order`` "bgr" as cv2.imread gives, or "rgb") -> Detections, or a
        list of them for a list of images (any number: split into engine batches)."""
        single = isinstance(images, np.ndarray)
        batch = [images] if single else list(images)
        results = [self._wrap(r) for r in self._impl.detect(batch, order)]
        return results[0] if single else results

    def detect_each(self, images: Sequence[np.ndarray], order: str = "bgr") -> List[Union[Detections, ValueError]]:
        """detect() on a list where a bad image costs only itself (the C++ Detector::detect_each,
        codetr-detect's batch rule): one result per image, in order: its Detections, or in its
        place the ``codetr.Error`` (a ValueError) that detect() on it alone raises."""
        return [runtime.Error(r) if isinstance(r, str) else self._wrap(r)
                for r in self._impl.detect_each(list(images), order)]

    def detect_timed(self, images: Sequence[np.ndarray], order: str = "bgr"):
        """detect() plus the wall time of each stage (ms; the device is synchronised per stage)."""
        results, times = self._impl.detect(list(images), order, True)
        return [self._wrap(r) for r in results], times

    def detect_stream(self, frames: Iterable, on_result: Optional[Callable] = None, order: str = "bgr",
                      queue_depth: int = 8, batch: Optional[int] = None):
        """Pipelined detection over a stream (video frames, a camera): ``frames`` yields uint8 HxWx3
        images or (index, timestamp_ms, image) tuples. Decoding (iterating ``frames``), detection in
        batches of consecutive frames and ``on_result(index, timestamp_ms, Detections or None, error
        or None)`` run in three threads with bounded queues, in frame order; a frame that fails is
        reported with its error and the stream goes on. Without ``on_result`` the results are
        returned as a list of (index, timestamp_ms, Detections or None, error or None).
        Returns (results or None, stats {"frames", "failed", "seconds"})."""
        collected: Optional[list] = [] if on_result is None else None

        def deliver(index, timestamp, arrays, error):
            dets = None if error is not None else self._wrap(arrays)
            if collected is not None:
                collected.append((index, timestamp, dets, error))
            else:
                on_result(index, timestamp, dets, error)

        stats = self._impl.run_stream(iter(frames), deliver, order, queue_depth, batch or 0)
        return collected, stats

    def _wrap(self, arrays) -> Detections:
        boxes, scores, labels = arrays
        return Detections(boxes, scores, labels, self.classes)
