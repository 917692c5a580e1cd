"""VGG-like multi-resolution feature extractor for the DRIVE CNF (Winkler et al. 2019, sec. 5.2, Table 4)."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ..subnets import InstanceNorm2d


class VGGBlock(nn.Module):
    """``[InstanceNorm, ReLU, Conv3x3]`` (pre-activation block of Winkler et al. 2019, sec. 5.2)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.norm = InstanceNorm2d(in_channels)
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)

    def forward(self, a: Tensor) -> Tensor:
        return self.conv(F.relu(self.norm(a)))


class VGGEncoder(nn.Module):
    """Blocks and 2x2 max-pools producing one feature map per flow level, at that level's resolution.

    .. math:: h_l = g_l(x) \\in \\mathbb{R}^{B \\times C_h \\times H/2^{l+1} \\times W/2^{l+1}}, \\quad l = 0..L-1

    Source: Winkler et al. 2019, Table 4: block, max-pool, block, block (output at layer 4, half resolution),
    max-pool, block, block (output at layer 7, quarter resolution). Each further level repeats
    [max-pool, block, block]. The first block starts with its convolution: a ReLU on the raw normalised image
    would discard half its intensities before any learned layer.

    Args:
        in_channels: channels of ``x``; width: channels of every block (``C_h``); levels: number of outputs.
    """

    def __init__(self, in_channels: int, width: int = 32, levels: int = 2):
        super().__init__()
        self.out_channels = width
        self.levels = levels
        self.stem = nn.Conv2d(in_channels, width, 3, padding=1)
        self.stages = nn.ModuleList(nn.Sequential(VGGBlock(width, width), VGGBlock(width, width))
                                    for _ in range(levels))

    def forward(self, x: Tensor) -> list[Tensor]:
        a = self.stem(x)
        outs = []
        for stage in self.stages:
            # ceil_mode keeps odd sizes from losing a row; the flow resamples to the exact level size anyway.
            a = stage(F.max_pool2d(a, 2, ceil_mode=True))
            outs.append(a)
        return outs
