"""mmdetection's Co-DINO test_cfg post-processing, run by the C++ runtime core (cpp/core: the same
code as codetr-detect and codetr.Detector): score_thr, rescale to original pixels, class-aware
NMS / soft-NMS (mmcv semantics), max_per_img; no clip (mmdet's default). Outputs holding NaN/inf
(a float16 overflow) raise an error naming the overflow."""
from __future__ import annotations

from typing import Dict, List, Sequence

import torch

from codetr._native import runtime
from codetr.modeljson import pipeline_json
from codetr.precision import check_finite_outputs
from codetr.presets import Preset, get_preset


def postprocess_single(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, meta: Dict,
                       preset: "str | Preset", dtype: str = "float32") -> Dict[str, torch.Tensor]:
    """One image: model outputs (K,4) / (K,) / (K,) and its preprocess meta -> dict of bboxes
    (original pixels), scores, labels. ``dtype`` (the model's) words the NaN/inf error."""
    check_finite_outputs(boxes, scores, dtype)
    preset = get_preset(preset)
    spec = pipeline_json(preset.to_metadata(), dtype=dtype)
    b, s, l = runtime.postprocess(boxes.detach().float().cpu().numpy(), scores.detach().float().cpu().numpy(),
                                  labels.detach().long().cpu().numpy(), meta, spec, preset.model.num_classes)
    return {"bboxes": torch.from_numpy(b), "scores": torch.from_numpy(s), "labels": torch.from_numpy(l)}


def postprocess(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, metas: Sequence[Dict],
                preset: "str | Preset", dtype: str = "float32") -> List[Dict[str, torch.Tensor]]:
    """Batch version: model outputs (B,K,4)/(B,K)/(B,K) and the metas of ``codetr.preprocess``."""
    if len(metas) != boxes.shape[0]:
        raise ValueError(f"{len(metas)} metas for a batch of {boxes.shape[0]}")
    return [postprocess_single(boxes[i], scores[i], labels[i], metas[i], preset, dtype) for i in range(boxes.shape[0])]
