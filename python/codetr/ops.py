"""Multi-scale deformable attention (MSDA): the custom op and its pure-PyTorch formulation.

`ms_deform_attn` calls `torch.ops.codetr.ms_deform_attn` (C++/CUDA kernels in csrc/).
`ms_deform_attn_pytorch` is the same function written with `F.grid_sample`; it is the
reference for tests and the lowering used for plugin-free ONNX export.

Shapes (mmcv / Deformable-DETR semantics):
  value              (B, S, H, D)        S = sum(h_l * w_l)
  spatial_shapes     L pairs (h_l, w_l)  python ints or SymInts (host side: no device sync)
  sampling_locations (B, Q, H, L, P, 2)  normalised (x, y); pixel = loc * size - 0.5
  attention_weights  (B, Q, H, L, P)
  -> output          (B, Q, H * D)
"""
from __future__ import annotations

from typing import Sequence, Tuple

import torch
import torch.nn.functional as F

SpatialShapes = Sequence[Tuple[int, int]]


def flatten_spatial_shapes(spatial_shapes: SpatialShapes | torch.Tensor) -> list:
    """[(h0, w0), (h1, w1), ...] or an (L, 2) tensor -> [h0, w0, h1, w1, ...] (the op's argument)."""
    if isinstance(spatial_shapes, torch.Tensor):
        if spatial_shapes.dim() != 2 or spatial_shapes.size(1) != 2:
            raise ValueError(f"spatial_shapes must be (L, 2), got {tuple(spatial_shapes.shape)}")
        return [int(v) for v in spatial_shapes.reshape(-1).tolist()]
    flat = []
    for hw in spatial_shapes:
        h, w = hw
        flat += [h, w]
    return flat


def ms_deform_attn_pytorch(value: torch.Tensor, spatial_shapes: SpatialShapes,
                           sampling_locations: torch.Tensor,
                           attention_weights: torch.Tensor) -> torch.Tensor:
    """MSDA with grid_sample (bilinear, zeros padding, align_corners=False)."""
    B, _, H, D = value.shape
    _, Q, _, L, P, _ = sampling_locations.shape
    sizes = [h * w for h, w in spatial_shapes]
    value_list = value.split(sizes, dim=1)
    grids = 2 * sampling_locations - 1
    sampled = []
    for level, (h, w) in enumerate(spatial_shapes):
        # (B, h*w, H, D) -> (B*H, D, h, w); contiguous because torch 2.11's CPU grid_sample
        # returns NaN in fp16 for a strided input
        v = value_list[level].flatten(2).transpose(1, 2).reshape(B * H, D, h, w).contiguous()
        # (B, Q, H, P, 2) -> (B*H, Q, P, 2)
        g = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        sampled.append(F.grid_sample(v, g.to(v.dtype), mode="bilinear",
                                     padding_mode="zeros", align_corners=False))
    # (B, Q, H, L, P) -> (B*H, 1, Q, L*P)
    weights = attention_weights.transpose(1, 2).reshape(B * H, 1, Q, L * P)
    out = (torch.stack(sampled, dim=-2).flatten(-2) * weights.to(value.dtype)).sum(-1)
    return out.view(B, H * D, Q).transpose(1, 2).contiguous()


def ms_deform_attn(value: torch.Tensor, spatial_shapes: SpatialShapes,
                   sampling_locations: torch.Tensor,
                   attention_weights: torch.Tensor) -> torch.Tensor:
    """MSDA through the C++/CUDA custom op `torch.ops.codetr.ms_deform_attn` (differentiable).

    dtypes: value float32/float16/bfloat16/float64; sampling_locations and attention_weights share
    one dtype, value's or float32 (float32 locations keep sub-pixel precision for half values:
    rounding them to 16 bits moves samples by up to ~0.1 px on a 288-px level). Coordinates and
    sums are computed in float32 (float64 for float64 values); the output has value's dtype.
    spatial_shapes: [(h, w), ...] (ints or SymInts) or an (L, 2) tensor (read on the host).
    """
    from codetr import _C  # noqa: F401  (loads the op library once)
    return torch.ops.codetr.ms_deform_attn(value, flatten_spatial_shapes(spatial_shapes),
                                           sampling_locations, attention_weights)


# Window sizes and head dim of the fused CUDA window-attention kernel
# (csrc/window_attention/window_attention.h: cuda_supported).
WINDOW_ATTENTION_CUDA_TOKENS = (16, 64, 144)
WINDOW_ATTENTION_CUDA_HEAD_DIM = 32


def window_attention_fused(qkv: torch.Tensor, tokens: int, head_dim: int) -> bool:
    """Whether :func:`window_attention` has a CUDA kernel for this call (else use PyTorch ops)."""
    return (qkv.is_cuda and qkv.dtype in (torch.float16, torch.bfloat16)
            and tokens in WINDOW_ATTENTION_CUDA_TOKENS and head_dim == WINDOW_ATTENTION_CUDA_HEAD_DIM)


def window_attention(qkv: torch.Tensor, bias: torch.Tensor, regions: torch.Tensor | None, num_heads: int,
                     scale: float) -> torch.Tensor:
    """Swin window attention through `torch.ops.codetr.window_attention` (inference only).

    qkv (Bw, N, 3*C) as the qkv projection writes it; bias (H, N, N) in qkv's dtype; regions
    (nW, N) int32 shift-mask region ids (logits of token pairs in different regions get -100) or
    None; -> (Bw, N, C) = softmax(scale * q k^T + bias + mask) v per head, with the logits and
    softmax in fp32. CUDA: float16/bfloat16, head_dim 32, N = 16/64/144; CPU: an ATen reference.
    """
    from codetr import _C  # noqa: F401  (loads the op library once)
    return torch.ops.codetr.window_attention(qkv, bias, regions, num_heads, scale)
