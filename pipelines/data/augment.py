"""Per-sample randomness: the (key, seed, epoch) generator, the joint affine warp, the aligned random patch.

Every random choice about a sample is drawn from :func:`key_rng`, so it does not depend on which rank or
loader worker reads the sample, and evaluation (epoch 0) is the same on every machine.
"""
from __future__ import annotations

import hashlib

import numpy as np

DRIVE_ROTATION_DEG = 360.0  # Winkler et al. 2019, App. A: rotations over the full circle
DRIVE_SCALE = (0.8, 1.2)  # isotropic scaling range
DRIVE_SHEAR_STD_DEG = 10.0  # shear ~ N(0, 10 deg)


def key_rng(key: str, seed: int = 0, epoch: int = 0) -> np.random.Generator:
    """A generator seeded by (key, seed, epoch): the same sample gets the same noise on every machine."""
    digest = hashlib.sha256(f"{key}|{seed}|{epoch}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def drive_augment(arrays: dict[str, np.ndarray], rng: np.random.Generator, discrete: set[str], *,
                  out_shape: tuple[int, int] | None = None, center: tuple[float, float] | None = None) -> dict:
    """One random affine warp applied jointly to every array: rotation, isotropic scale, shear.

    A = R(theta) S(s) H(phi), theta ~ U(0, 360 deg), s ~ U(0.8, 1.2), phi ~ N(0, 10 deg); Winkler et al. 2019,
    App. A (DRIVE). The output pixel o maps to the input point c_in + A^-1 (o - c_out): ``center`` (c_in,
    default the image centre) lands on the centre c_out of an ``out_shape`` output (default the input's shape).
    Warping straight into a training patch costs the patch's pixels, not the image's. Label maps and masks use
    nearest neighbour so they stay in {0, 1}; pixels warped in from outside are 0 (mask 0, so never scored).
    ``arrays``: name -> ``(H, W, C)``, all of one ``(H, W)``.
    """
    from PIL import Image

    theta = np.deg2rad(rng.uniform(0, DRIVE_ROTATION_DEG))
    scale = rng.uniform(*DRIVE_SCALE)
    shear = np.deg2rad(rng.normal(0, DRIVE_SHEAR_STD_DEG))
    rotation = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    forward = rotation @ np.array([[scale, 0], [0, scale]]) @ np.array([[1, np.tan(shear)], [0, 1]])
    inverse = np.linalg.inv(forward)  # output (row, col) -> input (row, col)
    h, w = next(iter(arrays.values())).shape[:2]
    out_shape = tuple(out_shape or (h, w))
    c_in = np.array(center if center is not None else ((h - 1) / 2, (w - 1) / 2), dtype=float)
    c_out = np.array([(out_shape[0] - 1) / 2, (out_shape[1] - 1) / 2])
    offset = c_in - inverse @ c_out
    # PIL's affine map works on (x, y) = (col, row) with pixel centres at +0.5; the same map in its terms.
    m = inverse[::-1, ::-1]
    c = offset[::-1] + 0.5 - m @ np.array([0.5, 0.5])
    coefficients = (m[0, 0], m[0, 1], c[0], m[1, 0], m[1, 1], c[1])
    size = (out_shape[1], out_shape[0])
    out = {}
    for name, array in arrays.items():
        if array.shape[:2] != (h, w):
            raise ValueError(f"drive_augment: {name!r} is {array.shape[:2]}, the other arrays {(h, w)}")
        resample = Image.Resampling.NEAREST if name in discrete else Image.Resampling.BILINEAR
        # float32 ("F" mode) per channel: bilinear in float, no 8-bit rounding; about 2x scipy.ndimage's speed.
        channels = [np.asarray(Image.fromarray(np.ascontiguousarray(array[..., k], np.float32)).transform(
            size, Image.Transform.AFFINE, coefficients, resample=resample, fillcolor=0.0))
            for k in range(array.shape[2])]
        out[name] = np.stack(channels, axis=-1)
    return out


def random_patch(y: np.ndarray, x: np.ndarray | None, mask: np.ndarray, extras: dict[str, np.ndarray],
                 patch: int, scale: int, rng: np.random.Generator):
    """An aligned random crop: a ``patch`` x ``patch`` window of y and the matching window of x.

    ``x`` lives on y's grid divided by ``scale`` (the SR factor; 1 for every other task), so the window's
    corner is drawn on x's grid. Images smaller than the patch are zero-padded (mask 0) rather than rejected.
    Returns ``(y, x, mask, extras)``.
    """
    if patch % scale:
        raise ValueError(f"patch {patch} must be a multiple of the SR scale {scale}")
    h, w = y.shape[:2]
    if h < patch or w < patch:
        pad = [(0, max(patch - h, 0)), (0, max(patch - w, 0)), (0, 0)]
        y, mask = np.pad(y, pad), np.pad(mask, pad)
        extras = {k: np.pad(v, pad) for k, v in extras.items()}
        if x is not None:
            lr_pad = [(0, max(patch - h, 0) // scale), (0, max(patch - w, 0) // scale), (0, 0)]
            x = np.pad(x, lr_pad)
        h, w = y.shape[:2]
    top = int(rng.integers(0, (h - patch) // scale + 1)) * scale
    left = int(rng.integers(0, (w - patch) // scale + 1)) * scale
    window = (slice(top, top + patch), slice(left, left + patch))
    y, mask = y[window], mask[window]
    extras = {k: v[window] for k, v in extras.items()}
    if x is not None:
        lr = patch // scale
        x = x[top // scale: top // scale + lr, left // scale: left // scale + lr]
    return y, x, mask, extras
