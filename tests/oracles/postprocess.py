"""Test oracle, independent of the runtime: mmdetection's Co-DINO post-processing written in numpy/torch; the production code is the C++ core (cpp/core) through codetr.postprocess.

mmdetection's Co-DINO test_cfg post-processing after the model (the reference the C++
runtime is tested against).

Per image, on the model's (K, 4) xyxy boxes in input pixels, (K,) scores, (K,) labels, exactly as
CoDINOHead._predict_by_feat_single continues after its top-k:
1. score_thr > 0: keep scores > score_thr;
2. rescale: boxes / (w_scale, h_scale, w_scale, h_scale) -> original-image pixels (mmdet rescales
   BEFORE NMS; it does not clip again afterwards - boxes were clamped to img_shape, so they lie
   within the original image up to float rounding);
3. mmcv batched_nms: class-aware via per-class coordinate offsets label * (max coordinate + 1),
   then nms (suppress IoU > thr, torchvision semantics) or soft_nms (mmcv's CPU algorithm:
   repeatedly take the highest current score, decay the rest by 'linear' 1 - IoU when
   IoU >= thr / 'gaussian' exp(-IoU^2 / sigma) / 'naive' 0 when IoU >= thr, drop scores
   below min_score by swapping with the last box); scores become the decayed ones, order is the
   selection order;
4. keep the first max_per_img.
Outputs holding NaN/inf (a float16 overflow) raise codetr.precision.NonFiniteOutputError instead
of being sorted and suppressed silently.
All box/score arithmetic in float32 like mmcv's CPU kernels (offset 0: areas are (x2-x1)*(y2-y1)).
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch

from codetr.precision import check_finite_outputs
from codetr.presets import PostprocessConfig, Preset, get_preset


def _iou_one_to_many(box: np.ndarray, area: np.float32, boxes: np.ndarray, areas: np.ndarray) -> np.ndarray:
    xx1 = np.maximum(box[0], boxes[:, 0])
    yy1 = np.maximum(box[1], boxes[:, 1])
    xx2 = np.minimum(box[2], boxes[:, 2])
    yy2 = np.minimum(box[3], boxes[:, 3])
    w = np.maximum(np.float32(0), xx2 - xx1)
    h = np.maximum(np.float32(0), yy2 - yy1)
    inter = w * h
    return inter / (area + areas - inter)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Hard NMS (mmcv/torchvision semantics): indices kept, by descending score."""
    b = boxes.detach().cpu().float().numpy()
    s = scores.detach().cpu().float().numpy()
    order = np.argsort(-s, kind="stable")
    areas = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    alive = np.ones(len(order), dtype=bool)
    keep = []
    for n, i in enumerate(order):
        if not alive[n]:
            continue
        keep.append(i)
        rest = order[n + 1:]
        ovr = _iou_one_to_many(b[i], areas[i], b[rest], areas[rest])
        alive[n + 1:] &= ~(ovr > np.float32(iou_threshold))
    return torch.as_tensor(np.array(keep, dtype=np.int64))


