"""Reduced precision (float16 / bfloat16): the non-finite output check and the comparison of a
reduced-precision run with float32 on the same model and input.

float16 stops at 65504. The model keeps the parts known to overflow in float32 (Swin residual
stream and window-attention logits: :mod:`codetr.models.swin`; MSDA locations/weights, box
refinement, classification logits: already float32), but a checkpoint can still push one of the
float16 matmuls past that range. The result is inf/NaN in boxes or scores, which NMS and top-k
would pass on silently. :func:`check_finite_outputs` turns that into an error naming the cause and
the fix; the Python post-processing and the ONNX engine call it, the C++ runtime checks every engine
batch with the same rule and message (``codetr::core::check_finite``). It runs outside the model on purpose: an
export-friendly forward has no data-dependent raise.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch

from codetr._native import runtime

FLOAT16_MAX = 65504.0


class NonFiniteOutputError(RuntimeError):
    """Model outputs hold NaN or inf (for a float16 model: an overflow); the message says what to do."""


def nonfinite_message(what: str, bad: int, total: int, dtype: Optional[str]) -> str:
    """The error text, written once in the C++ runtime core (codetr::core::nonfinite_message)."""
    return runtime.nonfinite_message(what, bad, total, dtype or "")


def _dtype_name(dtype) -> Optional[str]:
    if dtype is None or isinstance(dtype, str):
        return dtype
    return str(dtype).replace("torch.", "")


def check_finite_outputs(boxes: torch.Tensor, scores: torch.Tensor, dtype=None, what: str = "model output") -> None:
    """Raise :class:`NonFiniteOutputError` when ``boxes`` or ``scores`` hold NaN/inf.

    ``dtype``: the model's compute dtype (torch.dtype or its name) for the advice in the message.
    One reduction per tensor (a device sync on CUDA): call it on outputs, not inside the model.
    """
    for name, t in (("boxes", boxes), ("scores", scores)):
        finite = torch.isfinite(t)
        if not bool(finite.all()):
            bad = int((~finite).sum())
            raise NonFiniteOutputError(nonfinite_message(f"{what} '{name}'", bad, t.numel(), _dtype_name(dtype)))


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, 4) x (M, 4) xyxy -> (N, M) IoU."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(-1)
    return inter / (area_a[:, None] + area_b[None, :] - inter).clamp(min=1e-9)


def match_detections(ref_boxes: torch.Tensor, ref_labels: torch.Tensor, out_boxes: torch.Tensor,
                     out_labels: torch.Tensor, iou_threshold: float, *, ref_scores: Optional[torch.Tensor] = None,
                     out_scores: Optional[torch.Tensor] = None,
                     max_score_diff: Optional[float] = None) -> List[Tuple[int, int]]:
    """Greedy one-to-one matching of two detection lists: each reference detection in the given
    order (pass them by descending score) takes the unused other detection of the same label with
    the highest IoU, if that IoU >= ``iou_threshold`` (and, with ``max_score_diff``, their scores
    differ by at most that). Returns (reference index, other index) pairs."""
    iou = box_iou(ref_boxes.double(), out_boxes.double())
    candidates = (ref_labels[:, None] == out_labels[None, :]) & (iou >= iou_threshold)
    if max_score_diff is not None:
        candidates &= (ref_scores[:, None].double() - out_scores[None, :].double()).abs() <= max_score_diff
    iou = torch.where(candidates, iou, torch.full_like(iou, -1.0))
    used = torch.zeros(out_boxes.shape[0], dtype=torch.bool)
    matched = []
    for r in range(ref_boxes.shape[0]):
        if not used.numel():
            break
        row = iou[r].masked_fill(used, -1.0)
        j = int(row.argmax())
        if row[j] >= iou_threshold:
            used[j] = True
            matched.append((r, j))
    return matched


def compare_detections(ref: Sequence[torch.Tensor], out: Sequence[torch.Tensor], topk: int = 100,
                       iou_threshold: float = 0.9) -> Dict[str, object]:
    """Compare one model's outputs in reduced precision (``out``) with float32 (``ref``).

    ``ref`` / ``out``: (boxes (B,K,4) xyxy, scores (B,K) sorted descending, labels (B,K)) of the
    same model on the same input, as the model returns them. Per image, then the worst image:

    * ``scores_max_abs_diff``: max over ranks of |score_ref[r] - score_out[r]| (all K ranks: the
      two sorted score lists, so a swap of two close detections costs only their difference);
    * ``topk_agreement``: share of the reference's top-``topk`` detections matched by one of the
      other run's top-``topk`` with the same label and IoU >= ``iou_threshold`` (greedy one-to-one
      in reference score order, best IoU first);
    * ``boxes_rel_err``: over the matched pairs, max |coordinate difference| / max |reference
      coordinate| (0 when nothing matched: read it with the agreement);
    * ``matched_scores_max_abs_diff``: max |score difference| over the matched pairs;
    * ``finite``: no NaN/inf in ``out``'s boxes and scores (the metrics are meaningless otherwise).
    """
    rb_all, rs_all, rl_all = (t.detach().cpu() for t in ref)
    ob_all, os_all, ol_all = (t.detach().cpu() for t in out)
    if rb_all.shape != ob_all.shape or rs_all.shape != os_all.shape:
        raise ValueError(f"output shapes differ: {tuple(rb_all.shape)} vs {tuple(ob_all.shape)}")
    finite = bool(torch.isfinite(ob_all).all() and torch.isfinite(os_all).all())
    per_image = []
    for i in range(rb_all.shape[0]):
        rb, rs, rl = rb_all[i].double(), rs_all[i].double(), rl_all[i]
        ob, os_, ol = ob_all[i].double(), os_all[i].double(), ol_all[i]
        k = min(topk, rb.shape[0])
        matched = match_detections(rb[:k], rl[:k], ob[:k], ol[:k], iou_threshold)
        scale = float(rb[:k].abs().max().clamp(min=1e-12))
        box_err = max((float((rb[r] - ob[j]).abs().max()) / scale for r, j in matched), default=0.0)
        score_err = max((abs(float(rs[r] - os_[j])) for r, j in matched), default=0.0)
        per_image.append({
            "scores_max_abs_diff": float((rs - os_).abs().max()),
            "boxes_rel_err": box_err,
            "matched_scores_max_abs_diff": score_err,
            "topk_agreement": len(matched) / k if k else 1.0,
        })
    worst = {
        "scores_max_abs_diff": max(p["scores_max_abs_diff"] for p in per_image),
        "boxes_rel_err": max(p["boxes_rel_err"] for p in per_image),
        "matched_scores_max_abs_diff": max(p["matched_scores_max_abs_diff"] for p in per_image),
        "topk_agreement": min(p["topk_agreement"] for p in per_image),
    }
    return {"finite": finite, "topk": topk, "iou_threshold": iou_threshold, **worst, "per_image": per_image}
