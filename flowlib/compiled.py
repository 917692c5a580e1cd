"""``compile_model``: an optional ``torch.compile`` of a model's forward that falls back to eager, never crashes.

``torch.compile`` (TorchDynamo + the inductor backend: fused elementwise kernels around oneDNN / cuDNN
convolutions, one generated C++/Triton kernel per fusion group) compiles lazily, at the first call; a missing
compiler, an unsupported operator or a backend bug then surfaces as an exception from that call. The wrapper
catches it, runs the same call eagerly, warns once and stays eager, so switching compilation on can cost speed
but never a training run. An error that eager execution raises too (wrong shapes, missing ``cond``) is the
model's and propagates unchanged.
"""
from __future__ import annotations

import warnings
from typing import Any, Optional

import torch
from torch import nn

__all__ = ["compile_model", "CompiledModel"]


class CompiledModel(nn.Module):
    """``module`` whose ``forward`` runs through ``torch.compile(module, **options)``, eager on failure.

    Parameters, buffers and ``state_dict`` are ``module``'s own (the compiled callable is not registered as a
    submodule, so nothing is duplicated and checkpoints of ``module`` load unchanged). ``failure`` holds the
    exception that switched it to eager (``None`` while compiled). ``eager`` is ``module`` itself.

    Args:
        module: any ``nn.Module``; for a :class:`~flowlib.models.StructuredModel` ``forward(y, x)`` is the
            training objective ``nll(y, x)``; a ``DistributedDataParallel`` wrapper may be passed as well.
        options: keyword arguments of ``torch.compile`` (``backend``, ``mode``, ``dynamic``, ``fullgraph``).
    """

    def __init__(self, module: nn.Module, **options: Any):
        super().__init__()
        self.eager = module
        self.options = dict(options)
        self.failure: Optional[BaseException] = None
        self._checked: set[tuple] = set()  # input signatures whose backward has been compiled
        try:
            compiled = torch.compile(module, **options)
        except Exception as error:  # noqa: BLE001 - e.g. no torch.compile support on this Python/platform
            compiled = None
            self._fall_back(error)
        # Plain attribute, not a registered submodule (it wraps `module`, whose parameters are already ours).
        self.__dict__["_compiled"] = compiled

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.failure is not None:
            return self.eager(*args, **kwargs)
        rng = _rng_state()
        try:
            out = self._compiled(*args, **kwargs)
            self._check_backward(out, args, kwargs)
            return out
        except Exception as error:  # noqa: BLE001 - any compiler failure must fall back, not end the run
            _set_rng_state(rng)  # the eager call draws the noise (dequantization) the attempt drew
            out = self.eager(*args, **kwargs)  # raises if the call itself is wrong: that error is the model's
            self._fall_back(error)
            return out

    def _fall_back(self, error: BaseException) -> None:
        self.failure = error
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        detail = " ".join(lines[:1] + lines[-1:] if len(lines) > 1 else lines)[:300]
        warnings.warn(f"compile_model: torch.compile of {type(self.eager).__name__} failed "
                      f"({type(error).__name__}: {detail}); running it eagerly from now on", RuntimeWarning,
                      stacklevel=3)

    def _check_backward(self, out: Any, args: tuple, kwargs: dict) -> None:
        """Compile the backward now, inside the fallback's ``try``, once per input signature.

        The backward graph is compiled lazily, at the first ``backward()``, where a failure would escape the
        wrapper. So the first call with new input shapes differentiates its output once w.r.t. the parameters
        with ``torch.autograd.grad`` (which leaves ``.grad`` and DDP's gradient hooks untouched) and keeps the
        graph for the caller's own ``backward()``.
        """
        if not torch.is_grad_enabled():
            return
        signature = tuple(tuple(t.shape) + (t.dtype,) for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor))
        if signature in self._checked:
            return
        outputs = [t for t in (out if isinstance(out, (tuple, list)) else [out])
                   if isinstance(t, torch.Tensor) and t.requires_grad]
        params = [p for p in self.eager.parameters() if p.requires_grad]
        if outputs and params:
            total = sum(t.float().sum() for t in outputs)
            torch.autograd.grad(total, params, retain_graph=True, allow_unused=True)
        self._checked.add(signature)


def _rng_state() -> tuple:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    return torch.random.get_rng_state(), cuda


def _set_rng_state(state: tuple) -> None:
    torch.random.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state_all(state[1])


def compile_model(module: nn.Module, **options: Any) -> CompiledModel:
    """``module`` with its ``forward`` compiled by ``torch.compile``; falls back to eager with a warning.

    Typical use, training a :class:`~flowlib.models.StructuredModel` (``forward = nll``)::

        model = flowlib.build_model(...)
        with torch.no_grad():
            model.nll(y0, x0)                 # ActNorm's data-dependent initialisation first (eager)
        objective = flowlib.compile_model(model)
        loss = objective(y, x).mean()         # compiled forward and backward; model.state_dict() unchanged

    Compile once per training process, after ``.to(device)`` and before the optimizer steps; the first call
    compiles (seconds to a minute on a CPU), later calls with the same shapes reuse the kernels. Sampling and
    evaluation stay eager (``torch.inference_mode`` and the cached 1x1 weights serve them). ``options`` go to
    ``torch.compile`` unchanged (default: the inductor backend).
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"compile_model: expected an nn.Module, got {type(module).__name__}")
    return CompiledModel(module, **options)
