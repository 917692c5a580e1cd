"""Memory layout: running a model in ``torch.channels_last`` (NHWC) end to end.

oneDNN's CPU convolutions (and cuDNN's tensor-core ones) are fastest on NHWC data, but one NCHW tensor in the
chain costs a layout conversion before and after every convolution it feeds. :func:`channels_last` converts a
model's weights and marks it, so its entry points convert ``y`` and ``x`` once and every flowlib layer keeps
NHWC from there on (squeezes, splits, 1x1 convolutions, instance norm). The math is unchanged; float rounding
differs from NCHW (other kernels, other summation orders), so results agree to float precision, not bitwise.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from typing import Sequence

from torch import Tensor, nn

__all__ = ["channels_last", "is_channels_last", "to_layout", "cat_channels", "Conv1x1"]


def is_channels_last(t: Tensor) -> bool:
    """``t`` is 4-d with NHWC strides that ``torch`` recognises as such (its suggested memory format).

    A 1-channel or 1x1 tensor is contiguous in both layouts; it counts as channels-last only with NHWC
    strides, which is what decides the layout of ``torch.cat`` and of elementwise results built from it.
    """
    if t.dim() != 4:
        return False
    sizes, strides = t.shape, t.stride()
    if strides[1] == 0:
        return False
    # ATen's is_channels_last_strides_2d: strides grow from C through W and H to N.
    least = 0
    for d in (1, 3, 2, 0):
        if sizes[d] == 0 or strides[d] < least or (d == 0 and least == strides[1]):
            return False
        least = strides[d] * (sizes[d] if sizes[d] > 1 else 1)
    return True


def to_layout(t: Tensor, memory_format: torch.memory_format) -> Tensor:
    """``t`` in ``memory_format`` (a copy only when needed); non-4-d tensors and ``contiguous_format`` pass."""
    if memory_format != torch.channels_last or t.dim() != 4 or is_channels_last(t):
        return t
    return t.clone(memory_format=torch.channels_last)


def cat_channels(tensors: Sequence[Tensor]) -> Tensor:
    """``torch.cat(tensors, dim=1)``, channels-last when any input is.

    ``torch.cat`` keeps NHWC only if every input is NHWC; one NCHW input (typically a 1-channel map, or an
    elementwise result of a channel slice) makes the whole result NCHW, and the next convolution copies it
    back. Converting the odd inputs first costs a copy of those alone.
    """
    if any(is_channels_last(t) for t in tensors):
        tensors = [to_layout(t, torch.channels_last) for t in tensors]
    return torch.cat(tensors, dim=1)


def channels_last(model: nn.Module) -> nn.Module:
    """Convert ``model`` (a ``StructuredModel`` or ``ConditionalFlow``) to run in ``torch.channels_last``.

    Converts every 4-d parameter and buffer (``model.to(memory_format=torch.channels_last)``) and sets
    ``memory_format`` on the modules whose entry points take data, so ``y`` and ``x`` are converted once per
    call. ``state_dict`` keys and values are unchanged (checkpoints load either way). Returns ``model``.
    """
    model.to(memory_format=torch.channels_last)
    for m in model.modules():
        if hasattr(m, "memory_format"):
            m.memory_format = torch.channels_last
    return model


class Conv1x1(nn.Conv2d):
    """A 1x1 ``nn.Conv2d`` that runs as a matrix product over channels on NHWC input.

    .. math:: o_{:,h,w} = W a_{:,h,w} + b

    On ``channels_last`` input the NHWC tensor already is the ``(B H W, C)`` matrix, so ``F.linear`` does the
    work without the layout conversions (and slower fallback kernel) a 1x1 convolution takes there; NCHW input
    runs the ordinary convolution. Parameters and ``state_dict`` are those of ``nn.Conv2d(in, out, 1)``.
    """

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True):
        super().__init__(in_channels, out_channels, 1, bias=bias)

    def forward(self, a: Tensor) -> Tensor:
        if is_channels_last(a):
            o = F.linear(a.permute(0, 2, 3, 1), self.weight.view(self.out_channels, self.in_channels))
            if self.bias is not None:
                o = o.add_(self.bias)  # in place on the product: addmm's bias broadcast copy is slower
            return o.permute(0, 3, 1, 2)
        return super().forward(a)
