"""Run an exported ONNX model dir (model.onnx + model.json) with onnxruntime, inputs checked first.

    engine = OnnxEngine("out/")                # CPUExecutionProvider by default
    boxes, scores, labels = engine(images, masks)   # the engine alone: normalised batch in
    result = engine.detect(cv2.imread("photo.jpg"))   # image(s) in -> codetr.Detections

``detect`` is ``codetr.Detector.detect`` with onnxruntime in the engine's place: the runtime
core's preprocessing and postprocessing (the same code as the C++ runtime) under this model.json,
one image per engine call.

Every call validates the inputs against model.json (:func:`codetr.modeljson.validate_engine_inputs`):
wrong rank/dtype, a batch or H/W outside the exported range, or a dynamic H/W that is not a
multiple of 32 raise ValueError naming the input and dimension, instead of an onnxruntime shape
error (or a silently wrong result) deep inside the graph. Outputs holding NaN/inf (a float16
overflow) raise :class:`codetr.precision.NonFiniteOutputError`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from codetr._native import runtime
from codetr.modeljson import load_model_json, validate_engine_inputs
from codetr.precision import check_finite_outputs
from codetr.runtime import Detections


class OnnxEngine:
    def __init__(self, model_dir: str | Path, providers: Optional[Sequence[str]] = None):
        import onnxruntime as ort

        self.model_dir = Path(model_dir)
        self.spec = load_model_json(self.model_dir)
        engine = self.spec["engine"]
        if engine.get("format") != "onnx":
            raise ValueError(f"{self.model_dir}/model.json: engine format is {engine.get('format')!r}, not 'onnx'")
        path = self.model_dir / engine["file"]
        if not path.is_file():
            raise FileNotFoundError(f"{path}: engine file named in model.json is missing")
        self.session = ort.InferenceSession(str(path), providers=list(providers or ["CPUExecutionProvider"]))
        self.input_names = [d["name"] for d in self.spec["inputs"]]
        self.classes: List[str] = list(self.spec["classes"])
        self._config_text = json.dumps(self.spec)

    def __call__(self, images, masks=None) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """images (B,3,H,W) [masks (B,H,W) bool] as torch tensors or numpy arrays -> torch (boxes, scores, labels)."""
        validate_engine_inputs(self.spec, images, masks)
        feeds = {"images": _to_numpy(images)}
        if "masks" in self.input_names:
            feeds["masks"] = _to_numpy(masks)
        boxes, scores, labels = (torch.from_numpy(o) for o in self.session.run(["boxes", "scores", "labels"], feeds))
        check_finite_outputs(boxes, scores, self.spec["dtype"], what=f"{self.model_dir} engine output")
        return boxes, scores, labels

    def detect(self, images: Union[np.ndarray, Sequence[np.ndarray]], order: str = "bgr"
               ) -> Union[Detections, List[Detections]]:
        """uint8 HxWx3 image(s) (``order`` "bgr" as cv2.imread gives, or "rgb") -> Detections in
        original-image pixels, or a list of them for a list of images. Each image is its own engine
        call (a static batch > 1 gets the image repeated), so no result depends on another image."""
        single = isinstance(images, np.ndarray)
        results = [self._detect_one(image, order) for image in ([images] if single else list(images))]
        return results[0] if single else results

    def _detect_one(self, image: np.ndarray, order: str) -> Detections:
        batch, masks, metas = runtime.preprocess([image], self._config_text, order)
        geometry = self.spec["input"]
        repeat = geometry["batch"] if "batch" in geometry else geometry["min_batch"]  # the smallest batch it takes
        images = torch.from_numpy(batch).to(getattr(torch, self.spec["dtype"])).expand(repeat, -1, -1, -1)
        if masks is not None:
            masks = torch.from_numpy(masks).expand(repeat, -1, -1)
        boxes, scores, labels = self(images, masks)
        arrays = runtime.postprocess(boxes[0].float().numpy(), scores[0].float().numpy(), labels[0].numpy(),
                                     metas[0], self._config_text, len(self.classes))
        return Detections(*arrays, self.classes)


def _to_numpy(array) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        if array.dtype == torch.bfloat16:
            raise ValueError("onnxruntime's Python API takes no bfloat16 numpy arrays; export float16/float32")
        return array.detach().cpu().contiguous().numpy()
    return np.ascontiguousarray(array)
