"""``mixed_precision``: bfloat16 networks inside a float32 flow, so the density stays exact.

A flow's log-likelihood (Winkler et al. 2019, eq. 1) is exact only if its bijective arithmetic is: the actnorm
and coupling maps, the 1x1 convolution and its inverse, every log-determinant and the priors' Gaussian
log-densities. The *networks* that merely produce parameters for that arithmetic, ``NN([z_1, h])`` of a
coupling, the encoder ``h = g(x)``, the prior and split-prior nets, c-Glow's conditioning networks, the
dequantizer's networks and a factorized baseline's head, are ordinary functions: computing them in bfloat16
changes which function the model is, never whether the flow is invertible or its density normalised. The
inverse recomputes the same network on the same input, so ``inverse(forward(u)) == u`` holds as before, and
the log-determinant is still that of the map actually applied.

:func:`mixed_precision` therefore runs exactly those networks under ``torch.autocast`` and casts their outputs
back to the input's dtype; everything else stays float32. Each layer names its networks in a ``networks`` class
attribute (``("subnet", "cond_net")`` on a coupling, ``("encoder",)`` on :class:`~flowlib.multiscale.ConditionalFlow`,
...), so the rule lives with the layer. Where the hardware runs bfloat16 natively (CPUs with AVX512-BF16 or
AMX, GPUs from Ampere on) the convolutions of a train step take about half the time (``benchmarks/``); on a
CPU without it bfloat16 is emulated and slower, so this is opt-in.

Autocast of the whole objective (the usual AMP) would also round the 1x1 convolution's ``W u`` and
``W^{-1} v`` and the log-determinant sums to bfloat16 (8 bits of mantissa): the round trip then errs by ~1e-2
and bits/dim by more than the differences the papers' tables report. This module is the alternative.
"""
from __future__ import annotations

import functools
from typing import Any, Iterator

import torch
from torch import Tensor, nn

__all__ = ["mixed_precision", "network_modules", "compute_dtype", "bfloat16_is_native"]

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def network_modules(model: nn.Module) -> Iterator[nn.Module]:
    """The networks of ``model``: every child that a layer lists in its ``networks`` class attribute.

    A network inside another network (none in flowlib) is yielded once, as part of the outer one.
    """
    inside: set[int] = set()
    for module in model.modules():
        if id(module) in inside:
            continue
        for name in getattr(type(module), "networks", ()):
            net = getattr(module, name, None)
            if isinstance(net, nn.Module) and id(net) not in inside:
                inside.update(id(m) for m in net.modules())
                yield net


def _first_float(args: tuple, kwargs: dict) -> Tensor | None:
    for a in (*args, *kwargs.values()):
        if isinstance(a, Tensor) and a.is_floating_point():
            return a
        if isinstance(a, (list, tuple)):
            found = _first_float(tuple(a), {})
            if found is not None:
                return found
    return None


def _cast(out: Any, dtype: torch.dtype) -> Any:
    if isinstance(out, Tensor):
        return out.to(dtype) if out.is_floating_point() and out.dtype != dtype else out
    if isinstance(out, (list, tuple)):
        return type(out)(_cast(o, dtype) for o in out)
    return out


def _autocast_forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
    """``type(self).forward`` under autocast to ``self._compute_dtype``; outputs back in the input's dtype.

    Inputs that are not float32 (float64 in the contract tests) run unchanged: autocast only lowers float32.
    """
    ref = _first_float(args, kwargs)
    if ref is None or ref.dtype != torch.float32:
        return type(self).forward(self, *args, **kwargs)
    with torch.autocast(device_type=ref.device.type, dtype=self._compute_dtype):
        out = type(self).forward(self, *args, **kwargs)
    return _cast(out, ref.dtype)


def mixed_precision(model: nn.Module, dtype: torch.dtype | str = torch.bfloat16) -> nn.Module:
    """Run ``model``'s networks (:func:`network_modules`) in ``dtype`` under autocast; the flow stays float32.

    In place; returns ``model``. Parameters stay float32 (autocast casts per operation, Adam updates float32
    weights), so ``state_dict`` keys and values are unchanged and checkpoints load with or without it.
    ``dtype=None`` or ``torch.float32`` undoes it. Only float32 inputs are lowered: a float64 model (the
    log-determinant tests) runs in float64 untouched.
    """
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"mixed_precision: dtype {dtype!r} not in {sorted(DTYPES)}")
        dtype = DTYPES[dtype]
    off = dtype is None or dtype == torch.float32
    if not off and dtype not in DTYPES.values():
        raise ValueError(f"mixed_precision: dtype {dtype} is not a reduced float type ({sorted(DTYPES)})")
    for net in network_modules(model):
        if off:
            net.__dict__.pop("forward", None)
            net.__dict__.pop("_compute_dtype", None)
        else:
            net._compute_dtype = dtype
            # An instance attribute shadows the class's forward for this module only (nn.Module.__call__ looks
            # up self.forward); a partial of a module-level function survives deepcopy and pickling.
            net.forward = functools.partial(_autocast_forward, net)
    model.compute_dtype = None if off else dtype
    return model


def compute_dtype(model: nn.Module) -> torch.dtype | None:
    """The dtype :func:`mixed_precision` set on ``model``'s networks (``None``: full precision)."""
    return getattr(model, "compute_dtype", None)


def bfloat16_is_native(device: torch.device | str = "cpu") -> bool:
    """Whether ``device`` runs bfloat16 arithmetic in hardware, so :func:`mixed_precision` can be faster.

    CPU: AVX512-BF16 or AMX tiles (oneDNN's bfloat16 kernels); without either, bfloat16 is emulated through
    float32 and a mixed-precision train step is several times *slower* (an AVX2 AMD EPYC: 0.34 against 3.87
    img/s on the cpu profile's SR model, ``benchmarks/flow_throughput.py --configs cpu-sr``). CUDA:
    ``torch.cuda.is_bf16_supported()`` (Ampere and later). Other devices: ``False``.
    """
    kind = torch.device(device).type
    if kind == "cpu":
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    if kind == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return False
