r"""Dequantizers: continuous ``v`` for a discrete ``y`` and the exact ``\log q(v|y,x)`` of the bound.

Every dequantizer exposes ``dequantize(y, x) -> (v, log_q)`` with ``log_q`` of shape ``(B,)``. A flow with
density ``p(v|x)`` then gives the variational dequantization bound (Winkler et al. 2019, eq. 5; Ho et al.
2019, sec. 3.1)

.. math:: \log P(y|x) \ge \mathbb{E}_{q(v|y,x)}\left[\log p(v|x) - \log q(v|y,x)\right],

valid whenever ``q(.|y,x)`` puts all its mass inside the quantizer cell of ``y`` and the cells of all ``y``
are disjoint, so that ``\sum_y P(y|x) \le 1``. ``v`` is returned in the unit scale ``[0, 1)`` (cell of
``y``: ``[y/L, (y+1)/L)`` for ``L`` levels; binary: a half-space), and ``log_q`` is the density of ``v`` in
that scale: every rescaling's Jacobian is inside it. The model centres ``v`` (``v - 0.5``, Jacobian 1).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .bijection import Bijection, Sequential, sum_except_batch
from .layout import Conv1x1, cat_channels

__all__ = [
    "UniformDequantizer",
    "VariationalDequantizer",
    "BinaryDequantizer",
    "CheckerboardAffineCoupling",
    "build_dequantizer",
    "quantize",
    "DEQUANTIZATIONS",
]

DEQUANTIZATIONS = ("uniform", "variational", "binary")
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def standard_normal_log_prob(e: Tensor) -> Tensor:
    r"""``\sum_i \log N(e_i; 0, 1)`` per sample, shape ``(B,)``."""
    return sum_except_batch(-0.5 * e.pow(2) - _HALF_LOG_2PI)


def quantize(v: Tensor, levels: int) -> Tensor:
    r"""The quantizer's cell index of ``v``: ``y = \min(\lfloor L v \rfloor, L - 1)`` clamped at 0.

    Inverts every dequantizer here: uniform/variational put ``v`` in ``[y/L, (y+1)/L)``; binary puts it in
    the half-space ``v > 0.5`` for ``y = 1`` (``L = 2``). Source: Theis et al. 2016, sec. 3.1.
    """
    return torch.floor(v * levels).clamp_(0, levels - 1)


def _resample(t: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resampling of conditioning features to the target resolution (the model's job, not a layer's)."""
    if tuple(t.shape[-2:]) == tuple(size):
        return t
    return F.interpolate(t, size=size, mode="bilinear", align_corners=False)


