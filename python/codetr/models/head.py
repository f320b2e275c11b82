"""CoDINOHead inference path (eval_module='detr'): positional encodings of the padding mask,
the CoDinoTransformer, and the last decoder layer's classification / box regression.
Key names follow mmdet (``query_head.cls_branches.N``, ``query_head.reg_branches.N.{0,2,4}``,
``query_head.transformer.*``)."""
from __future__ import annotations

from typing import List, Tuple

import torch
from torch import nn
import torch.nn.functional as F

from codetr.models.transformer import CoDinoTransformer, inverse_sigmoid, sine_positional_encoding


def _reg_branch(embed_dims: int) -> nn.Sequential:
    # num_reg_fcs = 2: Linear, ReLU, Linear, ReLU, Linear(4) -> keys 0, 2, 4
    return nn.Sequential(nn.Linear(embed_dims, embed_dims), nn.ReLU(), nn.Linear(embed_dims, embed_dims),
                         nn.ReLU(), nn.Linear(embed_dims, 4))


class CoDINOHead(nn.Module):
    def __init__(self, num_classes: int, embed_dims: int, pos_num_feats: int, pos_temperature: float,
                 **transformer_args):
        super().__init__()
        if 2 * pos_num_feats != embed_dims:
            raise ValueError(f"embed_dims ({embed_dims}) must be 2 * positional num_feats ({pos_num_feats})")
        self.num_classes = num_classes
        self.pos_num_feats = pos_num_feats
        self.pos_temperature = pos_temperature
        self.transformer = CoDinoTransformer(embed_dims=embed_dims, **transformer_args)
        num_pred = self.transformer.decoder.num_layers + 1  # + the encoder proposal branch
        self.cls_branches = nn.ModuleList(nn.Linear(embed_dims, num_classes) for _ in range(num_pred))
        self.reg_branches = nn.ModuleList(_reg_branch(embed_dims) for _ in range(num_pred))

    def forward(self, feats: List[torch.Tensor], masks: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """feats: neck outputs; masks (B, H, W) bool, True = padding.
        Returns logits (B, Q, num_classes) and boxes (B, Q, 4) normalised cxcywh, both float32."""
        level_masks, level_pos = [], []
        for feat in feats:
            # nearest resize of the image mask, as mmdet does per level
            m = F.interpolate(masks[None].float(), size=(feat.shape[2], feat.shape[3]))[0].to(torch.bool)
            level_masks.append(m)
            level_pos.append(sine_positional_encoding(m, self.pos_num_feats, self.pos_temperature))
        hidden, reference = self.transformer(feats, level_masks, level_pos, self.cls_branches, self.reg_branches)
        last = self.transformer.decoder.num_layers - 1
        logits = self.cls_branches[last](hidden).float()
        boxes = (self.reg_branches[last](hidden).float() + inverse_sigmoid(reference, eps=1e-3)).sigmoid()
        return logits, boxes
