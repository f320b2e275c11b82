"""mmdetection's ResNet (style 'pytorch': the stride sits on the 3x3 conv), inference only.

Module names follow mmdet's state_dict (``conv1``, ``bn1``, ``layer1.0.downsample.0`` ...), so
checkpoints load 1:1. BatchNorm runs in eval mode (mmdet uses ``norm_eval=True``).
"""
from __future__ import annotations

from typing import List, Sequence

import torch
from torch import nn
from torch.nn import functional as F

# blocks per stage for the Bottleneck depths mmdet supports
RESNET_STAGE_BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int, downsample: nn.Module | None):
        super().__init__()
        out_channels = planes * self.expansion
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def max_pool_3x3_s2(x: torch.Tensor) -> torch.Tensor:
    """``nn.MaxPool2d(3, stride=2, padding=1)``, the same values bit for bit (a max of the same
    elements), written with pads, even/odd splits and slices.

    MaxPool2d's shape function branches on the parity of its input size, so a size-dynamic
    ``torch.export`` would fix every engine to the parity of its example input. Here each side is
    padded (with -inf) to exactly 2 * out + 2 and split into its even and odd elements (out + 1
    each): the window of output i is even[i], odd[i], even[i + 1]."""
    for dim in (-1, -2):
        size = x.shape[dim]
        out = (size - 1) // 2 + 1
        pad = [0, 0, 0, 0]
        pad[0 if dim == -1 else 2] = 1
        pad[1 if dim == -1 else 3] = 2 * out + 1 - size
        padded = F.pad(x, pad, value=float("-inf"))
        if dim == -1:
            even, odd = padded[..., 0::2], padded[..., 1::2]
            x = torch.maximum(torch.maximum(even[..., :out], odd[..., :out]), even[..., 1:])
        else:
            even, odd = padded[..., 0::2, :], padded[..., 1::2, :]
            x = torch.maximum(torch.maximum(even[..., :out, :], odd[..., :out, :]), even[..., 1:, :])
    return x


class ResNet(nn.Module):
    """Bottleneck ResNet; returns the outputs of the stages in ``out_indices`` (strides 4..32)."""

    def __init__(self, depth: int = 50, base_channels: int = 64,
                 out_indices: Sequence[int] = (0, 1, 2, 3)):
        super().__init__()
        if depth not in RESNET_STAGE_BLOCKS:
            raise ValueError(f"unsupported ResNet depth {depth}; expected one of {sorted(RESNET_STAGE_BLOCKS)}")
        self.out_indices = tuple(out_indices)
        stem_channels = base_channels  # mmdet: stem_channels defaults to base_channels
        self.conv1 = nn.Conv2d(3, stem_channels, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_channels)
        self.relu = nn.ReLU(inplace=True)
        in_channels = stem_channels
        self.out_channels: List[int] = []
        self.res_layers: List[str] = []
        for i, num_blocks in enumerate(RESNET_STAGE_BLOCKS[depth]):
            planes = base_channels * 2 ** i
            stride = 1 if i == 0 else 2
            out_channels = planes * Bottleneck.expansion
            downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels))
            blocks = [Bottleneck(in_channels, planes, stride, downsample)]
            blocks += [Bottleneck(out_channels, planes, 1, None) for _ in range(num_blocks - 1)]
            name = f"layer{i + 1}"
            self.add_module(name, nn.Sequential(*blocks))
            self.res_layers.append(name)
            self.out_channels.append(out_channels)
            in_channels = out_channels

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        x = max_pool_3x3_s2(self.relu(self.bn1(self.conv1(x))))
        outs = []
        for i, name in enumerate(self.res_layers):
            x = getattr(self, name)(x)
            if i in self.out_indices:
                outs.append(x)
        return outs