class CheckerboardAffineCoupling(Bijection):
    r"""Conditional affine coupling with a spatial checkerboard mask, usable at any channel count.

    .. math:: v = m \odot u + (1 - m) \odot \left(u \odot \sigma(s + 2) + t\right),\quad
              (s, t) = \mathrm{NN}([m \odot u, c])

    ``\log|\det| = \sum (1 - m) \log \sigma(s + 2)``. The shifted sigmoid scale (Glow's code) keeps the map
    near volume preserving at init; the zero-initialised output convolution makes it the identity up to the
    constant scale ``\sigma(2)``. Source: Dinh et al. 2016 (Real NVP), sec. 3.4; the conditional form of
    Winkler et al. 2019, sec. 3.1.

    Args: ``channels`` of ``u`` (B, C, H, W); ``cond_channels`` of ``cond`` (B, Cc, H, W); ``parity`` picks
    which squares pass through unchanged.
    """

    networks = ("net",)  # see flowlib.precision

    def __init__(self, channels: int, cond_channels: int, hidden: int, parity: int):
        super().__init__()
        self.parity = int(parity) % 2
        self.net = nn.Sequential(
            nn.Conv2d(channels + cond_channels, hidden, 3, padding=1), nn.ReLU(),
            Conv1x1(hidden, hidden), nn.ReLU(),
            nn.Conv2d(hidden, 2 * channels, 3, padding=1),
        )
        # zero-initialised output: the coupling starts as a fixed scaling, so the dequantizer starts uniform-ish
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)
        self._masks: dict[tuple, Tensor] = {}

    def _mask(self, u: Tensor) -> Tensor:
        """The checkerboard ``m`` at ``u``'s size, built once per size, dtype and device."""
        h, w = u.shape[-2:]
        key = (h, w, u.dtype, u.device)
        mask = self._masks.get(key)
        if mask is None:
            # A constant of training graphs too, so never an inference-mode tensor (which autograd cannot save).
            with torch.inference_mode(False):
                ii = torch.arange(h, device=u.device).view(h, 1)
                jj = torch.arange(w, device=u.device).view(1, w)
                mask = ((ii + jj + self.parity) % 2).to(u.dtype).expand(1, 1, h, w)
            if not torch.compiler.is_compiling():
                self._masks[key] = mask
        return mask

    def _scale_shift(self, u_kept: Tensor, cond: Optional[Tensor], mask: Tensor) -> tuple[Tensor, Tensor]:
        inp = u_kept if cond is None else cat_channels([u_kept, cond])
        s, t = self.net(inp).chunk(2, dim=1)
        log_scale = F.logsigmoid(s + 2.0) * (1 - mask)
        return log_scale, t * (1 - mask)

    def forward(self, u: Tensor, cond: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        mask = self._mask(u)
        log_scale, t = self._scale_shift(u * mask, cond, mask)
        v = u * torch.exp(log_scale) + t
        return v, sum_except_batch(log_scale)

    def inverse(self, v: Tensor, cond: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        mask = self._mask(v)
        log_scale, t = self._scale_shift(v * mask, cond, mask)
        u = (v - t) * torch.exp(-log_scale)
        return u, -sum_except_batch(log_scale)


class ChannelAffine(Bijection):
    r"""Learned per-channel scale and shift, ``v = u \odot e^{s} + b``; ``\log|\det| = H W \sum_c s_c``.

    Zero-initialised (identity). The shifted-sigmoid couplings can only contract, so this is what lets the
    dequantizer's noise widen as well. Source: Kingma & Dhariwal 2018 (Glow), sec. 3.1, without the
    data-dependent initialisation.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.log_scale = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.shift = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, u: Tensor, cond: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        logdet = self.log_scale.sum() * u.shape[-2] * u.shape[-1]
        return u * torch.exp(self.log_scale) + self.shift, logdet.expand(u.shape[0])

    def inverse(self, v: Tensor, cond: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        logdet = self.log_scale.sum() * v.shape[-2] * v.shape[-1]
        return (v - self.shift) * torch.exp(-self.log_scale), -logdet.expand(v.shape[0])


class _ConditionFeatures(nn.Module):
    """Small conv net ``h = g(x)`` for the dequantizer, on ``x`` resampled to ``y``'s resolution."""

    def __init__(self, x_channels: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(x_channels, hidden, 3, padding=1), nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, padding=1), nn.ReLU(),
        )

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        return self.net(_resample(x, size))


class UniformDequantizer(nn.Module):
    r"""Uniform dequantization: ``v = (y + u) / L``, ``u \sim U[0, 1)^D``, so ``q(v|y) = L^D`` on the cell.

    .. math:: \log q(v|y) = D \log L, \qquad
              \log P(y|x) \ge \mathbb{E}_u[\log p(v|x)] - D \log L

    For 8-bit images ``L = 256`` (the ``- D log 256`` is the Jacobian of ``v = (y+u)/256``); for binary or
    one-hot channels ``L = 2`` (Winkler et al. 2019, Table 3, "CNF uniform"). Source: Theis et al. 2016,
    sec. 3.1; Winkler et al. 2019, sec. 5.1.
    """

    def __init__(self, levels: int = 256):
        super().__init__()
        if int(levels) < 2:
            raise ValueError(f"UniformDequantizer: levels must be >= 2, got {levels}")
        self.levels = int(levels)

    def dequantize_from_noise(self, y: Tensor, x: Optional[Tensor], u: Tensor) -> tuple[Tensor, Tensor]:
        """The map ``u -> v`` for given noise ``u`` in ``[0, 1)^D`` (same shape as ``y``)."""
        v = (y + u) / self.levels
        d = y[0].numel()
        return v, y.new_full((y.shape[0],), d * math.log(self.levels))

    def dequantize(self, y: Tensor, x: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """``y`` (B, C, H, W) integer-valued in ``0..L-1`` -> ``(v, log_q)``, ``v`` in ``[0, 1)``, ``log_q`` (B,)."""
        return self.dequantize_from_noise(y, x, torch.rand_like(y))

    def log_q(self, v: Tensor, y: Tensor, x: Optional[Tensor] = None) -> Tensor:
        r"""``\log q(v|y)``: ``D log L`` inside the cell of ``y``, ``-inf`` outside, shape (B,)."""
        inside = (quantize(v, self.levels) == y).flatten(1).all(1)
        d = y[0].numel() * math.log(self.levels)
        return torch.where(inside, v.new_full((v.shape[0],), d), v.new_full((v.shape[0],), -math.inf))


class _NoiseFlowDequantizer(nn.Module):
    r"""Shared part of the flow-based dequantizers: ``e \sim N(0, I)``, ``a = f(e; [y, g(x)])`` single scale.

    ``\log q(a|y,x) = \log N(e) - \log|\det \partial a / \partial e|``; subclasses squash ``a`` into the cell
    of ``y`` and subtract the squashing's log-Jacobian.
    """

    networks = ("features",)  # see flowlib.precision

    def __init__(self, y_shape, x_shape, steps: int, hidden: int):
        super().__init__()
        c, h, w = (int(s) for s in y_shape)
        if int(steps) < 1 or int(hidden) < 1:
            raise ValueError(f"dequantizer: steps and hidden must be >= 1, got steps={steps}, hidden={hidden}")
        self.y_shape = (c, h, w)
        self.features = None if x_shape is None else _ConditionFeatures(int(x_shape[0]), hidden)
        cond_channels = c + (0 if x_shape is None else hidden)
        # alternating parity so that after two couplings every element has been transformed
        self.flow = Sequential(
            [ChannelAffine(c)]
            + [CheckerboardAffineCoupling(c, cond_channels, hidden, parity=k) for k in range(2 * int(steps))]
        )

    def _cond(self, y_code: Tensor, x: Optional[Tensor]) -> Tensor:
        if self.features is None:
            return y_code
        if x is None:
            raise ValueError("dequantizer was built with x_shape, so dequantize(y, x) needs x")
        return cat_channels([y_code, self.features(x, tuple(y_code.shape[-2:]))])

    def _noise_to_a(self, y_code: Tensor, x: Optional[Tensor], e: Tensor) -> tuple[Tensor, Tensor]:
        a, logdet = self.flow(e, self._cond(y_code, x))
        return a, standard_normal_log_prob(e) - logdet

    def _a_log_prob(self, y_code: Tensor, x: Optional[Tensor], a: Tensor) -> Tensor:
        e, logdet_inverse = self.flow.inverse(a, self._cond(y_code, x))
        return standard_normal_log_prob(e) + logdet_inverse

    def dequantize(self, y: Tensor, x: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """``y`` (B, C, H, W), ``x`` (B, Cx, Hx, Wx) -> ``(v, log_q)`` with a fresh ``e ~ N(0, I)``."""
        return self.dequantize_from_noise(y, x, torch.randn_like(y))

    def dequantize_from_noise(self, y: Tensor, x: Optional[Tensor], e: Tensor):  # pragma: no cover
        raise NotImplementedError


class VariationalDequantizer(_NoiseFlowDequantizer):
    r"""Flow++ variational dequantization: ``v = (y + \sigma(a)) / L`` with ``a = f(e; [y, g(x)])``.

    .. math:: \log q(v|y,x) = \log N(e) - \log\left|\det \tfrac{\partial a}{\partial e}\right|
              - \sum_i \left[\log \sigma(a_i) + \log \sigma(-a_i)\right] + D \log L

    (``\sigma' = \sigma(a)\sigma(-a)``; ``+ D log L`` from the ``1/L`` rescaling). ``q`` is supported on the
    cell ``[y/L, (y+1)/L)``, so the bound is valid. Source: Ho et al. 2019 (Flow++), sec. 3.1.
    """

    def __init__(self, y_shape, x_shape=None, levels: int = 256, steps: int = 2, hidden: int = 32):
        super().__init__(y_shape, x_shape, steps, hidden)
        if int(levels) < 2:
            raise ValueError(f"VariationalDequantizer: levels must be >= 2, got {levels}")
        self.levels = int(levels)

    def dequantize_from_noise(self, y: Tensor, x: Optional[Tensor], e: Tensor) -> tuple[Tensor, Tensor]:
        """The map ``e -> v`` for given standard normal noise ``e`` (same shape as ``y``)."""
        y_code = y / (self.levels - 1) - 0.5  # the cell index, centred, as a conditioning signal
        a, log_q_a = self._noise_to_a(y_code, x, e)
        v = (y + torch.sigmoid(a)) / self.levels
        log_jac = sum_except_batch(F.logsigmoid(a) + F.logsigmoid(-a)) - y[0].numel() * math.log(self.levels)
        return v, log_q_a - log_jac

    def log_q(self, v: Tensor, y: Tensor, x: Optional[Tensor] = None) -> Tensor:
        r"""``\log q(v|y,x)`` at given ``v`` inside the cell of ``y`` (the inverse direction), shape (B,)."""
        r = (v * self.levels - y).clamp(1e-12, 1 - 1e-12)
        a = torch.log(r) - torch.log1p(-r)
        log_jac = sum_except_batch(F.logsigmoid(a) + F.logsigmoid(-a)) - y[0].numel() * math.log(self.levels)
        return self._a_log_prob(y / (self.levels - 1) - 0.5, x, a) - log_jac


class BinaryDequantizer(_NoiseFlowDequantizer):
    r"""Binary variational dequantization with half-infinite noise (Winkler et al. 2019, sec. 3.2, eq. 8).

    .. math:: v = 0.5 + \mathrm{sign}(y - 0.5)\,\mathrm{softplus}(a), \quad a = f(e; [y, g(x)]),
              \quad e \sim N(0, I)

    .. math:: \log q(v|y,x) = \log N(e) - \log\left|\det \tfrac{\partial a}{\partial e}\right|
              - \sum_i \log \sigma(a_i)

    (``softplus' = \sigma``). The quantizer is ``P(y|v) = 1[v_i > 0.5 \iff y_i = 1]``: the half-spaces of all
    ``y`` tile ``R^D``, matching the unbounded support of the flow, so the bound is a true lower bound. The
    conditional flow is single scale ("a CNF at just a single scale for the dequantizer", sec. 5.2).
    """

    levels = 2

    def __init__(self, y_shape, x_shape=None, steps: int = 2, hidden: int = 32):
        super().__init__(y_shape, x_shape, steps, hidden)

    def dequantize_from_noise(self, y: Tensor, x: Optional[Tensor], e: Tensor) -> tuple[Tensor, Tensor]:
        """The map ``e -> v`` for given standard normal noise ``e`` (same shape as ``y``)."""
        sign = 2.0 * y - 1.0
        a, log_q_a = self._noise_to_a(sign, x, e)
        v = 0.5 + sign * F.softplus(a)
        return v, log_q_a - sum_except_batch(F.logsigmoid(a))

    def log_q(self, v: Tensor, y: Tensor, x: Optional[Tensor] = None) -> Tensor:
        r"""``\log q(v|y,x)`` at given ``v`` in the half-space of ``y`` (the inverse direction), shape (B,)."""
        sign = 2.0 * y - 1.0
        w = (sign * (v - 0.5)).clamp_min(1e-30)
        a = w + torch.log(-torch.expm1(-w))  # softplus^{-1}(w) = log(e^w - 1), stable for large and small w
        return self._a_log_prob(sign, x, a) - sum_except_batch(F.logsigmoid(a))


def build_dequantizer(kind: str, y_shape, x_shape=None, levels: int = 256, steps: int = 2, hidden: int = 32):
    """Build a dequantizer by name: ``"uniform" | "variational" | "binary"``.

    ``y_shape`` is ``(C, H, W)`` of the (one-hot, for categorical) target the flow models, ``x_shape`` the
    conditioning input's ``(Cx, Hx, Wx)`` (``None``: unconditional). ``levels`` is the number of quantization
    levels per element (256 for 8-bit, 2 for binary / one-hot channels; ``"binary"`` requires 2).
    """
    if kind == "uniform":
        return UniformDequantizer(levels)
    if kind == "variational":
        return VariationalDequantizer(y_shape, x_shape, levels=levels, steps=steps, hidden=hidden)
    if kind == "binary":
        if int(levels) != 2:
            raise ValueError(f"dequantization='binary' needs levels=2 (a binary target), got levels={levels}")
        return BinaryDequantizer(y_shape, x_shape, steps=steps, hidden=hidden)
    raise ValueError(f"dequantization must be one of {DEQUANTIZATIONS}, got {kind!r}")
