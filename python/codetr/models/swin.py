"""mmdetection's SwinTransformer backbone, inference only (no dropout / drop-path).

Module names follow mmdet's state_dict (``patch_embed.projection``, ``stages.N.blocks.M.attn.w_msa``,
``stages.N.downsample.reduction``, ``normN`` ...). Zero padding bottom/right exactly where mmdet
pads ('corner' adaptive padding): the image to a multiple of the patch size, odd maps before a
2x2 merge, and maps that are not a multiple of the window before window attention (cropped
afterwards). So any input size works, like mmdet; exported engines use multiples of 32.

Reduced precision (model.half() / bfloat16): the big matmuls (qkv, proj, MLP, patch merging) run
in the model's dtype, but two things Swin-L is known to push past float16's 65504 are kept wide:
* the residual stream of every stage stays float32: large Swin v1 models grow their deep-layer
  activations by orders of magnitude (the Swin V2 paper measures ~1e4 between layers); in fp16
  the running sum overflows to inf and the next LayerNorm turns the whole token into NaN.
  LayerNorms read it in fp32 and cast their output to the compute dtype;
* window-attention logits: q is pre-scaled by 2^-8 so the fp16 q.k^T fits up to ~1.7e7, then
  rescaled in fp32, where bias, shift mask and softmax run (probabilities cast back for attn @ v).
Powers of two scale exactly, and every cast is a no-op in float32: fp32 results are bit-identical.
On CUDA in float16/bfloat16 (32-channel heads, 4x4/8x8/12x12 windows), window attention runs as
one fused kernel instead (``torch.ops.codetr.window_attention``): q.k^T accumulates in fp32 on the
tensor cores and bias, mask and softmax stay in fp32 registers, so no prescale is needed there.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
from torch import nn
import torch.nn.functional as F

from codetr import ops


def relative_position_index(window: int) -> torch.Tensor:
    """(window^2, window^2) index into the (2*window-1)^2 bias table, row-major (dy, dx)."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij"))
    coords = coords.flatten(1)  # (2, N)
    rel = coords[:, :, None] - coords[:, None, :] + (window - 1)  # (2, N, N), both >= 0
    return rel[0] * (2 * window - 1) + rel[1]


# q is pre-scaled by this before q.k^T and the logits multiplied back in float32: the fp16 matmul
# output then overflows only beyond 65504 / 2^-8 ~ 1.7e7 instead of 65504. A power of two, so
# the rescaling is exact (fp32 unchanged); 2^-8 keeps typical q * scale (~0.1-1) normal in fp16.
LOGIT_PRESCALE = 2.0 ** -8


