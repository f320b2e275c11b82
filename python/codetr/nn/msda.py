"""Multi-scale deformable attention as a module, with mmcv's parameter names.

The module computes sampling locations and attention weights from the query and calls one of
two implementations of the sampling itself:

* ``"op"``      -> :func:`codetr.ops.ms_deform_attn` (the C++/CUDA custom op; default), or
* ``"pytorch"`` -> :func:`codetr.ops.ms_deform_attn_pytorch` (``F.grid_sample``; the form that
  plain ONNX export and environments without the op library use).

Choose per model with :func:`set_msda_impl`. Sampling locations and attention weights are kept in
float32 whatever the compute dtype, so sub-pixel positions stay exact on large feature maps.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
from torch import nn

from codetr import ops

MSDA_IMPLS = ("op", "pytorch")


class MultiScaleDeformableAttention(nn.Module):
    """mmcv ``MultiScaleDeformableAttention`` (inference only: no dropout, identity added).

    Batch-first: ``query`` (B, Q, C), ``value`` (B, S, C), ``reference_points`` (B, Q, L, 2) as
    normalised (x, y) or (B, Q, L, 4) as normalised (cx, cy, w, h).
    """

    def __init__(self, embed_dims: int, num_heads: int, num_levels: int, num_points: int):
        super().__init__()
        if embed_dims % num_heads != 0:
            raise ValueError(f"embed_dims ({embed_dims}) must be divisible by num_heads ({num_heads})")
        self.embed_dims = embed_dims
        self.num_heads = num_heads
        self.num_levels = num_levels
        self.num_points = num_points
        self.sampling_offsets = nn.Linear(embed_dims, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(embed_dims, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(embed_dims, embed_dims)
        self.output_proj = nn.Linear(embed_dims, embed_dims)
        self.msda_impl = "op"

    def forward(self, query: torch.Tensor, value: torch.Tensor, query_pos: torch.Tensor,
                reference_points: torch.Tensor, spatial_shapes: Sequence[Tuple[int, int]],
                key_padding_mask: torch.Tensor) -> torch.Tensor:
        identity = query
        query = query + query_pos
        B, Q, _ = query.shape
        S = value.shape[1]
        H, L, P = self.num_heads, self.num_levels, self.num_points

        value = self.value_proj(value).masked_fill(key_padding_mask[..., None], 0.0)
        value = value.view(B, S, H, self.embed_dims // H)

        offsets = self.sampling_offsets(query).float().view(B, Q, H, L, P, 2)
        weights = self.attention_weights(query).float().view(B, Q, H, L * P)
        weights = weights.softmax(-1).view(B, Q, H, L, P)

        reference_points = reference_points.float()
        if reference_points.shape[-1] == 2:
            # offsets are in pixels of each level: normalise by (w, h) of that level
            normaliser = _level_sizes_wh(spatial_shapes, query.device)
            locations = (reference_points[:, :, None, :, None, :]
                         + offsets / normaliser[None, None, None, :, None, :])
        elif reference_points.shape[-1] == 4:
            # offsets are relative to the box size: P points spread over half the box
            locations = (reference_points[:, :, None, :, None, :2]
                         + offsets / P * reference_points[:, :, None, :, None, 2:] * 0.5)
        else:
            raise ValueError(f"reference_points last dim must be 2 or 4, got {reference_points.shape[-1]}")

        if self.msda_impl == "op":
            out = ops.ms_deform_attn(value, spatial_shapes, locations, weights)
        elif self.msda_impl == "pytorch":
            out = ops.ms_deform_attn_pytorch(value, spatial_shapes, locations, weights)
        else:
            raise ValueError(f"unknown msda_impl {self.msda_impl!r}; expected one of {MSDA_IMPLS}")
        return self.output_proj(out.to(identity.dtype)) + identity


def _level_sizes_wh(spatial_shapes: Sequence[Tuple[int, int]], device) -> torch.Tensor:
    """(L, 2) float32 tensor of (w, h); scalar_tensor keeps SymInts symbolic under torch.export."""
    rows: List[torch.Tensor] = []
    for h, w in spatial_shapes:
        rows.append(torch.stack([torch.scalar_tensor(w, dtype=torch.float32, device=device),
                                 torch.scalar_tensor(h, dtype=torch.float32, device=device)]))
    return torch.stack(rows)


def set_msda_impl(model: nn.Module, impl: str) -> nn.Module:
    """Select the deformable-attention implementation of every MSDA module in ``model``.

    ``"op"`` uses the C++/CUDA custom op (fast; what AOTInductor export keeps as an extern
    kernel); ``"pytorch"`` uses the grid_sample formulation (ONNX export, no op library).
    Returns ``model`` for chaining.
    """
    if impl not in MSDA_IMPLS:
        raise ValueError(f"unknown msda_impl {impl!r}; expected one of {MSDA_IMPLS}")
    for module in model.modules():
        if isinstance(module, MultiScaleDeformableAttention):
            module.msda_impl = impl
    return model
