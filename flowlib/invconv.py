"""Invertible 1x1 convolutions (Kingma & Dhariwal 2018, sec. 3.2; Lu & Huang 2020, sec. 4.1)."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .bijection import Bijection
from .encoders.conditioning import ConditioningNetwork
from .layout import is_channels_last


def random_rotation(channels: int, generator: Optional[torch.Generator] = None) -> Tensor:
    """A random orthogonal ``C x C`` matrix (QR of a Gaussian matrix), Glow's initialisation."""
    q, r = torch.linalg.qr(torch.randn(channels, channels, generator=generator))
    return q * torch.sign(torch.diagonal(r))[None, :]


def _mix_channels(u: Tensor, w: Tensor) -> Tensor:
    """``W u`` at every pixel: a 1x1 convolution, or on NHWC input the matrix product it is (keeps the layout)."""
    if is_channels_last(u):
        return F.linear(u.permute(0, 2, 3, 1), w).permute(0, 3, 1, 2)
    return F.conv2d(u, w.view(w.shape[0], w.shape[1], 1, 1))


class InvConv1x1(Bijection):
    """A learned channel-mixing matrix ``W`` applied at every pixel, optionally in LU-decomposed form.

    .. math:: v_{:,h,w} = W u_{:,h,w}, \\qquad W = P L (U + \\mathrm{diag}(\\mathrm{sign}(s) e^{\\log|s|})),
              \\qquad \\log|\\det J| = H W \\sum_c \\log|s_c|

    Source: Kingma & Dhariwal 2018 (Glow), sec. 3.2 and eq. 10. ``P`` is fixed, ``L`` unit lower-triangular,
    ``U`` strictly upper-triangular; the LU form makes the log-determinant O(C). Initialised as a random
    rotation so the layer starts volume preserving but mixes all channels. When no gradient is recorded
    (evaluation, sampling) ``W`` and ``W^{-1}`` are cached per parameter version instead of rebuilt per call.

    Args:
        channels: ``C`` of ``u`` ``(B, C, H, W)``; ``lu``: use the LU parametrisation.
    """

    def __init__(self, channels: int, lu: bool = True):
        super().__init__()
        self.channels = channels
        self.lu = lu
        w0 = random_rotation(channels)
        if lu:
            p, lower, upper = torch.linalg.lu(w0)
            s = torch.diagonal(upper)
            self.register_buffer("p", p)
            self.register_buffer("sign_s", torch.sign(s))
            self.register_buffer("lower_mask", torch.tril(torch.ones(channels, channels), -1))
            self.register_buffer("eye", torch.eye(channels))
            self.lower = nn.Parameter(lower * self.lower_mask)
            self.upper = nn.Parameter(torch.triu(upper, 1))
            self.log_s = nn.Parameter(s.abs().log())
        else:
            self.weight = nn.Parameter(w0)
        # (parameter versions, W, log|det W|, W^{-1} or None): see `_weight`; not part of the state dict.
        self._cache: Optional[tuple] = None

    def _compute_weight(self) -> tuple[Tensor, Tensor]:
        """``(W, log|det W|)`` from the parameters (differentiable)."""
        if self.lu:
            lower = self.lower * self.lower_mask + self.eye
            upper = torch.triu(self.upper, 1) + torch.diag(self.sign_s * self.log_s.exp())
            return self.p @ lower @ upper, self.log_s.sum()
        return self.weight, torch.linalg.slogdet(self.weight)[1]

    def _cache_key(self) -> tuple:
        """Identifies the current parameter values: every in-place update (an optimizer step,
        ``load_state_dict``) bumps a tensor's version, and ``.to()``/``.double()`` give new storage."""
        return tuple((t._version, t.data_ptr(), t.dtype, t.device) for t in self._state_tensors())

    def _state_tensors(self) -> tuple[Tensor, ...]:
        if self.lu:
            return self.lower, self.upper, self.log_s, self.p, self.sign_s
        return (self.weight,)

    @staticmethod
    def _needs_graph() -> bool:
        # Grad mode, not requires_grad: a frozen layer may still sit in a graph (gradients w.r.t. its input),
        # which must not save a tensor cached under inference mode.
        return torch.is_grad_enabled()

    def _weight(self) -> tuple[Tensor, Tensor]:
        """``(W, log|det W|)``: rebuilt while training needs its graph, otherwise cached until the parameters change.

        Without a graph to record (``torch.no_grad``, ``torch.inference_mode``: evaluation and sampling) the LU
        product is computed once per parameter version; ``train()`` drops the cache.
        """
        if self._needs_graph() or torch.compiler.is_compiling():
            return self._compute_weight()
        key = self._cache_key()
        if self._cache is None or self._cache[0] != key:
            w, logabsdet = self._compute_weight()
            self._cache = (key, w.detach(), logabsdet.detach(), None)
        return self._cache[1], self._cache[2]

    def _inverse_weight(self) -> tuple[Tensor, Tensor]:
        """``(W^{-1}, log|det W|)``; ``W^{-1}`` cached with ``W`` when no graph is needed (sampling)."""
        w, logabsdet = self._weight()
        if self._needs_graph() or torch.compiler.is_compiling():
            return torch.linalg.inv(w), logabsdet
        if self._cache[3] is None:
            self._cache = (*self._cache[:3], torch.linalg.inv(w))
        return self._cache[3], logabsdet

    def train(self, mode: bool = True) -> "InvConv1x1":
        self._cache = None
        return super().train(mode)

    def forward(self, u: Tensor, cond: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        w, logabsdet = self._weight()
        return _mix_channels(u, w), (u.shape[2] * u.shape[3] * logabsdet).expand(u.shape[0])

    def inverse(self, v: Tensor, cond: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        w_inv, logabsdet = self._inverse_weight()
        return _mix_channels(v, w_inv), (-(v.shape[2] * v.shape[3]) * logabsdet).expand(v.shape[0])


class ConditionalInvConv1x1(Bijection):
    """1x1 convolution whose matrix is produced per sample from ``cond``: ``W(x) = W_0 + \\Delta(x)``.

    .. math:: v_{:,h,w} = W(x) u_{:,h,w}, \\qquad \\log|\\det J| = H W \\log|\\det W(x)|

    Source: Lu & Huang 2020 (c-Glow), sec. 4.1 ("conditional 1x1 convolutional") and Appendix A, Figure 5b.
    ``W_0`` is a learned matrix initialised as a random rotation and ``\\Delta`` the zero-initialised output of
    the conditioning network, so ``W(x)`` is invertible at initialisation; the log-determinant uses ``slogdet``
    per sample (nothing constrains ``W(x)`` to a factorised form).

    Args:
        channels: ``C`` of ``u``; ``cond_channels``, ``cond_size``: channels and ``(H, W)`` of ``cond``.
        conv_channels, fc_width: widths of the conditioning network.
    """

    networks = ("net",)  # the conditioning network; see flowlib.precision

    def __init__(self, channels: int, cond_channels: int, cond_size: tuple[int, int], conv_channels: int = 32,
                 fc_width: int = 32):
        super().__init__()
        self.channels = channels
        self.weight0 = nn.Parameter(random_rotation(channels))
        self.net = ConditioningNetwork(cond_channels, cond_size, channels * channels, conv_channels, fc_width)

    def _weight(self, cond: Optional[Tensor]) -> Tensor:
        if cond is None:
            raise ValueError("ConditionalInvConv1x1 needs cond (B, C_cond, H, W); got None")
        return self.weight0 + self.net(cond).view(-1, self.channels, self.channels)

    def forward(self, u: Tensor, cond: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        w = self._weight(cond)
        v = torch.einsum("bij,bjhw->bihw", w, u)
        return v, u.shape[2] * u.shape[3] * torch.linalg.slogdet(w)[1]

    def inverse(self, v: Tensor, cond: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        w = self._weight(cond)
        u = torch.einsum("bij,bjhw->bihw", torch.linalg.inv(w), v)
        return u, -(v.shape[2] * v.shape[3]) * torch.linalg.slogdet(w)[1]
