"""Co-DINO in plain PyTorch: backbones, neck, transformer, head, detector and ``build_model``."""
from __future__ import annotations

from typing import Optional

import torch

from codetr.models.codino import CoDINO
from codetr.presets import COCO_CLASSES, Preset, get_preset

def build_model(preset: "str | Preset", checkpoint=None, device: "str | torch.device" = "cpu",
                dtype: torch.dtype = torch.float32, msda_impl: Optional[str] = None,
                strict: bool = True) -> CoDINO:
    """Build an eval-mode Co-DINO for ``preset`` (name or :class:`Preset`).

    checkpoint: path to an mmdet .pth / bare state_dict .pth / .safetensors, or a state_dict.
    device 'meta' builds without allocating weights (shape inspection).
    msda_impl: 'op' (the C++/CUDA op, default; ``import codetr`` loads it) or 'pytorch'
    (grid_sample). Change later with ``codetr.nn.set_msda_impl(model, impl)``.
    ``model.classes`` holds the class names from the checkpoint, else the preset's (COCO-80).
    """
    from codetr.checkpoint import load_checkpoint
    from codetr.nn import set_msda_impl

    preset = get_preset(preset)
    with torch.device("meta") if str(device) == "meta" else torch.device("cpu"):
        model = CoDINO(preset.model)
    classes = None
    if checkpoint is not None:
        classes = load_checkpoint(model, checkpoint, strict=strict)
    if classes is not None and len(classes) != preset.model.num_classes:
        raise ValueError(f"checkpoint has {len(classes)} class names but preset {preset.name} has "
                         f"{preset.model.num_classes} classes")
    model.classes = list(classes if classes is not None else preset.classes)
    model.preset = preset
    if str(device) != "meta":
        model = model.to(device=device, dtype=dtype)
    set_msda_impl(model, msda_impl or "op")
    set_cuda_fusions(model, True)
    return model.eval().requires_grad_(False)


def set_cuda_fusions(model: torch.nn.Module, enabled: bool) -> torch.nn.Module:
    """Turn the CUDA-only fused paths on or off: Swin window attention as one kernel
    (``torch.ops.codetr.window_attention``: float16/bfloat16, 32-channel heads, 4x4/8x8/12x12
    windows) and the transformer FFNs' bias + ReLU in the GEMM epilogue. Either applies only to CUDA
    tensors; build_model enables them. ONNX export turns them off
    (neither is an ONNX op). Returns ``model``."""
    for module in model.modules():
        if hasattr(module, "cuda_fusions"):
            module.cuda_fusions = enabled
    return model


def min_dynamic_input_size(preset: "str | Preset") -> int:
    """Smallest H or W a dynamic-shape torch.export of ``preset`` can cover;
    the example input must be at least this large too. torch specialises size-1 dimensions, so
    every level must keep >= 2 pixels (ResNet: the stride-64 level -> 96 px) and, for Swin,
    >= 2 attention windows per axis at stride 32 (32 * (window + 1) px)."""
    backbone = get_preset(preset).model.backbone
    if backbone.type == "swin":
        return 32 * (backbone.window_size + 1)
    return 3 * 32


__all__ = ["CoDINO", "build_model", "min_dynamic_input_size", "COCO_CLASSES"]
