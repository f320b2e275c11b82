"""CoDinoTransformer inference path (mmdetection projects/CO-DETR): deformable encoder, two-stage
proposal selection, DINO decoder. Batch-first throughout; module names follow mmdet's state_dict
(``encoder.layers.N.attentions.0``, ``ffns.0.layers.0.0``, ``norms.K``, ``decoder.ref_point_head``...).
"""
from __future__ import annotations

import math
from typing import List, Tuple

import torch
from torch import nn

from codetr.nn import MultiScaleDeformableAttention

SpatialShapes = List[Tuple[int, int]]


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """mmdet's inverse_sigmoid: clamp to [0, 1], then log(x / (1 - x)) with both sides >= eps."""
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def sine_positional_encoding(mask: torch.Tensor, num_feats: int, temperature: float,
                             eps: float = 1e-6) -> torch.Tensor:
    """mmdet SinePositionalEncoding(normalize=True, scale=2*pi, offset=0) of a padding mask.

    mask (B, h, w) bool, True = padding -> (B, 2*num_feats, h, w) float32, channels (y, x).
    """
    not_mask = 1 - mask.to(torch.int)
    y_embed = not_mask.cumsum(1, dtype=torch.float32)
    x_embed = not_mask.cumsum(2, dtype=torch.float32)
    scale = 2 * math.pi
    y_embed = y_embed / (y_embed[:, -1:, :] + eps) * scale
    x_embed = x_embed / (x_embed[:, :, -1:] + eps) * scale
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=mask.device)
    dim_t = temperature ** (2 * (dim_t // 2) / num_feats)
    pos_x = x_embed[:, :, :, None] / dim_t
    pos_y = y_embed[:, :, :, None] / dim_t
    B, h, w = mask.shape
    pos_x = torch.stack((pos_x[:, :, :, 0::2].sin(), pos_x[:, :, :, 1::2].cos()), dim=4).view(B, h, w, -1)
    pos_y = torch.stack((pos_y[:, :, :, 0::2].sin(), pos_y[:, :, :, 1::2].cos()), dim=4).view(B, h, w, -1)
    return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)


def sine_embed_boxes(boxes: torch.Tensor, num_feats: int) -> torch.Tensor:
    """DINO's gen_sineembed_for_position for (B, Q, 4) (cx, cy, w, h) -> (B, Q, 4*num_feats), order (y, x, w, h)."""
    scale = 2 * math.pi
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=boxes.device)
    dim_t = 10000 ** (2 * (dim_t // 2) / num_feats)

    def embed(coord: torch.Tensor) -> torch.Tensor:
        pos = coord[:, :, None] * scale / dim_t
        return torch.stack((pos[:, :, 0::2].sin(), pos[:, :, 1::2].cos()), dim=3).flatten(2)

    return torch.cat((embed(boxes[:, :, 1]), embed(boxes[:, :, 0]),
                      embed(boxes[:, :, 2]), embed(boxes[:, :, 3])), dim=2)


class FFN(nn.Module):
    """mmcv FFN (2 fcs, ReLU), identity added: ``layers.0.0`` fc1, ``layers.1`` fc2."""

    def __init__(self, embed_dims: int, hidden: int):
        super().__init__()
        self.layers = nn.Sequential(nn.Sequential(nn.Linear(embed_dims, hidden), nn.ReLU(inplace=True)),
                                    nn.Linear(hidden, embed_dims))
        self.cuda_fusions = True  # see codetr.models.set_cuda_fusions

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.cuda_fusions and x.is_cuda):
            return x + self.layers(x)
        # On CUDA, fc1's bias and ReLU run in the GEMM's epilogue (cuBLASLt; Inductor keeps
        # _addmm_activation as one extern call). Separately, the ReLU pass re-read and re-wrote the
        # (tokens, 2048) hidden activations of every encoder layer (about 1.2 ms of the compiled
        # Swin-L at 1152x768 on an H100).
        fc1, fc2 = self.layers[0][0], self.layers[1]
        hidden = torch._addmm_activation(fc1.bias, x.reshape(-1, x.shape[-1]), fc1.weight.t())
        return x + fc2(hidden.view(*x.shape[:-1], hidden.shape[-1]))


class SelfAttention(nn.Module):
    """mmcv MultiheadAttention wrapper: q = k = x + pos, v = x, identity added (key ``attn.*``)."""

    def __init__(self, embed_dims: int, num_heads: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(embed_dims, num_heads, batch_first=True)

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        q = x + pos
        return x + self.attn(q, q, x, need_weights=False)[0]


class EncoderLayer(nn.Module):
    """operation_order (self_attn = MSDA, norm, ffn, norm)."""

    def __init__(self, embed_dims: int, num_heads: int, num_levels: int, num_points: int, ffn_dim: int):
        super().__init__()
        self.attentions = nn.ModuleList([MultiScaleDeformableAttention(embed_dims, num_heads, num_levels, num_points)])
        self.ffns = nn.ModuleList([FFN(embed_dims, ffn_dim)])
        self.norms = nn.ModuleList([nn.LayerNorm(embed_dims) for _ in range(2)])

    def forward(self, x, pos, reference_points, spatial_shapes, padding_mask):
        x = self.norms[0](self.attentions[0](x, x, pos, reference_points, spatial_shapes, padding_mask))
        return self.norms[1](self.ffns[0](x))


class Encoder(nn.Module):
    def __init__(self, num_layers: int, **layer_args):
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(**layer_args) for _ in range(num_layers))

    def forward(self, x, pos, reference_points, spatial_shapes, padding_mask):
        for layer in self.layers:
            x = layer(x, pos, reference_points, spatial_shapes, padding_mask)
        return x


class DecoderLayer(nn.Module):
    """operation_order (self_attn, norm, cross_attn = MSDA, norm, ffn, norm)."""

    def __init__(self, embed_dims: int, self_attn_heads: int, cross_attn_heads: int, num_levels: int,
                 num_points: int, ffn_dim: int):
        super().__init__()
        self.attentions = nn.ModuleList([
            SelfAttention(embed_dims, self_attn_heads),
            MultiScaleDeformableAttention(embed_dims, cross_attn_heads, num_levels, num_points)])
        self.ffns = nn.ModuleList([FFN(embed_dims, ffn_dim)])
        self.norms = nn.ModuleList([nn.LayerNorm(embed_dims) for _ in range(3)])

    def forward(self, query, query_pos, memory, reference_points, spatial_shapes, padding_mask):
        query = self.norms[0](self.attentions[0](query, query_pos))
        query = self.norms[1](self.attentions[1](query, memory, query_pos, reference_points,
                                                 spatial_shapes, padding_mask))
        return self.norms[2](self.ffns[0](query))


def _mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    """mmdet build_MLP(num_layers=2): keys ``0`` and ``2``."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))


class DinoDecoder(nn.Module):
    def __init__(self, num_layers: int, embed_dims: int, **layer_args):
        super().__init__()
        self.embed_dims = embed_dims
        self.num_layers = num_layers
        self.layers = nn.ModuleList(DecoderLayer(embed_dims=embed_dims, **layer_args) for _ in range(num_layers))
        self.ref_point_head = _mlp(2 * embed_dims, embed_dims, embed_dims)
        self.norm = nn.LayerNorm(embed_dims)

    def forward(self, query, memory, reference_points, valid_ratios, spatial_shapes, padding_mask,
                reg_branches: nn.ModuleList) -> Tuple[torch.Tensor, torch.Tensor]:
        """Returns the normalised output of the last layer and the reference boxes that layer
        refined (mmdet's ``inter_references[-2]``: the head adds its regression to them)."""
        ratios4 = torch.cat([valid_ratios, valid_ratios], -1)[:, None]  # (B, 1, L, 4)
        for lid, layer in enumerate(self.layers):
            ref_input = reference_points[:, :, None] * ratios4  # (B, Q, L, 4)
            sine = sine_embed_boxes(ref_input[:, :, 0, :], self.embed_dims // 2).to(query.dtype)
            query = layer(query, self.ref_point_head(sine), memory, ref_input, spatial_shapes, padding_mask)
            if lid < self.num_layers - 1:
                # box refinement uses the un-normalised output; the last update is not needed
                delta = reg_branches[lid](query).float()
                reference_points = (delta + inverse_sigmoid(reference_points, eps=1e-3)).sigmoid()
        return self.norm(query), reference_points


class CoDinoTransformer(nn.Module):
    def __init__(self, embed_dims: int, num_levels: int, num_points: int, num_query: int,
                 encoder_layers: int, encoder_heads: int, decoder_layers: int, decoder_self_heads: int,
                 decoder_cross_heads: int, ffn_dim: int):
        super().__init__()
        self.embed_dims = embed_dims
        self.num_levels = num_levels
        self.num_query = num_query
        self.level_embeds = nn.Parameter(torch.zeros(num_levels, embed_dims))
        self.encoder = Encoder(encoder_layers, embed_dims=embed_dims, num_heads=encoder_heads,
                               num_levels=num_levels, num_points=num_points, ffn_dim=ffn_dim)
        self.decoder = DinoDecoder(decoder_layers, embed_dims, self_attn_heads=decoder_self_heads,
                                   cross_attn_heads=decoder_cross_heads, num_levels=num_levels,
                                   num_points=num_points, ffn_dim=ffn_dim)
        self.enc_output = nn.Linear(embed_dims, embed_dims)
        self.enc_output_norm = nn.LayerNorm(embed_dims)
        self.query_embed = nn.Embedding(num_query, embed_dims)

    @staticmethod
    def valid_ratios(mask: torch.Tensor) -> torch.Tensor:
        """(B, h, w) padding mask -> (B, 2) float32 valid fraction (w, h)."""
        _, h, w = mask.shape
        valid_h = (~mask[:, :, 0]).sum(1)
        valid_w = (~mask[:, 0, :]).sum(1)
        return torch.stack([valid_w.float() / w, valid_h.float() / h], -1)

    @staticmethod
    def encoder_reference_points(spatial_shapes: SpatialShapes, valid_ratios: torch.Tensor) -> torch.Tensor:
        """Pixel centres of every level, normalised by the valid size -> (B, S, L, 2)."""
        refs = []
        device = valid_ratios.device
        for lvl, (h, w) in enumerate(spatial_shapes):
            ref_y, ref_x = torch.meshgrid(torch.arange(h, dtype=torch.float32, device=device) + 0.5,
                                          torch.arange(w, dtype=torch.float32, device=device) + 0.5,
                                          indexing="ij")
            ref_y = ref_y.reshape(-1)[None] / (valid_ratios[:, None, lvl, 1] * h)
            ref_x = ref_x.reshape(-1)[None] / (valid_ratios[:, None, lvl, 0] * w)
            refs.append(torch.stack((ref_x, ref_y), -1))
        return torch.cat(refs, 1)[:, :, None] * valid_ratios[:, None]

    @staticmethod
    def encoder_proposals(memory: torch.Tensor, padding_mask: torch.Tensor, level_masks: List[torch.Tensor],
                          spatial_shapes: SpatialShapes) -> Tuple[torch.Tensor, torch.Tensor]:
        """One proposal per encoder position: centre of the pixel in valid-normalised coordinates,
        size 0.05 * 2^level; returns (inverse-sigmoid proposals with +inf where unusable, mask of
        unusable positions)."""
        proposals = []
        for lvl, ((h, w), mask) in enumerate(zip(spatial_shapes, level_masks)):
            B = mask.shape[0]
            valid_h = (~mask[:, :, 0]).sum(1)
            valid_w = (~mask[:, 0, :]).sum(1)
            grid_y, grid_x = torch.meshgrid(torch.arange(h, dtype=torch.float32, device=memory.device),
                                            torch.arange(w, dtype=torch.float32, device=memory.device),
                                            indexing="ij")
            grid = torch.cat([grid_x.unsqueeze(-1), grid_y.unsqueeze(-1)], -1)
            scale = torch.cat([valid_w.unsqueeze(-1), valid_h.unsqueeze(-1)], 1).view(B, 1, 1, 2)
            grid = (grid.unsqueeze(0).expand(B, -1, -1, -1) + 0.5) / scale
            wh = torch.ones_like(grid) * 0.05 * (2.0 ** lvl)
            proposals.append(torch.cat((grid, wh), -1).view(B, -1, 4))
        proposals = torch.cat(proposals, 1)
        usable = ((proposals > 0.01) & (proposals < 0.99)).all(-1, keepdim=True)
        proposals = torch.log(proposals / (1 - proposals))
        unusable = padding_mask.unsqueeze(-1) | ~usable
        proposals = proposals.masked_fill(unusable, float("inf"))
        return proposals, unusable

    def forward(self, feats: List[torch.Tensor], level_masks: List[torch.Tensor], level_pos: List[torch.Tensor],
                cls_branches: nn.ModuleList, reg_branches: nn.ModuleList) -> Tuple[torch.Tensor, torch.Tensor]:
        spatial_shapes: SpatialShapes = []
        flat_feats, flat_masks, flat_pos = [], [], []
        for lvl, (feat, mask, pos) in enumerate(zip(feats, level_masks, level_pos)):
            spatial_shapes.append((feat.shape[2], feat.shape[3]))
            flat_feats.append(feat.flatten(2).transpose(1, 2))
            flat_masks.append(mask.flatten(1))
            flat_pos.append(pos.flatten(2).transpose(1, 2) + self.level_embeds[lvl].view(1, 1, -1).float())
        memory = torch.cat(flat_feats, 1)
        padding_mask = torch.cat(flat_masks, 1)
        pos = torch.cat(flat_pos, 1).to(memory.dtype)
        valid_ratios = torch.stack([self.valid_ratios(m) for m in level_masks], 1)  # (B, L, 2)

        memory = self.encoder(memory, pos, self.encoder_reference_points(spatial_shapes, valid_ratios),
                              spatial_shapes, padding_mask)

        proposals, unusable = self.encoder_proposals(memory, padding_mask, level_masks, spatial_shapes)
        output_memory = self.enc_output_norm(self.enc_output(memory.masked_fill(unusable, 0.0)))
        num_dec = self.decoder.num_layers
        enc_class = cls_branches[num_dec](output_memory)
        enc_coords = reg_branches[num_dec](output_memory).float() + proposals
        topk = torch.topk(enc_class.max(-1)[0].float(), self.num_query, dim=1)[1]
        reference_points = torch.gather(enc_coords, 1, topk.unsqueeze(-1).expand(-1, -1, 4)).sigmoid()

        B = memory.shape[0]
        query = self.query_embed.weight[None].expand(B, -1, -1)
        return self.decoder(query, memory, reference_points, valid_ratios, spatial_shapes, padding_mask,
                            reg_branches)
