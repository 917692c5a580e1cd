"""Base densities of the multi-scale flow: learned unconditional priors (Glow, c-Glow) and conditional ones (CNF).

Priors are not bijections: each exposes ``log_prob(z, cond) -> (B,)``, ``sample(cond, temperature, eps) -> z``
and ``noise_shape(batch, size)``. The model hands every split prior ``cond = [z_0, h_l]`` and the final prior
``cond = h_L``; an unconditional prior reads only what it models (``z_0``, or nothing).
Temperature ``T`` scales the standard deviation, ``z = \\mu + T \\sigma \\epsilon``; ``T = 0`` returns the mean.
``sample`` draws ``\\epsilon \\sim N(0, I)`` itself unless given one (``eps``, shape ``noise_shape``), so a caller
can draw the noise of many samples in a fixed order and decode them in one batch.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

from .bijection import sum_except_batch

_LOG_2PI = math.log(2 * math.pi)


def gaussian_log_prob(z: Tensor, mean: Tensor, log_std: Tensor) -> Tensor:
    """``sum log N(z; mean, exp(log_std)^2)`` over all but the batch dimension -> ``(B,)``."""
    return sum_except_batch(-0.5 * ((z - mean) * torch.exp(-log_std)) ** 2 - log_std - 0.5 * _LOG_2PI)


def gaussian_sample(mean: Tensor, log_std: Tensor, temperature: float, eps: Optional[Tensor] = None) -> Tensor:
    """``mean + T exp(log_std) eps``; ``eps ~ N(0, I)`` drawn here (in ``mean``'s logical order) unless given."""
    if temperature == 0:
        return mean
    if eps is None:
        eps = torch.randn(mean.shape, dtype=mean.dtype, device=mean.device)
    return mean + temperature * log_std.exp() * eps


def _zero_conv(in_channels: int, out_channels: int) -> nn.Conv2d:
    conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
    # Zero output => mean 0, log-std 0: every prior starts at N(0, I) whatever the conditioning.
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


class DiagonalGaussian(nn.Module):
    """Unconditional factorised Gaussian with a learned mean and log-std per coordinate, N(0, I) at init.

    .. math:: p(z) = \\mathcal{N}(z; \\mu, \\mathrm{diag}(\\sigma^2))

    Source: Kingma & Dhariwal 2018 (Glow), learned top prior (``learn_top``); c-Glow's top prior (Lu & Huang
    2020, sec. 4.1: conditioning enters the three step components only; the authors' release learns the top
    prior's mean and log-std as free parameters). ``cond`` is accepted and ignored, so the model can hand every
    final prior the same arguments.

    Args:
        shape: ``(C, H, W)`` of ``z``.
    """

    def __init__(self, shape: tuple[int, int, int]):
        super().__init__()
        self.shape = tuple(int(s) for s in shape)
        self.mean = nn.Parameter(torch.zeros(1, *self.shape))
        self.log_std = nn.Parameter(torch.zeros(1, *self.shape))

    def log_prob(self, z: Tensor, cond: Optional[Tensor] = None) -> Tensor:
        return gaussian_log_prob(z, self.mean, self.log_std)

    def noise_shape(self, batch: int, size: tuple[int, int]) -> tuple[int, int, int, int]:
        """Shape of ``eps`` for ``batch`` samples; the parameters fix ``z``'s size, so ``size`` must match it."""
        if tuple(int(s) for s in size) != self.shape[1:]:
            raise ValueError(f"DiagonalGaussian of shape {self.shape} cannot sample at spatial size {tuple(size)}")
        return (batch, *self.shape)

    def sample(self, cond: Optional[Tensor] = None, temperature: float = 1.0, eps: Optional[Tensor] = None,
               batch_size: Optional[int] = None) -> Tensor:
        """``z = mu + T sigma eps``; the batch size is ``batch_size``, else that of ``eps``, else of ``cond``."""
        if batch_size is None:
            if cond is None and eps is None:
                raise ValueError("DiagonalGaussian.sample needs cond, eps or batch_size to know the batch size")
            batch_size = (eps if eps is not None else cond).shape[0]
        mean = self.mean.expand(batch_size, *self.shape)
        return gaussian_sample(mean, self.log_std.expand_as(mean), temperature, eps)


class _ConvGaussian(nn.Module):
    """``cond -> (mu, log sigma)`` by a network ending in a zero-initialised convolution (default:
    Conv3x3-ReLU-ZeroConv3x3, the conditional priors' network)."""

    networks = ("net",)  # see flowlib.precision

    def __init__(self, cond_channels: int, channels: int, hidden: int, net: Optional[nn.Module] = None):
        super().__init__()
        self.channels = channels
        self.net = net if net is not None else nn.Sequential(
            nn.Conv2d(cond_channels, hidden, 3, padding=1), nn.ReLU(), _zero_conv(hidden, 2 * channels))

    def _inputs(self, cond: Tensor) -> Tensor:
        """The part of ``cond`` the network reads (all of it here)."""
        return cond

    def params(self, cond: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        if cond is None:
            raise ValueError(f"{type(self).__name__} needs cond; got None")
        out = self.net(self._inputs(cond))
        return out[:, : self.channels], out[:, self.channels:]

    def log_prob(self, z: Tensor, cond: Optional[Tensor]) -> Tensor:
        mean, log_std = self.params(cond)
        return gaussian_log_prob(z, mean, log_std)

    def noise_shape(self, batch: int, size: tuple[int, int]) -> tuple[int, int, int, int]:
        """Shape of ``eps`` (and of ``z``) for ``batch`` samples at spatial ``size``."""
        return (batch, self.channels, int(size[0]), int(size[1]))

    def sample(self, cond: Optional[Tensor], temperature: float = 1.0, eps: Optional[Tensor] = None) -> Tensor:
        """``z = mu(cond) + T sigma(cond) eps``, ``eps ~ N(0, I)`` unless given (shape ``noise_shape``)."""
        mean, log_std = self.params(cond)
        return gaussian_sample(mean, log_std, temperature, eps)


class ConditionalPrior(_ConvGaussian):
    """Final prior with mean and std computed from the level's features ``h``.

    .. math:: p(z | x) = \\mathcal{N}(z; \\mu(h), \\sigma^2(h)), \\qquad h = g(x)

    Source: Winkler et al. 2019, sec. 3.1 ("Conditional Prior").

    Args:
        channels: ``C`` of ``z`` ``(B, C, H, W)``; ``cond_channels``: channels of ``cond`` at ``z``'s resolution.
    """

    def __init__(self, channels: int, cond_channels: int, hidden: int = 64):
        super().__init__(cond_channels, channels, hidden)


class ConditionalSplitPrior(_ConvGaussian):
    """Prior of the factored-out half ``z_1`` given the kept half ``z_0`` and the features ``h``.

    .. math:: p(z_1 | z_0, x) = \\mathcal{N}(z_1; \\mu(z_0, h), \\sigma^2(z_0, h))

    Source: Winkler et al. 2019, sec. 3.1 ("Conditional Split Prior"); Dinh et al. 2016 for split priors.
    ``cond`` is the concatenation ``[z_0, h]`` (the model builds it), so the prior obeys the plain prior
    contract.

    Args:
        channels: ``C`` of ``z_1``; ``cond_channels``: ``C(z_0) + C(h)``.
    """

    def __init__(self, channels: int, cond_channels: int, hidden: int = 64):
        super().__init__(cond_channels, channels, hidden)


class SplitPrior(_ConvGaussian):
    """Prior of the factored-out half ``z_1`` given the kept half ``z_0`` only: a learned split prior, no ``x``.

    .. math:: p(z_1 | z_0) = \\mathcal{N}(z_1; \\mu(z_0), \\sigma^2(z_0)),
              \\qquad (\\mu, \\log\\sigma) = \\mathrm{ZeroConv}_{3\\times3}(z_0)

    Source: Kingma & Dhariwal 2018 (Glow), split prior (``split2d``); Lu & Huang 2020, sec. 4.1 (c-Glow keeps
    Glow's multi-scale architecture; conditioning enters only the actnorm, 1x1 convolution and coupling; the
    authors' release keeps Glow's unconditional split prior). Dinh et al. 2016 for split priors. One
    zero-initialised 3x3 convolution, so the prior starts at N(0, I). (The authors' release squashes the
    convolution's output with tanh; Glow and this class do not.)

    ``cond`` is what the model hands every split prior, ``[z_0, h_l]``; this prior reads only its first
    ``keep_channels`` channels, ``z_0`` (so ``cond = z_0`` alone works too).

    Args:
        channels: ``C`` of ``z_1``; ``keep_channels``: ``C`` of ``z_0``.
    """

    def __init__(self, channels: int, keep_channels: int):
        super().__init__(keep_channels, channels, 0, net=_zero_conv(keep_channels, 2 * channels))
        self.keep_channels = keep_channels

    def _inputs(self, cond: Tensor) -> Tensor:
        if cond.shape[1] < self.keep_channels:
            raise ValueError(f"SplitPrior needs cond = [z_0, ...] with z_0 of {self.keep_channels} channels; "
                             f"got {cond.shape[1]} channels")
        return cond[:, : self.keep_channels]
