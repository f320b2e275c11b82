"""mmdetection's test-time preprocessing for a preset, run by the C++ runtime core (cpp/core: the
same code as codetr-detect and codetr.Detector): mmcv keep-ratio resize bit-exact with
cv2.resize(INTER_LINEAR), BGR->RGB, (x - mean) / std, padding bottom/right (before or after
normalisation, per preset), padding mask. A batch is padded to its largest image (mmdet's rule)."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from codetr._native import runtime
from codetr.modeljson import pipeline_json
from codetr.presets import Preset, get_preset


def preprocess(images: Sequence[np.ndarray], preset: "str | Preset", pad_size_divisor: Optional[int] = None,
               pad_size: Optional[Tuple[int, int]] = None, device: "str | torch.device" = "cpu",
               dtype: torch.dtype = torch.float32, order: str = "bgr"
               ) -> Tuple[torch.Tensor, Optional[torch.Tensor], List[Dict]]:
    """Images (uint8 HxWx3, BGR unless ``order='rgb'``) -> (batch (B,3,H,W) normalised, masks
    (B,H,W) bool (True = padding) or None, metas).

    ``pad_size_divisor`` / ``pad_size`` override the preset's batch padding. metas: ori_shape (h, w),
    img_shape (h, w) of the resized image, scale_factor (w_scale, h_scale), pad_shape (h, w).
    """
    spec = pipeline_json(get_preset(preset).to_metadata(), pad_size_divisor=pad_size_divisor, pad_size=pad_size)
    batch, masks, metas = runtime.preprocess(list(images), spec, order)
    images_t = torch.from_numpy(batch).to(device=device, dtype=dtype)
    return images_t, (torch.from_numpy(masks).to(device) if masks is not None else None), metas


def resize_bilinear_u8(image: np.ndarray, out_w: int, out_h: int) -> np.ndarray:
    """cv2.resize(image, (out_w, out_h), interpolation=cv2.INTER_LINEAR) for uint8 HxWx3, bit-exact
    (the runtime's resize)."""
    return runtime.resize_u8(np.ascontiguousarray(image), out_h, out_w)
