"""Task definitions in one place: each task's target type and how its input `x` is made from a raw sample.

Shards hold the raw release (docs/datasets.md); what a model sees is decided here:
  - ``sr``      x = bicubic LR image (MATLAB ``imresize``, stored as input.png at fetch), y = HR image8.
  - ``vessel``  x = fundus RGB, y = binary vessel map, mask = FOV (DRIVE).
  - ``horses``  x = RGB, y = binary figure/ground (Weizmann horses).
  - ``parts``   x = RGB, y = categorical {0 background, 1 face, 2 hair} (LFW part labels).
  - ``denoise`` x = clean + N(0, sigma^2) (sigma on the 0..255 scale, seeded per key), y = clean image as a
    *continuous* target in [0, 1] (PSNR on [0, 1]; c-Glow's residual form is x - y).
  - ``depth``   x = depth with Kinect-like axial noise scaled to [0, 1] by DEPTH_MAX_M, y = depth in metres
    (continuous), mask = valid depth.
  - ``inpaint`` x = image with a central block zeroed, y = full image8, mask = the hidden block (the region
    scored).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

#: Depth maps are fed to the encoder as depth / DEPTH_MAX_M (7-Scenes' Kinect reads up to ~4 m; 8 m leaves
#: headroom so noisy values are not clipped).
DEPTH_MAX_M = 8.0


@dataclass(frozen=True)
class Task:
    """What a task predicts: the target convention of docs/architecture.md and its defaults."""

    name: str
    target: str  # image8 | binary | categorical | continuous
    num_classes: int | None = None
    size: int | None = None  # default square resize of the raw sample (c-Glow resizes; sizes lost in extraction)
    scale: int | None = None  # SR factor
    noise_sigma: float | None = None  # denoising, on the 0..255 scale
    block_fraction: float | None = None  # inpainting: side of the central block / side of the image


TASKS: dict[str, Task] = {
    "sr": Task("sr", "image8", scale=2),
    "vessel": Task("vessel", "binary"),
    "horses": Task("horses", "binary", size=64),
    "parts": Task("parts", "categorical", num_classes=3, size=64),
    "denoise": Task("denoise", "continuous", noise_sigma=25.0),
    "depth": Task("depth", "continuous"),
    "inpaint": Task("inpaint", "image8", size=64, block_fraction=0.5),
}


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r}; known: {sorted(TASKS)}") from None


# --------------------------------------------------------------------------------------------------- imresize
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


def rgb_to_y(image: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma of an RGB image in 0..255: Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255."""
    rgb = np.asarray(image, dtype=np.float64)
    if rgb.ndim == 2:
        return rgb
    return 16.0 + (65.481 * rgb[..., 0] + 128.553 * rgb[..., 1] + 24.966 * rgb[..., 2]) / 255.0


def bicubic_lr(hr: np.ndarray, scale: int) -> np.ndarray:
    """The SR input: ``imresize(modcrop(hr), 1/scale)`` rounded to uint8."""
    return imresize(modcrop(np.asarray(hr, dtype=np.uint8), scale), 1.0 / scale)


# ------------------------------------------------------------------------------------------ derived inputs
def key_rng(key: str, seed: int = 0, epoch: int = 0) -> np.random.Generator:
    """A generator seeded by (key, seed, epoch): the same sample gets the same noise on every machine."""
    digest = hashlib.sha256(f"{key}|{seed}|{epoch}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def add_gaussian_noise(clean01: np.ndarray, sigma255: float, rng: np.random.Generator) -> np.ndarray:
    """x = y + n, n ~ N(0, (sigma/255)^2), clipped to [0, 1]; c-Glow sec. 5.4 (following Zhang et al. 2017)."""
    noisy = clean01 + rng.normal(0.0, sigma255 / 255.0, size=clean01.shape)
    return np.clip(noisy, 0.0, 1.0).astype(np.float32)


def kinect_depth_noise(depth_m: np.ndarray, valid: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Noisy depth with the Kinect axial noise model sigma(z) = 0.0012 + 0.0019 (z - 0.4)^2 metres.

    Source: Nguyen, Izadi, Lovell 2012 ("Modeling Kinect sensor noise"); invalid pixels stay 0.
    """
    sigma = 0.0012 + 0.0019 * (depth_m - 0.4) ** 2
    noisy = depth_m + rng.normal(size=depth_m.shape) * sigma
    return np.where(valid > 0, noisy, 0.0).astype(np.float32)


def central_block_mask(height: int, width: int, fraction: float = 0.5) -> np.ndarray:
    """1 inside the central block of side ``fraction`` x (height, width), 0 elsewhere (fraction^2 hidden)."""
    mask = np.zeros((height, width), np.float32)
    bh, bw = int(round(height * fraction)), int(round(width * fraction))
    top, left = (height - bh) // 2, (width - bw) // 2
    mask[top: top + bh, left: left + bw] = 1.0
    return mask


def pad_to_multiple(array: np.ndarray, multiple: int) -> np.ndarray:
    """An (H, W, C) array as contiguous float32 (C, H', W'), zero-padded bottom/right to multiples of ``multiple``.

    The squeeze layers halve H and W once per level, so a flow with L levels needs multiples of 2^L; DRIVE's
    565x584 pads to 568x584 for L = 2 (padded pixels lie outside the FOV mask and are never scored). The
    padding happens in the HWC -> CHW copy the model input needs anyway: one allocation, no padded
    intermediate.
    """
    h, w, c = array.shape
    multiple = max(int(multiple or 1), 1)
    out = np.zeros((c, h + (-h) % multiple, w + (-w) % multiple), np.float32)
    out[:, :h, :w] = array.transpose(2, 0, 1)
    return out


def make_input(task: Task, y: np.ndarray, mask: np.ndarray, stored_x: np.ndarray | None, *, key: str,
               seed: int = 0, epoch: int = 0) -> np.ndarray:
    """x (H, W, C) float32 in [0, 1] for a sample whose target y is in data space (HWC).

    ``stored_x`` is the shard's input.png in [0, 1] (SR, vessel, horses, parts); degraded inputs (denoise,
    depth, inpaint) are made here from y, seeded by (key, seed, epoch) so evaluation is reproducible.
    """
    if task.name in ("sr", "vessel", "horses", "parts"):
        if stored_x is None:
            raise ValueError(f"{key}: task {task.name!r} needs input.png in the shard")
        return stored_x.astype(np.float32)
    rng = key_rng(key, seed, epoch)
    if task.name == "denoise":
        return add_gaussian_noise(y, task.noise_sigma, rng)
    if task.name == "depth":
        return np.clip(kinect_depth_noise(y, mask[..., None], rng) / DEPTH_MAX_M, 0.0, 1.0)
    if task.name == "inpaint":
        block = central_block_mask(y.shape[0], y.shape[1], task.block_fraction)
        return (y / 255.0 * (1.0 - block[..., None])).astype(np.float32)
    raise KeyError(f"no input rule for task {task.name!r}")
