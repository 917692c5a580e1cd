"""flowlib: conditional normalizing flows for structured prediction (torch and numpy only).

Public API: :func:`build_flow` (continuous conditional flows), :func:`build_model` (structured prediction
models, the pipeline's entry point), :func:`build_dequantizer`, :func:`build_baseline`,
:func:`bits_per_dim`, :func:`save_checkpoint`, :func:`load_model`; for speed :func:`channels_last` (NHWC
execution), :func:`mixed_precision` (bfloat16 networks, float32 bijections; :func:`bfloat16_is_native` says
whether a device gains from it) and :func:`compile_model`
(optional ``torch.compile`` of a training objective, eager fallback). See docs/architecture.md.
"""
from .baselines import build_baseline
from .checkpoint import load_model, save_checkpoint
from .compiled import compile_model
from .dequantize import build_dequantizer
from .flows import build_flow
from .layout import channels_last
from .metrics import bits_per_dim
from .models import build_model, parameter_counts
from .precision import bfloat16_is_native, mixed_precision

__all__ = ["build_flow", "build_model", "build_dequantizer", "build_baseline", "bits_per_dim", "save_checkpoint",
           "load_model", "parameter_counts", "channels_last", "mixed_precision", "bfloat16_is_native",
           "compile_model"]
