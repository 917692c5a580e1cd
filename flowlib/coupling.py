"""Conditional coupling layers (Dinh et al. 2016; Winkler et al. 2019, sec. 3.1; Lu & Huang 2020, sec. 4.1)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from .bijection import Bijection, sum_except_batch
from .layout import cat_channels
from .subnets import make_subnet


class _Coupling(Bijection):
    """Shared plumbing: split channels ``u = [u_1, u_2]``, run the subnet on ``[u_1, h]``."""

    #: the children that are plain networks, not bijective arithmetic (:func:`flowlib.precision.mixed_precision`)
    networks = ("subnet", "cond_net")

    def __init__(self, channels: int, cond_channels: int, hidden: int, subnet: str, params_per_channel: int,
                 cond_net: Optional[nn.Module], cond_features: Optional[int]):
        super().__init__()
        if channels < 2:
            raise ValueError(f"coupling needs at least 2 channels to split, got {channels}")
        # u_1 is the larger half for odd C so the subnet always sees something.
        self.c1 = channels - channels // 2
        self.c2 = channels // 2
        self.cond_channels = cond_channels
        self.cond_net = cond_net
        feat = cond_channels if cond_net is None else int(cond_features if cond_features is not None
                                                           else cond_net.out_channels)
        self.subnet = make_subnet(subnet, self.c1 + feat, params_per_channel * self.c2, hidden)

    def _subnet_out(self, u1: Tensor, cond: Optional[Tensor]) -> Tensor:
        if self.cond_channels:
            if cond is None:
                raise ValueError(f"{type(self).__name__} was built with cond_channels={self.cond_channels}; "
                                 "got cond=None")
            h = cond if self.cond_net is None else self.cond_net(cond)
            u1 = cat_channels([u1, h])
        return self.subnet(u1)


class AffineCoupling(_Coupling):
    """Affine coupling with Glow's stable sigmoid scale; the subnet sees ``[u_1, h]``.

    .. math:: v_1 = u_1, \\quad v_2 = (u_2 + t(u_1, h)) \\odot s(u_1, h), \\quad
              s = \\sigma(\\tilde s + 2), \\quad \\log|\\det J| = \\sum \\log s

    Source: Winkler et al. 2019, sec. 3.1 ("conditional coupling", ``t(z_1, x) = NN([z_1, h])``); Kingma &
    Dhariwal 2018, sec. 3.3 and their code for the shifted sigmoid (bounded scale in (0, 1), ~0.88 at
    initialisation, so no step can blow up activations). c-Glow's conditional affine coupling (Lu & Huang 2020,
    sec. 4.1) is this layer with ``cond_net`` a :class:`~flowlib.encoders.conditioning.CouplingFeatureNetwork`.

    Args:
        channels: ``C`` of ``u`` ``(B, C, H, W)``; odd ``C`` splits as ``ceil(C/2)`` kept, ``floor(C/2)`` changed.
        cond_channels: channels of ``cond`` (0: unconditional). hidden, subnet: see :func:`make_subnet`.
        cond_net: optional feature network applied to ``cond`` before concatenation, with ``cond_features``
            (or its ``out_channels``) output channels.
    """

    def __init__(self, channels: int, cond_channels: int = 0, hidden: int = 64, subnet: str = "sr",
                 cond_net: Optional[nn.Module] = None, cond_features: Optional[int] = None):
        super().__init__(channels, cond_channels, hidden, subnet, 2, cond_net, cond_features)

    def _scale_shift(self, u1: Tensor, cond: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        out = self._subnet_out(u1, cond)
        raw, shift = out[:, : self.c2], out[:, self.c2:]
        return torch.sigmoid(raw + 2.0), shift

    def forward(self, u: Tensor, cond: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        u1, u2 = u[:, : self.c1], u[:, self.c1:]
        scale, shift = self._scale_shift(u1, cond)
        v2 = (u2 + shift) * scale
        return cat_channels([u1, v2]), sum_except_batch(torch.log(scale))

    def inverse(self, v: Tensor, cond: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        v1, v2 = v[:, : self.c1], v[:, self.c1:]
        scale, shift = self._scale_shift(v1, cond)
        u2 = v2 / scale - shift
        return cat_channels([v1, u2]), -sum_except_batch(torch.log(scale))


class AdditiveCoupling(_Coupling):
    """Additive (translation-only) coupling: volume preserving.

    .. math:: v_1 = u_1, \\quad v_2 = u_2 + t(u_1, h), \\quad \\log|\\det J| = 0

    Source: Dinh et al. 2014 (NICE), eq. 4; Winkler et al. 2019, sec. 5.2 ("the conditional affine coupling
    layers do not contain a scaling component s(.) but just the translation t(.)") for DRIVE.

    Args: as :class:`AffineCoupling`.
    """

    def __init__(self, channels: int, cond_channels: int = 0, hidden: int = 64, subnet: str = "drive",
                 cond_net: Optional[nn.Module] = None, cond_features: Optional[int] = None):
        super().__init__(channels, cond_channels, hidden, subnet, 1, cond_net, cond_features)

    def forward(self, u: Tensor, cond: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        u1, u2 = u[:, : self.c1], u[:, self.c1:]
        return cat_channels([u1, u2 + self._subnet_out(u1, cond)]), u.new_zeros(u.shape[0])

    def inverse(self, v: Tensor, cond: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        v1, v2 = v[:, : self.c1], v[:, self.c1:]
        return cat_channels([v1, v2 - self._subnet_out(v1, cond)]), v.new_zeros(v.shape[0])
