"""Makes the codetr torch ops (``torch.ops.codetr.ms_deform_attn``, ``window_attention``) available:
loads libcodetr_ops.so by the C++ runtime's one rule (``codetr::load_ops_library``:
$CODETR_OPS_LIBRARY, else the library beside libcodetr.so) and registers the fake (meta)
implementations that torch.export / torch.compile / AOTInductor trace with. ``import codetr`` runs it.
"""
from __future__ import annotations

import torch

from codetr import _lib
from codetr._native import runtime


def library_path() -> str:
    """The op library this process uses (or would load)."""
    return runtime.find_ops_library()


try:
    runtime.load_ops_library()
except runtime.Error as exc:
    raise ImportError(f"codetr: {exc}; {_lib.rebuild_hint()}") from exc


@torch.library.register_fake("codetr::ms_deform_attn")
def _ms_deform_attn_fake(value, spatial_shapes, sampling_locations, attention_weights):
    torch._check(value.dim() == 4, lambda: "codetr::ms_deform_attn: value must be 4-D (B, S, H, D)")
    torch._check(sampling_locations.dim() == 6,
                 lambda: "codetr::ms_deform_attn: sampling_locations must be 6-D (B, Q, H, L, P, 2)")
    torch._check(attention_weights.dim() == 5,
                 lambda: "codetr::ms_deform_attn: attention_weights must be 5-D (B, Q, H, L, P)")
    torch._check(sampling_locations.device == value.device and attention_weights.device == value.device,
                 lambda: "codetr::ms_deform_attn: all tensors must be on one device, got value on "
                         f"{value.device}, sampling_locations on {sampling_locations.device}, "
                         f"attention_weights on {attention_weights.device}")
    B, _, H, D = value.shape
    Q = sampling_locations.shape[1]
    return value.new_empty((B, Q, H * D))


@torch.library.register_fake("codetr::ms_deform_attn_backward")
def _ms_deform_attn_backward_fake(grad_output, value, spatial_shapes, sampling_locations,
                                  attention_weights):
    return (torch.empty_like(value), torch.empty_like(sampling_locations),
            torch.empty_like(attention_weights))


@torch.library.register_fake("codetr::window_attention")
def _window_attention_fake(qkv, bias, regions, num_heads, scale):
    torch._check(qkv.dim() == 3, lambda: "codetr::window_attention: qkv must be 3-D (num_windows, N, 3*C)")
    torch._check(num_heads > 0 and qkv.shape[2] % (3 * num_heads) == 0,
                 lambda: f"codetr::window_attention: qkv's last dim ({qkv.shape[2]}) must be 3 * num_heads * "
                         f"head_dim with num_heads = {num_heads}")
    torch._check(bias.dtype == qkv.dtype and bias.device == qkv.device,
                 lambda: "codetr::window_attention: bias must have qkv's dtype and device")
    return qkv.new_empty(qkv.shape[0], qkv.shape[1], qkv.shape[2] // 3)
