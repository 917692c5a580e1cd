"""Deterministic image operations the tasks build samples from: MATLAB bicubic resizing, crops, padding.

Arrays are ``(H, W)`` or ``(H, W, C)`` on the way in (the layout images are decoded in) and the model's
``(C, H, W)`` only at the end (:func:`pad_to_multiple`). Nothing here knows a task; ``pipelines/tasks/``
composes these operations per paper.
"""
from __future__ import annotations

import numpy as np


def _cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = -0.5, as MATLAB's ``imresize`` uses."""
    ax = np.abs(x)
    ax2, ax3 = ax**2, ax**3
    return (1.5 * ax3 - 2.5 * ax2 + 1) * (ax <= 1) + (-0.5 * ax3 + 2.5 * ax2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2))


def _contributions(in_len: int, out_len: int, scale: float, antialias: bool = True):
    """Weights and (mirrored) source indices of each output pixel along one axis (MATLAB's contributions())."""
    width = 4.0
    if scale < 1 and antialias:
        # Downscaling stretches the kernel by 1/scale so it also low-pass filters (MATLAB's antialiasing).
        def kernel(x):
            return scale * _cubic(scale * x)

        width = width / scale
    else:
        kernel = _cubic
    x = np.arange(1, out_len + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(u - width / 2)
    taps = int(np.ceil(width)) + 2
    indices = left[:, None] + np.arange(taps)[None, :]
    weights = kernel(u[:, None] - indices)
    weights = weights / weights.sum(axis=1, keepdims=True)
    mirror = np.concatenate([np.arange(in_len), np.arange(in_len - 1, -1, -1)])
    indices = mirror[np.mod(indices.astype(np.int64) - 1, 2 * in_len)]
    keep = np.any(weights != 0, axis=0)
    return weights[:, keep], indices[:, keep]


def imresize(image: np.ndarray, scale: float | None = None, output_shape: tuple[int, int] | None = None,
             antialias: bool = True) -> np.ndarray:
    """MATLAB-compatible bicubic ``imresize(image, scale)``.

    out[i] = sum_j w_ij in[idx_ij] with Keys' cubic (a = -0.5), kernel widened by 1/scale when downscaling,
    symmetric boundary; the axis shrunk most is resized first, as MATLAB does. uint8 in -> uint8 out (rounded
    and clipped once at the end); float in -> float64 out. Source: MATLAB ``imresize`` (Image Processing
    Toolbox), the reference for SR benchmarks (Dong et al. 2014; Winkler et al. 2019, Table 2).
    """
    src = np.asarray(image)
    h, w = src.shape[:2]
    if output_shape is None:
        if scale is None:
            raise ValueError("imresize needs scale or output_shape")
        output_shape = (int(np.ceil(h * scale)), int(np.ceil(w * scale)))
        scales = (float(scale), float(scale))
    else:
        scales = (output_shape[0] / h, output_shape[1] / w)
    out = src.astype(np.float64)
    for axis in np.argsort(scales, kind="stable"):
        weights, indices = _contributions(out.shape[axis], output_shape[axis], scales[axis], antialias)
        moved = np.moveaxis(out, axis, 0)
        gathered = moved[indices]  # (out_len, taps, ...)
        resized = np.einsum("ot,ot...->o...", weights, gathered)
        out = np.moveaxis(resized, 0, axis)
    if src.dtype == np.uint8:
        return np.clip(np.round(out), 0, 255).astype(np.uint8)
    return out


def modcrop(image: np.ndarray, scale: int) -> np.ndarray:
    """Crop height and width down to multiples of ``scale`` (bottom/right), as SR benchmarks do."""
    h, w = image.shape[:2]
    return image[: h - h % scale, : w - w % scale]


def bicubic_lr(hr: np.ndarray, scale: int) -> np.ndarray:
    """The SR input: ``imresize(modcrop(hr), 1/scale)`` rounded to uint8."""
    return imresize(modcrop(np.asarray(hr, dtype=np.uint8), scale), 1.0 / scale)


def resize_nearest(array: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of the first two axes (label maps, masks, super-pixel ids stay discrete)."""
    h, w = array.shape[:2]
    rows = np.minimum((np.arange(shape[0]) + 0.5) * h / shape[0], h - 1).astype(int)
    cols = np.minimum((np.arange(shape[1]) + 0.5) * w / shape[1], w - 1).astype(int)
    return array[rows][:, cols]


def center_square(array: np.ndarray) -> np.ndarray:
    """The largest centred square of the first two axes."""
    h, w = array.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return array[top: top + side, left: left + side]


def hwc(array: np.ndarray) -> np.ndarray:
    """``(H, W)`` -> ``(H, W, 1)``; ``(H, W, C)`` unchanged."""
    return array[..., None] if array.ndim == 2 else array


PAD_MODES = ("zeros", "edge")


def pad_to_multiple(array: np.ndarray, multiple: int, mode: str = "zeros") -> np.ndarray:
    """An (H, W, C) array as contiguous float32 (C, H', W'), padded bottom/right to multiples of ``multiple``.

    The squeeze layers halve H and W once per level, so a flow with L levels needs multiples of 2^L; DRIVE's
    565x584 pads to 568x584 for L = 2 (padded pixels lie outside the FOV mask and are never scored). ``mode``
    ``"zeros"`` (Winkler et al. 2019, sec. 5.1 and App. A) or ``"edge"`` (the last row and column repeated, so
    the padding continues the image instead of a step to black). The padding happens in the HWC -> CHW copy
    the model input needs anyway: one allocation, no padded intermediate.
    """
    if mode not in PAD_MODES:
        raise ValueError(f"pad_to_multiple: mode must be one of {PAD_MODES}, got {mode!r}")
    h, w, c = array.shape
    multiple = max(int(multiple or 1), 1)
    out = np.zeros((c, h + (-h) % multiple, w + (-w) % multiple), np.float32)
    out[:, :h, :w] = array.transpose(2, 0, 1)
    if mode == "edge" and h and w:
        out[:, h:, :w] = out[:, h - 1:h, :w]
        out[:, :, w:] = out[:, :, w - 1:w]
    return out
