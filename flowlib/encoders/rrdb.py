"""Residual-in-residual dense block encoder ``h = g(x)`` (Wang et al. 2018, ESRGAN; Winkler et al. 2019, Table 8)."""
from __future__ import annotations

import torch
from torch import Tensor, nn


class ResidualDenseBlock(nn.Module):
    """Five densely connected 3x3 convolutions, each seeing all earlier outputs; scaled residual.

    .. math:: a_k = \\mathrm{LReLU}(\\mathrm{Conv}([a_0, \\dots, a_{k-1}])),\\; k<5; \\qquad
              \\mathrm{RDB}(a_0) = a_0 + 0.2\\, \\mathrm{Conv}([a_0, \\dots, a_4])

    Source: Wang et al. 2018 (ESRGAN), sec. 3.1 and Figure 4; residual scaling 0.2 as there.
    """

    def __init__(self, channels: int, growth: int, residual_scale: float = 0.2):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(channels + k * growth, growth if k < 4 else channels, 3, padding=1)
                                   for k in range(5))
        self.act = nn.LeakyReLU(0.2)
        self.residual_scale = residual_scale

    def forward(self, a: Tensor) -> Tensor:
        feats = [a]
        for k, conv in enumerate(self.convs):
            out = conv(torch.cat(feats, dim=1))
            if k < 4:
                feats.append(self.act(out))
        return a + self.residual_scale * out


class RRDB(nn.Module):
    """Three residual dense blocks inside a scaled residual connection.

    .. math:: \\mathrm{RRDB}(a) = a + 0.2\\, \\mathrm{RDB}_3(\\mathrm{RDB}_2(\\mathrm{RDB}_1(a)))

    Source: Wang et al. 2018 (ESRGAN), Figure 4.
    """

    def __init__(self, channels: int, growth: int, residual_scale: float = 0.2):
        super().__init__()
        self.blocks = nn.Sequential(*(ResidualDenseBlock(channels, growth, residual_scale) for _ in range(3)))
        self.residual_scale = residual_scale

    def forward(self, a: Tensor) -> Tensor:
        return a + self.residual_scale * self.blocks(a)


class RRDBEncoder(nn.Module):
    """ESRGAN trunk without upsampling: ``h = \\mathrm{Conv}(\\mathrm{RRDB}^{n}(a)) + a``, ``a = \\mathrm{Conv}(x)``.

    .. math:: h = g(x) \\in \\mathbb{R}^{B \\times C_h \\times H_x \\times W_x}

    Source: Winkler et al. 2019, sec. 5.1 and Table 8 (16 blocks, channel growth 32 for the CNF); Wang et al.
    2018 for the block. ``h`` stays at the resolution of ``x``; the flow resamples it to each level.

    Args:
        in_channels: channels of ``x``; context_channels: ``C_h``; blocks: number of RRDBs; growth: dense growth.
    """

    def __init__(self, in_channels: int, context_channels: int = 64, blocks: int = 16, growth: int = 32):
        super().__init__()
        self.out_channels = context_channels
        self.conv_first = nn.Conv2d(in_channels, context_channels, 3, padding=1)
        self.body = nn.Sequential(*(RRDB(context_channels, growth) for _ in range(blocks)))
        self.conv_body = nn.Conv2d(context_channels, context_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        a = self.conv_first(x)
        return a + self.conv_body(self.body(a))
