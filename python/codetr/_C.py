"""Loads the native op library (python/codetr/_lib/libcodetr_ops.so) once and registers the fake
(meta) implementations that torch.export / torch.compile / AOTInductor trace with.

Set CODETR_OPS_LIBRARY to load the library from another path.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

_DEFAULT_LIBRARY = Path(__file__).resolve().parent / "_lib" / "libcodetr_ops.so"


def library_path() -> Path:
    return Path(os.environ.get("CODETR_OPS_LIBRARY", str(_DEFAULT_LIBRARY)))


def _load() -> None:
    if hasattr(torch.ops.codetr, "ms_deform_attn"):  # already loaded (e.g. by the C++ runtime)
        return
    path = library_path()
    if not path.is_file():
        raise RuntimeError(
            f"codetr: the op library {path} does not exist; build it with tools/build.sh "
            "(or set CODETR_OPS_LIBRARY to its path)")
    torch.ops.load_library(str(path))


_load()


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
