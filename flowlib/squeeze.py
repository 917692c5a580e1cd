"""Space-to-depth squeeze (Dinh et al. 2016, sec. 3.6; Kingma & Dhariwal 2018, sec. 3)."""
from __future__ import annotations

from typing import Optional

from torch import Tensor

from .bijection import Bijection
from .layout import is_channels_last


def squeeze2d(u: Tensor, factor: int = 2) -> Tensor:
    """Move each ``factor x factor`` spatial block into channels: ``(B, C, H, W) -> (B, C f^2, H/f, W/f)``.

    Output channel ``c f^2 + i f + j`` holds pixel ``(i, j)`` of each block. A ``channels_last`` input gives a
    ``channels_last`` output (one copy either way), so convolutions after the squeeze need no layout change.
    """
    b, c, h, w = u.shape
    if h % factor or w % factor:
        raise ValueError(f"squeeze needs H and W divisible by {factor}, got shape {tuple(u.shape)}")
    if is_channels_last(u):
        t = u.permute(0, 2, 3, 1).reshape(b, h // factor, factor, w // factor, factor, c)
        t = t.permute(0, 1, 3, 5, 2, 4).reshape(b, h // factor, w // factor, c * factor * factor)
        return t.permute(0, 3, 1, 2)
    u = u.reshape(b, c, h // factor, factor, w // factor, factor)
    return u.permute(0, 1, 3, 5, 2, 4).reshape(b, c * factor * factor, h // factor, w // factor)


def unsqueeze2d(v: Tensor, factor: int = 2) -> Tensor:
    """Inverse of :func:`squeeze2d`: ``(B, C f^2, H, W) -> (B, C, H f, W f)``; keeps ``channels_last``."""
    b, c, h, w = v.shape
    if c % (factor * factor):
        raise ValueError(f"unsqueeze needs C divisible by {factor * factor}, got shape {tuple(v.shape)}")
    c_out = c // (factor * factor)
    if is_channels_last(v):
        t = v.permute(0, 2, 3, 1).reshape(b, h, w, c_out, factor, factor)
        t = t.permute(0, 1, 4, 2, 5, 3).reshape(b, h * factor, w * factor, c_out)
        return t.permute(0, 3, 1, 2)
    v = v.reshape(b, c_out, factor, factor, h, w)
    return v.permute(0, 1, 4, 2, 5, 3).reshape(b, c_out, h * factor, w * factor)


class Squeeze(Bijection):
    """Space-to-depth reshaping; a permutation of coordinates, so volume preserving.

    .. math:: v_{c f^2 + i f + j,\\, h, w} = u_{c,\\, h f + i,\\, w f + j}, \\qquad \\log|\\det J| = 0

    Source: Dinh et al. 2016 (Real NVP), sec. 3.6.
    """

    def __init__(self, factor: int = 2):
        super().__init__()
        self.factor = factor

    def forward(self, u: Tensor, cond: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        return squeeze2d(u, self.factor), u.new_zeros(u.shape[0])

    def inverse(self, v: Tensor, cond: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        return unsqueeze2d(v, self.factor), v.new_zeros(v.shape[0])
