"""Activation normalisation: per-channel affine maps (Kingma & Dhariwal 2018, sec. 3.1; Lu & Huang 2020, sec. 4.1)."""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

from .bijection import Bijection
from .encoders.conditioning import ConditioningNetwork


class ActNorm(Bijection):
    """Per-channel scale and bias, initialised from the first batch so its output is zero-mean, unit-variance.

    .. math:: v_{c,h,w} = (u_{c,h,w} + b_c)\\, e^{s_c}, \\qquad \\log|\\det J| = H W \\sum_c s_c

    Source: Kingma & Dhariwal 2018 (Glow), sec. 3.1. The ``initialized`` buffer is part of the state dict, so a
    restored or DDP-broadcast model does not re-initialise on its first batch.

    Args:
        channels: ``C`` of inputs shaped ``(B, C, H, W)``.
    """

    # Floor on the initial per-channel std: a channel that is constant in the first batch (binary data,
    # 1x1 spatial maps) would otherwise get a scale of ~1e6 and explode on the next batch.
    min_init_std = 1e-2

    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.log_scale = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.register_buffer("initialized", torch.tensor(0, dtype=torch.uint8))
        # A Python mirror of `initialized` once it is set, so the hot path branches on no tensor (which would
        # sync and break torch.compile's graph at every layer). False only means "look at the buffer".
        self._init_seen = False
        self.register_load_state_dict_post_hook(ActNorm._forget_init)

    @staticmethod
    def _forget_init(module: "ActNorm", incompatible_keys) -> None:
        module._init_seen = False

    @torch.no_grad()
    def _data_init(self, u: Tensor) -> None:
        n = u.shape[0] * u.shape[2] * u.shape[3]
        if n >= 2:
            mean = u.mean(dim=(0, 2, 3), keepdim=True)
            std = u.std(dim=(0, 2, 3), keepdim=True).clamp_min(self.min_init_std)
            self.bias.copy_(-mean)
            self.log_scale.copy_(-std.log())
        self.initialized.fill_(1)

    def forward(self, u: Tensor, cond: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        if not self._init_seen:
            if not self.initialized:
                self._data_init(u)
            self._init_seen = True
        v = (u + self.bias) * self.log_scale.exp()
        logdet = (u.shape[2] * u.shape[3]) * self.log_scale.sum()
        return v, logdet.expand(u.shape[0])

    def inverse(self, v: Tensor, cond: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        u = v * (-self.log_scale).exp() - self.bias
        logdet = -(v.shape[2] * v.shape[3]) * self.log_scale.sum()
        return u, logdet.expand(v.shape[0])


class ConditionalActNorm(Bijection):
    """Actnorm whose scale and bias are produced per sample by a conditioning network over ``cond``.

    .. math:: v_{c,h,w} = (u_{c,h,w} + b_c(x))\\, e^{s_c(x)}, \\qquad
              s_c(x) = S \\tanh\\big(r_c(x) / S\\big), \\qquad \\log|\\det J| = H W \\sum_c s_c(x)

    Source: Lu & Huang 2020 (c-Glow), sec. 4.1 ("conditional actnorm") and Appendix A, Figure 5a; ``(r, b)``
    is the conditioning network's output. The log-scale is bounded, ``|s| < S``: an unbounded ``r`` lets one
    large conditioning output blow up ``e^{s}`` and the log-determinant (the authors' release ends the network
    in tanh for this; ``S = 1`` is exactly their ``s = tanh(r)``, and any ``S`` keeps slope 1 at ``r = 0``).
    The bias is left unbounded (it does not enter the log-determinant; the release squashes it too).
    ``scale_bound=None`` (or 0) drops the bound: models saved before it was added. The network's last layer is
    zero-initialised, so ``r = b = 0`` and the layer starts as the identity.

    Args:
        channels: ``C`` of ``u`` ``(B, C, H, W)``.
        cond_channels, cond_size: channels and ``(H, W)`` of ``cond``; the fully connected layers need a fixed size.
        conv_channels, fc_width: width of the conditioning network's convolutions and FC layers.
        scale_bound: ``S``, the bound on the log-scale (``None`` or 0: unbounded).
    """

    networks = ("net",)  # the conditioning network; see flowlib.precision

    def __init__(self, channels: int, cond_channels: int, cond_size: tuple[int, int], conv_channels: int = 32,
                 fc_width: int = 32, scale_bound: Optional[float] = 1.0):
        super().__init__()
        if scale_bound is not None and not (math.isfinite(scale_bound) and scale_bound >= 0):
            raise ValueError(f"ConditionalActNorm: scale_bound must be a finite number >= 0 or None, got {scale_bound}")
        self.channels = channels
        self.scale_bound = float(scale_bound) if scale_bound else None
        self.net = ConditioningNetwork(cond_channels, cond_size, 2 * channels, conv_channels, fc_width)

    def _params(self, cond: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        if cond is None:
            raise ValueError("ConditionalActNorm needs cond (B, C_cond, H, W); got None")
        out = self.net(cond)
        log_scale, bias = out[:, : self.channels], out[:, self.channels:]
        if self.scale_bound is not None:
            log_scale = self.scale_bound * torch.tanh(log_scale / self.scale_bound)
        return log_scale[:, :, None, None], bias[:, :, None, None]

    def forward(self, u: Tensor, cond: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        log_scale, bias = self._params(cond)
        v = (u + bias) * log_scale.exp()
        return v, (u.shape[2] * u.shape[3]) * log_scale.sum(dim=(1, 2, 3))

    def inverse(self, v: Tensor, cond: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        log_scale, bias = self._params(cond)
        u = v * (-log_scale).exp() - bias
        return u, -(v.shape[2] * v.shape[3]) * log_scale.sum(dim=(1, 2, 3))
