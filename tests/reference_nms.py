"""Reference implementations shared by the runtime tests (the C++ runtime and its probe are
checked against these)."""
from __future__ import annotations

import torch
import torchvision


def reference_soft_nms(boxes, scores, iou_thr, method, sigma, min_score):
    """mmcv soft_nms semantics, written plainly in fp64: pick the best remaining box, decay the rest
    (method "linear" or "gaussian"). Returns (kept indices, their scores in fp64)."""
    boxes = boxes.double()
    scores = scores.double().clone()
    remaining = list(range(len(scores)))
    keep, kept_scores = [], []
    while remaining:
        best = max(remaining, key=lambda i: scores[i].item())
        keep.append(best)
        kept_scores.append(scores[best].item())
        remaining.remove(best)
        if not remaining:
            break
        rest = torch.tensor(remaining)
        ious = torchvision.ops.box_iou(boxes[best:best + 1], boxes[rest])[0]
        if method == "linear":
            weight = torch.where(ious >= iou_thr, 1 - ious, torch.ones_like(ious))
        else:
            weight = torch.exp(-(ious ** 2) / sigma)
        scores[rest] *= weight
        remaining = [i for i in remaining if scores[i] >= min_score]
    return torch.tensor(keep, dtype=torch.long), torch.tensor(kept_scores, dtype=torch.float64)