def soft_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, sigma: float = 0.5,
             min_score: float = 1e-3, method: str = "linear") -> Tuple[torch.Tensor, torch.Tensor]:
    """mmcv.ops.soft_nms (CPU kernel semantics). Returns (kept indices in selection order,
    their decayed scores)."""
    if method not in ("naive", "linear", "gaussian"):
        raise ValueError(f"soft_nms method must be 'naive', 'linear' or 'gaussian', got {method!r}")
    b = boxes.detach().cpu().float().numpy().copy()
    sc = scores.detach().cpu().float().numpy().copy()
    areas = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    inds = np.arange(len(sc))
    thr, sig, min_s = np.float32(iou_threshold), np.float32(sigma), np.float32(min_score)
    n = len(sc)
    out_scores = []
    i = 0
    while i < n:
        m = i + int(np.argmax(sc[i:n]))  # first maximum, as the kernel's strict '<' scan finds
        for arr in (b, sc, areas, inds):
            arr[[i, m]] = arr[[m, i]]
        out_scores.append(sc[i])
        if i + 1 < n:
            ovr = _iou_one_to_many(b[i], areas[i], b[i + 1:n], areas[i + 1:n])
            if method == "linear":
                weight = np.where(ovr >= thr, np.float32(1) - ovr, np.float32(1)).astype(np.float32)
            elif method == "gaussian":
                weight = np.exp(-(ovr * ovr) / sig).astype(np.float32)
            else:
                weight = np.where(ovr >= thr, np.float32(0), np.float32(1)).astype(np.float32)
            sc[i + 1:n] = sc[i + 1:n] * weight
            # drop boxes below min_score by moving the current last box into their slot
            pos = i + 1
            while pos < n:
                if sc[pos] < min_s:
                    last = n - 1
                    for arr in (b, sc, areas, inds):
                        arr[pos] = arr[last]
                    n -= 1
                else:
                    pos += 1
        i += 1
    return torch.as_tensor(inds[:n].astype(np.int64)), torch.as_tensor(np.array(out_scores, dtype=np.float32))


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor,
                cfg: PostprocessConfig) -> Tuple[torch.Tensor, torch.Tensor]:
    """mmcv.ops.batched_nms (class-aware): -> (kept indices, their final scores)."""
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.float32)
    boxes = boxes.float()
    offsets = labels.to(boxes) * (boxes.max() + torch.tensor(1).to(boxes))
    shifted = boxes + offsets[:, None]
    if cfg.nms_type == "soft_nms":
        return soft_nms(shifted, scores, cfg.iou_threshold, cfg.sigma, cfg.min_score, cfg.soft_nms_method)
    if cfg.nms_type == "nms":
        keep = nms(shifted, scores, cfg.iou_threshold)
        return keep, scores.float()[keep]
    raise ValueError(f"batched_nms needs nms_type 'nms' or 'soft_nms', got {cfg.nms_type!r}")


def postprocess_single(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor,
                       scale_factor: Sequence[float], cfg: PostprocessConfig) -> Dict[str, torch.Tensor]:
    """One image: model outputs (K,4) / (K,) / (K,) -> dict of bboxes (original pixels), scores, labels."""
    if boxes.dim() != 2 or boxes.shape[-1] != 4 or scores.shape != boxes.shape[:1] or labels.shape != scores.shape:
        raise ValueError(f"expected boxes (K,4), scores (K,), labels (K,), got {tuple(boxes.shape)}, "
                         f"{tuple(scores.shape)}, {tuple(labels.shape)}")
    boxes, scores, labels = boxes.detach().cpu().float(), scores.detach().cpu().float(), labels.detach().cpu().long()
    check_finite_outputs(boxes, scores)
    if cfg.score_thr > 0:
        keep = scores > cfg.score_thr
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    boxes = boxes / torch.tensor(list(scale_factor), dtype=torch.float32).repeat(2)
    if cfg.nms_type != "none" and boxes.numel() > 0:
        keep, scores = batched_nms(boxes, scores, labels, cfg)
        boxes, labels = boxes[keep], labels[keep]
    k = cfg.max_per_img
    return {"bboxes": boxes[:k], "scores": scores[:k], "labels": labels[:k]}


def postprocess(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, metas: Sequence[Dict],
                preset: "str | Preset") -> List[Dict[str, torch.Tensor]]:
    """Batch version: model outputs (B,K,4)/(B,K)/(B,K) and the metas of ``codetr.preprocess``."""
    cfg = get_preset(preset).postprocess
    if len(metas) != boxes.shape[0]:
        raise ValueError(f"{len(metas)} metas for a batch of {boxes.shape[0]}")
    return [postprocess_single(boxes[i], scores[i], labels[i], metas[i]["scale_factor"], cfg)
            for i in range(boxes.shape[0])]
