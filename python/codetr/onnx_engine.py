"""Run an exported ONNX model dir (model.onnx + model.json) with onnxruntime, inputs checked first.

    engine = OnnxEngine("out/")                # CPUExecutionProvider by default
    boxes, scores, labels = engine(images, masks)

Every call validates the inputs against model.json (:func:`codetr.modeljson.validate_engine_inputs`):
wrong rank/dtype, a batch or H/W outside the exported range, or a dynamic H/W that is not a
multiple of 32 raise ValueError naming the input and dimension, instead of an onnxruntime shape
error (or a silently wrong result) deep inside the graph. Outputs holding NaN/inf (a float16
overflow) raise :class:`codetr.precision.NonFiniteOutputError`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np
import torch

from codetr.modeljson import load_model_json, validate_engine_inputs
from codetr.precision import check_finite_outputs


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

    def __call__(self, images, masks=None) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """images (B,3,H,W) [masks (B,H,W) bool] as torch tensors or numpy arrays -> torch (boxes, scores, labels)."""
        validate_engine_inputs(self.spec, images, masks)
        feeds = {"images": _to_numpy(images)}
        if "masks" in self.input_names:
            feeds["masks"] = _to_numpy(masks)
        boxes, scores, labels = (torch.from_numpy(o) for o in self.session.run(["boxes", "scores", "labels"], feeds))
        check_finite_outputs(boxes, scores, self.spec["dtype"], what=f"{self.model_dir} engine output")
        return boxes, scores, labels


def _to_numpy(array) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        if array.dtype == torch.bfloat16:
            raise ValueError("onnxruntime's Python API takes no bfloat16 numpy arrays; export float16/float32")
        return array.detach().cpu().contiguous().numpy()
    return np.ascontiguousarray(array)
