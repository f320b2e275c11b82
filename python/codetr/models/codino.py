"""The Co-DINO detector (query-head inference path) with the engine contract:

    forward(images (B,3,H,W) normalised, masks (B,H,W) bool True = padding, or None)
      -> boxes (B,K,4) float32 xyxy in input pixels, scores (B,K) float32, labels (B,K) int64

K = max_per_img (300). Boxes are mmdet's pre-rescale ``pred_instances`` (before NMS): normalised
boxes times the valid image size and clamped to it. The valid size comes from the mask (tensor
ops, no data-dependent Python control flow) or is the whole input when ``masks`` is None.

torch.export: static shapes, or dynamic H, W as multiples of 32. torch specialises dimensions
of size 1, so the dynamic range must keep them >= 2: ResNet presets need H, W >= 96 (the
stride-64 level is 1 pixel at 32/64 px); Swin presets need H, W >= 416 (at most 12 px at stride
32 is a single 12x12 attention window per axis) and an example input of at least that size.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

from codetr.models.channel_mapper import ChannelMapper
from codetr.models.head import CoDINOHead
from codetr.models.resnet import ResNet
from codetr.models.swin import SwinTransformer


class CoDINO(nn.Module):
    def __init__(self, config):
        """``config``: a :class:`codetr.presets.ModelConfig`."""
        super().__init__()
        self.config = config
        bb = config.backbone
        if bb.type == "resnet":
            self.backbone = ResNet(depth=bb.depth, base_channels=bb.base_channels, out_indices=bb.out_indices)
        elif bb.type == "swin":
            self.backbone = SwinTransformer(embed_dims=bb.embed_dims, depths=bb.depths, num_heads=bb.num_heads,
                                            window_size=bb.window_size, mlp_ratio=bb.mlp_ratio,
                                            patch_size=bb.patch_size, out_indices=bb.out_indices)
        else:
            raise ValueError(f"unknown backbone type {bb.type!r}")
        self.neck = ChannelMapper(self.backbone.out_channels, config.embed_dims, config.num_levels)
        self.query_head = CoDINOHead(
            num_classes=config.num_classes, embed_dims=config.embed_dims, pos_num_feats=config.pos_num_feats,
            pos_temperature=config.pos_temperature, num_levels=config.num_levels, num_points=config.num_points,
            num_query=config.num_query, encoder_layers=config.encoder_layers, encoder_heads=config.encoder_heads,
            decoder_layers=config.decoder_layers, decoder_self_heads=config.decoder_self_heads,
            decoder_cross_heads=config.decoder_cross_heads, ffn_dim=config.ffn_dim)
        self.max_per_img = config.max_per_img
        if self.max_per_img > config.num_query * config.num_classes:
            raise ValueError(f"max_per_img ({self.max_per_img}) exceeds num_query * num_classes")

    def extract_feat(self, images: torch.Tensor):
        return self.neck(self.backbone(images))

    def forward(self, images: torch.Tensor, masks: Optional[torch.Tensor] = None
                ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
        B, _, H, W = images.shape
        if masks is None:
            masks = torch.zeros((B, H, W), dtype=torch.bool, device=images.device)
            valid_h = torch.full((B,), H, dtype=torch.float32, device=images.device)
            valid_w = torch.full((B,), W, dtype=torch.float32, device=images.device)
        else:
            if masks.dtype != torch.bool or tuple(masks.shape) != (B, H, W):
                raise ValueError(f"masks must be bool (B, H, W) = {(B, H, W)}, got {masks.dtype} {tuple(masks.shape)}")
            valid_h = (~masks[:, :, 0]).sum(1).float()
            valid_w = (~masks[:, 0, :]).sum(1).float()

        logits, boxes = self.query_head(self.extract_feat(images), masks)

        num_classes = logits.shape[-1]
        scores, index = logits.sigmoid().flatten(1).topk(self.max_per_img, dim=1)
        labels = index % num_classes
        query = index // num_classes
        boxes = torch.gather(boxes, 1, query.unsqueeze(-1).expand(-1, -1, 4))
        cx, cy, w, h = boxes.unbind(-1)
        boxes = torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], -1)
        size = torch.stack([valid_w, valid_h, valid_w, valid_h], -1)[:, None, :]
        boxes = torch.minimum((boxes * size).clamp(min=0), size)
        return boxes, scores, labels
