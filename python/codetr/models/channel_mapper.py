"""mmdetection's ChannelMapper neck as configured by Co-DINO (no activation, GroupNorm).

Each input level: 1x1 conv (no bias) + GroupNorm. Extra levels: a 3x3 stride-2 conv + GN whose
first input is the LAST BACKBONE feature (not the mapped one), later ones take the previous
extra output - exactly mmdet's rule. Names follow mmdet's ConvModule (``convs.N.conv``,
``convs.N.gn``, ``extra_convs.N.conv``, ``extra_convs.N.gn``).
"""
from __future__ import annotations

from typing import List, Sequence

import torch
from torch import nn


class ConvGN(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int,
                 num_groups: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                              padding=(kernel_size - 1) // 2, bias=False)
        self.gn = nn.GroupNorm(num_groups, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gn(self.conv(x))


class ChannelMapper(nn.Module):
    def __init__(self, in_channels: Sequence[int], out_channels: int, num_outs: int,
                 kernel_size: int = 1, num_groups: int = 32):
        super().__init__()
        if num_outs < len(in_channels):
            raise ValueError(f"num_outs ({num_outs}) must be >= number of inputs ({len(in_channels)})")
        self.num_inputs = len(in_channels)
        self.convs = nn.ModuleList(ConvGN(c, out_channels, kernel_size, 1, num_groups) for c in in_channels)
        extra = []
        for i in range(self.num_inputs, num_outs):
            src = in_channels[-1] if i == self.num_inputs else out_channels
            extra.append(ConvGN(src, out_channels, 3, 2, num_groups))
        self.extra_convs = nn.ModuleList(extra) if extra else None

    def forward(self, inputs: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        if len(inputs) != self.num_inputs:
            raise ValueError(f"ChannelMapper expects {self.num_inputs} feature maps, got {len(inputs)}")
        outs = [conv(x) for conv, x in zip(self.convs, inputs)]
        if self.extra_convs is not None:
            for i, conv in enumerate(self.extra_convs):
                outs.append(conv(inputs[-1] if i == 0 else outs[-1]))
        return outs
