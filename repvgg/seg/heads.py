"""The PSPNet head (pyramid pooling, as mmsegmentation's PSPHead) and the FCN auxiliary head."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def conv_bn_relu(cin: int, cout: int, k: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class PSPHead(nn.Module):
    """Pyramid pooling (bins 1, 2, 3, 6) on the last stage, a 3x3 bottleneck, dropout, 1x1 classifier."""

    def __init__(self, in_channels: int, num_classes: int, channels: int = 512, bins=(1, 2, 3, 6), dropout: float = 0.1):
        super().__init__()
        self.bins = tuple(bins)
        self.pools = nn.ModuleList(nn.Sequential(nn.AdaptiveAvgPool2d(b), conv_bn_relu(in_channels, channels, 1))
                                   for b in self.bins)
        self.bottleneck = conv_bn_relu(in_channels + len(self.bins) * channels, channels, 3)
        self.dropout = nn.Dropout2d(dropout)
        self.cls = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        outs = [x] + [F.interpolate(p(x), size=size, mode="bilinear", align_corners=False) for p in self.pools]
        return self.cls(self.dropout(self.bottleneck(torch.cat(outs, 1))))


class FCNHead(nn.Module):
    """The auxiliary head on the stage before the last (loss weight 0.4 in the paper's recipe)."""

    def __init__(self, in_channels: int, num_classes: int, channels: int = 256, dropout: float = 0.1):
        super().__init__()
        self.conv = conv_bn_relu(in_channels, channels, 3)
        self.dropout = nn.Dropout2d(dropout)
        self.cls = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cls(self.dropout(self.conv(x)))