def layer_norm_fp32(norm: nn.LayerNorm, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``norm(x)`` computed in float32 (x, weight, bias), output cast to ``dtype``: LayerNorm of
    the float32 residual stream feeding a reduced-precision branch. No-op casts in float32."""
    return F.layer_norm(x.float(), norm.normalized_shape, norm.weight.float(), norm.bias.float(),
                        norm.eps).to(dtype)


class WindowMSA(nn.Module):
    def __init__(self, embed_dims: int, num_heads: int, window: int):
        super().__init__()
        self.num_heads = num_heads
        self.window = window
        self.scale = (embed_dims // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window))
        self.qkv = nn.Linear(embed_dims, embed_dims * 3)
        self.proj = nn.Linear(embed_dims, embed_dims)
        self.cuda_fusions = True  # see codetr.models.set_cuda_fusions

    def forward(self, x: torch.Tensor, regions: torch.Tensor | None) -> torch.Tensor:
        """x: (num_windows*B, N, C); regions: (num_windows, N) int32 shift-mask region ids (tokens of
        different regions get -100 added to their logits) or None."""
        Bw, N, C = x.shape
        qkv = self.qkv(x)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(N, N, -1)
        if self.cuda_fusions and ops.window_attention_fused(qkv, N, C // self.num_heads):
            # .to: a no-op for a half model; under autocast the fp32 table meets an fp16 qkv
            bias = bias.permute(2, 0, 1).to(qkv.dtype).contiguous()
            return self.proj(ops.window_attention(qkv, bias, regions, self.num_heads, self.scale))
        qkv = qkv.reshape(Bw, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        # logits: matmul in the input dtype on a pre-scaled q (fp16 range, see LOGIT_PRESCALE),
        # then fp32 for the rescale, bias, shift mask and softmax (one fused kernel when compiled)
        attn = ((q * (self.scale * LOGIT_PRESCALE)) @ k.transpose(-2, -1)).float() * (1.0 / LOGIT_PRESCALE)
        attn = attn + bias.float().permute(2, 0, 1).unsqueeze(0)
        if regions is not None:
            nW = regions.shape[0]
            mask = torch.where(regions[:, None, :] != regions[:, :, None], -100.0, 0.0)  # float32
            attn = attn.view(-1, nW, self.num_heads, N, N) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.num_heads, N, N)
        attn = attn.softmax(-1).to(v.dtype)
        return self.proj((attn @ v).transpose(1, 2).reshape(Bw, N, C))


class ShiftWindowMSA(nn.Module):
    def __init__(self, embed_dims: int, num_heads: int, window: int, shift: int):
        super().__init__()
        self.window = window
        self.shift = shift
        self.w_msa = WindowMSA(embed_dims, num_heads, window)

    def _partition(self, x: torch.Tensor, n_h, n_w) -> torch.Tensor:
        """(B, n_h*ws, n_w*ws, C) -> (B*n_h*n_w, ws*ws, C); window counts passed in so that
        symbolic shapes stay products (torch.export proves the views without modular reasoning)."""
        B, C = x.shape[0], x.shape[3]
        ws = self.window
        x = x.view(B, n_h, ws, n_w, ws, C).permute(0, 1, 3, 2, 4, 5)
        return x.reshape(-1, ws * ws, C)

    def _shift_regions(self, n_h, n_w, device) -> torch.Tensor:
        """(nW, N) int32 region id of every token of every shifted window; tokens of different
        regions must not attend to each other (WindowMSA adds -100 to their logits).

        Regions as mmdet slices them: rows [0, H-ws), [H-ws, H-shift), [H-shift, H), same for
        columns; region id = 3 * row_region + col_region.
        """
        ws, s = self.window, self.shift
        H, W = n_h * ws, n_w * ws
        rows = torch.arange(H, device=device)
        cols = torch.arange(W, device=device)
        row_region = (rows >= H - ws).int() + (rows >= H - s).int()
        col_region = (cols >= W - ws).int() + (cols >= W - s).int()
        region = row_region[:, None] * 3 + col_region[None, :]
        return self._partition(region[None, :, :, None], n_h, n_w).squeeze(-1)

    def forward(self, x: torch.Tensor, hw: Tuple[int, int]) -> torch.Tensor:
        B, L, C = x.shape
        H, W = hw
        ws = self.window
        n_h, n_w = (H + ws - 1) // ws, (W + ws - 1) // ws  # windows per axis after padding
        x = F.pad(x.view(B, H, W, C), (0, 0, 0, n_w * ws - W, 0, n_h * ws - H))
        if self.shift > 0:
            x = torch.roll(x, shifts=(-self.shift, -self.shift), dims=(1, 2))
            regions = self._shift_regions(n_h, n_w, x.device)
        else:
            regions = None
        out = self.w_msa(self._partition(x, n_h, n_w), regions)
        out = out.view(B, n_h, n_w, ws, ws, C).permute(0, 1, 3, 2, 4, 5).reshape(B, n_h * ws, n_w * ws, C)
        if self.shift > 0:
            out = torch.roll(out, shifts=(self.shift, self.shift), dims=(1, 2))
        # crop the padding by gathering the valid tokens: a slice + reshape would make
        # torch.export specialise on whether any padding exists (view vs copy)
        keep = (torch.arange(H, device=x.device)[:, None] * (n_w * ws)
                + torch.arange(W, device=x.device)[None, :]).reshape(-1)
        return out.reshape(B, n_h * ws * n_w * ws, C).index_select(1, keep)


class SwinFFN(nn.Module):
    """mmcv FFN layout: ``layers.0.0`` (fc1) + GELU, ``layers.1`` (fc2); identity added by caller."""

    def __init__(self, embed_dims: int, hidden: int):
        super().__init__()
        self.layers = nn.Sequential(nn.Sequential(nn.Linear(embed_dims, hidden), nn.GELU()),
                                    nn.Linear(hidden, embed_dims))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class SwinBlock(nn.Module):
    def __init__(self, embed_dims: int, num_heads: int, hidden: int, window: int, shift: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(embed_dims)
        self.attn = ShiftWindowMSA(embed_dims, num_heads, window, window // 2 if shift else 0)
        self.norm2 = nn.LayerNorm(embed_dims)
        self.ffn = SwinFFN(embed_dims, hidden)

    def forward(self, x: torch.Tensor, hw: Tuple[int, int]) -> torch.Tensor:
        """x: the residual stream, kept in float32 (module docstring): the branches run in the
        weights' dtype and their outputs are added in float32 (type promotion)."""
        x = x.float()  # no-op in float32 and from the second block of a stage on
        dtype = self.norm1.weight.dtype
        x = x + self.attn(layer_norm_fp32(self.norm1, x, dtype), hw)
        return x + self.ffn(layer_norm_fp32(self.norm2, x, dtype))


class PatchMerging(nn.Module):
    """2x2 neighbourhood -> 4C channels in nn.Unfold order (c, ky, kx), LayerNorm, Linear to 2C."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(4 * in_channels)
        self.reduction = nn.Linear(4 * in_channels, out_channels, bias=False)

    def forward(self, x: torch.Tensor, hw: Tuple[int, int]) -> Tuple[torch.Tensor, Tuple[int, int]]:
        B, L, C = x.shape
        H, W = hw
        out_h, out_w = (H + 1) // 2, (W + 1) // 2
        x = F.pad(x.view(B, H, W, C), (0, 0, 0, 2 * out_w - W, 0, 2 * out_h - H))
        x = x.view(B, out_h, 2, out_w, 2, C).permute(0, 1, 3, 5, 2, 4).reshape(B, out_h * out_w, 4 * C)
        return self.reduction(layer_norm_fp32(self.norm, x, self.reduction.weight.dtype)), (out_h, out_w)


class SwinStage(nn.Module):
    def __init__(self, embed_dims: int, num_heads: int, hidden: int, depth: int, window: int,
                 downsample: PatchMerging | None):
        super().__init__()
        self.blocks = nn.ModuleList(SwinBlock(embed_dims, num_heads, hidden, window, shift=i % 2 == 1)
                                    for i in range(depth))
        self.downsample = downsample

    def forward(self, x: torch.Tensor, hw: Tuple[int, int]):
        """Returns (input of the next stage, its size, this stage's output (float32), its size)."""
        for block in self.blocks:
            x = block(x, hw)
        if self.downsample is None:
            return x, hw, x, hw
        x_down, hw_down = self.downsample(x, hw)
        return x_down, hw_down, x, hw


class PatchEmbed(nn.Module):
    def __init__(self, embed_dims: int, patch_size: int):
        super().__init__()
        self.patch_size = patch_size
        self.projection = nn.Conv2d(3, embed_dims, patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dims)

    def forward(self, x: torch.Tensor):
        p = self.patch_size
        H, W = x.shape[2], x.shape[3]
        x = F.pad(x, (0, (W + p - 1) // p * p - W, 0, (H + p - 1) // p * p - H))
        x = self.projection(x)
        hw = (x.shape[2], x.shape[3])
        return self.norm(x.flatten(2).transpose(1, 2)), hw


class SwinTransformer(nn.Module):
    """Swin backbone (no absolute position embedding, as in the Co-DINO configs)."""

    def __init__(self, embed_dims: int = 192, depths: Sequence[int] = (2, 2, 18, 2),
                 num_heads: Sequence[int] = (6, 12, 24, 48), window_size: int = 12,
                 mlp_ratio: int = 4, patch_size: int = 4, out_indices: Sequence[int] = (0, 1, 2, 3)):
        super().__init__()
        self.out_indices = tuple(out_indices)
        self.patch_embed = PatchEmbed(embed_dims, patch_size)
        self.stages = nn.ModuleList()
        channels = embed_dims
        self.num_features = [embed_dims * 2 ** i for i in range(len(depths))]
        for i, depth in enumerate(depths):
            down = PatchMerging(channels, 2 * channels) if i < len(depths) - 1 else None
            self.stages.append(SwinStage(channels, num_heads[i], mlp_ratio * channels, depth, window_size, down))
            if down is not None:
                channels *= 2
        for i in self.out_indices:
            self.add_module(f"norm{i}", nn.LayerNorm(self.num_features[i]))
        self.out_channels = [self.num_features[i] for i in self.out_indices]

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        x, hw = self.patch_embed(x)
        outs = []
        for i, stage in enumerate(self.stages):
            x, hw, out, out_hw = stage(x, hw)
            if i in self.out_indices:
                norm = getattr(self, f"norm{i}")
                out = layer_norm_fp32(norm, out, norm.weight.dtype)
                outs.append(out.view(-1, out_hw[0], out_hw[1], self.num_features[i]).permute(0, 3, 1, 2).contiguous())
        return outs
