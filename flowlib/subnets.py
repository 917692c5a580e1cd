"""Coupling subnetworks ``NN([z_1, h])`` that output the coupling's scale/translation parameters."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layout import Conv1x1, is_channels_last

SUBNETS = ("sr", "drive", "glow")


class InstanceNorm2d(nn.Module):
    """Instance normalisation (Ulyanov et al. 2016) with a learned affine map, per sample and channel.

    .. math:: \\mathrm{IN}(a)_{c,h,w} = \\gamma_c (a_{c,h,w} - \\mu_c) / \\sqrt{\\sigma_c^2 + \\epsilon} + \\beta_c

    On a 1x1 map the statistics are undefined (PyTorch raises); there it applies only the affine part, so
    tiny test shapes and the deepest levels of small images still run.
    """

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, a: Tensor) -> Tensor:
        if a.shape[2] * a.shape[3] > 1:
            if is_channels_last(a):
                # F.instance_norm reshapes to NCHW (two copies); per-sample moments then one fused pass keep NHWC.
                var, mean = torch.var_mean(a, dim=(2, 3), keepdim=True, correction=0)
                scale = self.weight[None, :, None, None] * torch.rsqrt(var + self.eps)
                return torch.addcmul(self.bias[None, :, None, None] - mean * scale, a, scale)
            return F.instance_norm(a, weight=self.weight, bias=self.bias, eps=self.eps)
        return a * self.weight[None, :, None, None] + self.bias[None, :, None, None]


class ZeroConv2d(nn.Module):
    """Glow's zero-initialised output convolution with a learned per-channel log-scale ``3 * logs``.

    .. math:: o = (W * a + b)\\, e^{3 \\cdot \\mathrm{logs}}

    Source: Kingma & Dhariwal 2018, sec. 3.3 ("Zero initialization") and their code (``Conv2dZeros``).
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)
        self.logs = nn.Parameter(torch.zeros(1, out_channels, 1, 1))

    def forward(self, a: Tensor) -> Tensor:
        return self.conv(a) * (3 * self.logs).exp()


def _zero_conv(in_channels: int, out_channels: int, kernel: int) -> nn.Conv2d:
    conv = nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2)
    # Zero output => the coupling starts as the identity, so a deep flow starts well conditioned
    # (Kingma & Dhariwal 2018, sec. 3.3).
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


def make_subnet(kind: str, in_channels: int, out_channels: int, hidden: int) -> nn.Module:
    """Build a coupling subnetwork ``(B, in_channels, H, W) -> (B, out_channels, H, W)``; last layer zero.

    - ``"sr"``: Conv3x3-ReLU-Conv1x1-ReLU-Conv3x3 (Winkler et al. 2019, Table 6; 512 wide in the paper).
    - ``"drive"``: Conv3x3-InstanceNorm-ReLU-Conv3x3 (Winkler et al. 2019, Table 7; 32 wide in the paper).
    - ``"glow"``: Conv3x3-ReLU-Conv1x1-ReLU-ZeroConv3x3 with learned output scale (Lu & Huang 2020, sec. 5.1:
      "three convolutional layers with 256 channels", Glow's NN).
    """
    if kind == "sr":
        return nn.Sequential(nn.Conv2d(in_channels, hidden, 3, padding=1), nn.ReLU(),
                             Conv1x1(hidden, hidden), nn.ReLU(), _zero_conv(hidden, out_channels, 3))
    if kind == "drive":
        return nn.Sequential(nn.Conv2d(in_channels, hidden, 3, padding=1), InstanceNorm2d(hidden), nn.ReLU(),
                             _zero_conv(hidden, out_channels, 3))
    if kind == "glow":
        return nn.Sequential(nn.Conv2d(in_channels, hidden, 3, padding=1), nn.ReLU(),
                             Conv1x1(hidden, hidden), nn.ReLU(), ZeroConv2d(hidden, out_channels))
    raise ValueError(f"unknown subnet {kind!r}; expected one of {SUBNETS}")
