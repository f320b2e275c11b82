"""Test oracle, independent of the runtime: mmdetection's test-time pre-processing written in numpy (bit-exact with cv2.resize), checked against cv2 and mmdet fixtures; the production code is the C++ core (cpp/core) through codetr.preprocess.

mmdetection's test-time pre-processing for a preset, in numpy/torch (no OpenCV needed).

Per image (uint8 HxWx3 BGR, as cv2.imread / mmcv load it):
1. Resize: keep_ratio -> mmcv.imrescale: s = min(max(scale)/max(h, w), min(scale)/min(h, w)),
   new size (int(w*s + 0.5), int(h*s + 0.5)); else exactly ``scale`` (w, h). Pixels as
   cv2.resize(INTER_LINEAR) computes them on uint8 (:func:`resize_bilinear_u8`).
   scale_factor = (new_w / w, new_h / h) as mmdet stores it.
2. LSJ presets (pad_stage "before_normalize"): mmcv Pad to the fixed size, bottom/right, with the
   uint8 pad value (114); mmcv's Pad sets img_shape to the padded size.
3. DetDataPreprocessor: BGR -> RGB, float, (x - mean) / std, then the batch is padded bottom/right
   to a common size (multiple of pad_size_divisor, or a given size) with pad_value (0) AFTER
   normalisation.
4. Mask rule: "padding" -> bool mask, True outside each image's img_shape; "none" -> None.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from codetr.presets import Preset, get_preset

_COEF_BITS = 11  # OpenCV INTER_RESIZE_COEF_BITS: fixed-point interpolation weights
_COEF_SCALE = 1 << _COEF_BITS


def rescale_size(w: int, h: int, scale: Tuple[int, int]) -> Tuple[Tuple[int, int], float]:
    """mmcv.rescale_size for a (long, short) tuple: -> ((new_w, new_h), scale factor)."""
    factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
    return (int(w * float(factor) + 0.5), int(h * float(factor) + 0.5)), factor


def _linear_taps(in_size: int, out_size: int, clamp_coords: bool):
    """OpenCV's INTER_LINEAR source indices and 11-bit weights along one axis.

    Half-pixel centres: f = (d + 0.5) * (in / out) - 0.5 computed in double, stored as float.
    Columns clamp the coordinate (weight (1, 0) outside the image); rows keep the weights and
    clamp only the row index - that is how cv::resize treats the two axes.
    """
    scale = 1.0 / (out_size / in_size)
    f = ((np.arange(out_size, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    s = np.floor(f).astype(np.int64)
    f = (f - s.astype(np.float32)).astype(np.float32)
    if clamp_coords:
        outside = (s < 0) | (s >= in_size - 1)
        f[outside] = 0
    w0 = np.rint((np.float32(1) - f) * np.float32(_COEF_SCALE)).astype(np.int64)
    w1 = np.rint(f * np.float32(_COEF_SCALE)).astype(np.int64)
    return np.clip(s, 0, in_size - 1), np.clip(s + 1, 0, in_size - 1), w0, w1


def resize_bilinear_u8(img: np.ndarray, out_w: int, out_h: int) -> np.ndarray:
    """cv2.resize(img, (out_w, out_h), interpolation=cv2.INTER_LINEAR) for uint8 HxW[xC], bit-exact
    with OpenCV's fixed-point path: horizontal pass in int32 with 11-bit weights, vertical pass
    as OpenCV's SIMD kernel does it: (((r0 >> 4) * b0 >> 16) + ((r1 >> 4) * b1 >> 16) + 2) >> 2.
    An exact 2x downscale is an average of 2x2 blocks (OpenCV switches to INTER_AREA there)."""
    if img.dtype != np.uint8 or img.ndim not in (2, 3):
        raise ValueError(f"resize_bilinear_u8 expects a uint8 HxW or HxWxC array, got {img.dtype} {img.shape}")
    if out_w <= 0 or out_h <= 0:
        raise ValueError(f"output size must be positive, got {(out_w, out_h)}")
    H, W = img.shape[:2]
    if (W, H) == (out_w, out_h):
        return img.copy()
    src = img.astype(np.int64)
    if W == 2 * out_w and H == 2 * out_h:
        total = src[0::2, 0::2] + src[0::2, 1::2] + src[1::2, 0::2] + src[1::2, 1::2]
        return ((total + 2) >> 2).astype(np.uint8)
    trailing = (1,) * (img.ndim - 2)
    x0, x1, a0, a1 = _linear_taps(W, out_w, clamp_coords=True)
    y0, y1, b0, b1 = _linear_taps(H, out_h, clamp_coords=False)
    rows = src[:, x0] * a0.reshape((1, -1) + trailing) + src[:, x1] * a1.reshape((1, -1) + trailing)
    b0 = b0.reshape((-1, 1) + trailing)
    b1 = b1.reshape((-1, 1) + trailing)
    out = ((((rows[y0] >> 4) * b0) >> 16) + (((rows[y1] >> 4) * b1) >> 16) + 2) >> 2
    return np.clip(out, 0, 255).astype(np.uint8)


def preprocess(images: Sequence[np.ndarray], preset: "str | Preset",
               pad_size_divisor: Optional[int] = None, pad_size: Optional[Tuple[int, int]] = None,
               device: "str | torch.device" = "cpu", dtype: torch.dtype = torch.float32
               ) -> Tuple[torch.Tensor, Optional[torch.Tensor], List[Dict]]:
    """Images (uint8 HxWx3 BGR) -> (batch (B,3,H,W) normalised, masks (B,H,W) bool or None, metas).

    ``pad_size_divisor`` / ``pad_size`` override the preset's batch padding (e.g. 1 for mmdet's
    exact non-LSJ pipeline, or a static engine's (H, W)). metas: ori_shape (h, w), img_shape
    (h, w) of the valid region, scale_factor (w_scale, h_scale), pad_shape (h, w) of the batch.
    """
    preset = get_preset(preset)
    p = preset.pipeline
    if len(images) == 0:
        raise ValueError("preprocess needs at least one image")
    resized, metas = [], []
    for i, img in enumerate(images):
        if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"image {i}: expected a uint8 HxWx3 BGR array, got "
                             f"{getattr(img, 'dtype', type(img))} {getattr(img, 'shape', '')}")
        h, w = img.shape[:2]
        if p.keep_ratio:
            (new_w, new_h), _ = rescale_size(w, h, p.resize_scale)
        else:
            new_w, new_h = p.resize_scale
        out = resize_bilinear_u8(img, new_w, new_h)
        meta = {"ori_shape": (h, w), "img_shape": (new_h, new_w), "scale_factor": (new_w / w, new_h / h)}
        if p.pad_stage == "before_normalize":
            ph, pw = p.pad_size
            if new_h > ph or new_w > pw:
                raise ValueError(f"image {i}: resized {(new_h, new_w)} exceeds the pad size {(ph, pw)}")
            padded = np.full((ph, pw, 3), int(p.pad_value), dtype=np.uint8)
            padded[:new_h, :new_w] = out
            out = padded
            meta["img_shape"] = (ph, pw)
        resized.append(out)
        metas.append(meta)

    mean = torch.tensor(p.mean, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(p.std, dtype=torch.float32).view(3, 1, 1)
    tensors = []
    for img in resized:
        t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)
        if p.bgr_to_rgb:
            t = t[[2, 1, 0]]
        tensors.append((t.float() - mean) / std)

    max_h = max(t.shape[1] for t in tensors)
    max_w = max(t.shape[2] for t in tensors)
    if pad_size is not None:
        batch_h, batch_w = pad_size
        if batch_h < max_h or batch_w < max_w:
            raise ValueError(f"pad_size {pad_size} is smaller than the largest image {(max_h, max_w)}")
    else:
        div = pad_size_divisor if pad_size_divisor is not None else (p.pad_size_divisor or 1)
        batch_h, batch_w = -(-max_h // div) * div, -(-max_w // div) * div
    pad_value = 0.0 if p.pad_stage == "before_normalize" else p.pad_value
    batch = torch.full((len(tensors), 3, batch_h, batch_w), pad_value, dtype=torch.float32)
    masks = torch.ones((len(tensors), batch_h, batch_w), dtype=torch.bool)
    for i, t in enumerate(tensors):
        batch[i, :, :t.shape[1], :t.shape[2]] = t
        vh, vw = metas[i]["img_shape"]
        masks[i, :vh, :vw] = False
        metas[i]["pad_shape"] = (batch_h, batch_w)
    batch = batch.to(device=device, dtype=dtype)
    return batch, (masks.to(device) if p.mask == "padding" else None), metas
