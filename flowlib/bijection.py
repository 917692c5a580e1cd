"""The one contract every invertible layer obeys, and its composition.

A bijection ``f`` maps ``u`` (data side) to ``v`` (latent side). ``forward`` runs the density direction and
returns ``(v, log|det df/du|)`` per sample; ``inverse`` is exact and returns ``(u, log|det df^{-1}/dv|)``, the
negative of the forward log-determinant at the matching point. Conditioning, when a layer has any, is the
explicit ``cond`` argument, already resampled to the layer's resolution. By the change of variables
(Winkler et al. 2019, eq. 1 and eq. 7)

.. math:: \\log p_{Y|X}(y|x) = \\log p_{Z|X}(f(y, x) | x) + \\log |\\det \\partial f(y, x) / \\partial y|.
"""
from __future__ import annotations

from typing import Iterable, Optional

import torch
from torch import Tensor, nn


class Bijection(nn.Module):
    """Base class: ``forward(u, cond) -> (v, logdet)``, ``inverse(v, cond) -> (u, -logdet)``.

    Subclasses implement both directions; ``logdet`` has shape ``(B,)``. Layers that take no conditioning
    accept and ignore ``cond`` so that compositions can pass it uniformly.
    """

    def forward(self, u: Tensor, cond: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:  # pragma: no cover
        raise NotImplementedError

    def inverse(self, v: Tensor, cond: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:  # pragma: no cover
        raise NotImplementedError


class Sequential(Bijection):
    """Composition ``f_K o ... o f_1``; log-determinants add.

    .. math:: \\log|\\det J_{f_K \\circ \\dots \\circ f_1}| = \\sum_k \\log|\\det J_{f_k}|

    Every layer receives the same ``cond``.
    """

    def __init__(self, layers: Iterable[Bijection]):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, u: Tensor, cond: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        logdet = u.new_zeros(u.shape[0])
        for layer in self.layers:
            u, ld = layer(u, cond)
            logdet = logdet + ld
        return u, logdet

    def inverse(self, v: Tensor, cond: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        logdet = v.new_zeros(v.shape[0])
        for layer in reversed(self.layers):
            v, ld = layer.inverse(v, cond)
            logdet = logdet + ld
        return v, logdet


def sum_except_batch(t: Tensor) -> Tensor:
    """Sum over every dimension but the first: ``(B, ...) -> (B,)``."""
    return t.reshape(t.shape[0], -1).sum(dim=1)
