"""Depth refinement on 7-Scenes (Lu & Huang 2020, sec. 5.5, Table 4), the protocol of Wang et al. 2016.

The Kinect's raw depth is the noisy *input* and a refined depth of the same view the target (made at fetch:
temporal fusion of neighbouring frames with the release's poses, :mod:`pipelines.data.datasets.fusion`):
y = the refined depth in metres (continuous), mask = where it is valid (the scored pixels), x = the raw depth
(``input.npy``, metres, 0 where the sensor gave none) / ``DEPTH_MAX_M``. "The images are randomly cropped to
[size] pixels": frames are cropped, never resized (a resize would blend invalid zeros into ``y``); the window
is drawn from the sample's generator (a new one each training epoch, one fixed window per frame in evaluation)
among ``CROP_TRIES`` candidates, the first with at least ``CROP_MIN_VALID`` valid target pixels (else the most
valid). Target pixels without a valid refined depth are filled from their nearest valid pixel so that ``y``
holds depths only (no zeros for the flow to model) and are not scored.

Score: PSNR in metres over the valid target pixels, peak ``DEPTH_PEAK_M``; per image, averaged over images.
Wang et al.'s PSNR convention is not in the text we have: the peak is our choice (the top of the Kinect v1's
range that 7-Scenes depth lies in).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from flowlib import metrics
from pipelines.data.shards import ShardError
from pipelines.data.imaging import hwc
from pipelines.tasks.base import Scorer, Task, as_numpy, rgb_image

#: x = raw depth / DEPTH_MAX_M: the Kinect v1 reports up to about 8 m, so raw readings are never clipped.
DEPTH_MAX_M = 8.0
#: PSNR peak (metres): 7-Scenes' Kinect depth lies in 0.5-4 m.
DEPTH_PEAK_M = 4.0
#: Crop windows tried per sample, and the fraction of valid target pixels that ends the search.
CROP_TRIES, CROP_MIN_VALID = 10, 0.9


def fill_invalid(depth: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """``depth`` (H, W) with every invalid pixel set to its nearest valid pixel's value (all invalid: unchanged)."""
    from scipy import ndimage

    if valid.all() or not valid.any():
        return depth
    _, (rows, cols) = ndimage.distance_transform_edt(~valid, return_indices=True)
    return depth[rows, cols]


class DepthScorer(Scorer):
    """Mean PSNR over images inside the valid-depth mask (peak ``DEPTH_PEAK_M``)."""

    def score_image(self, prediction, target, mask, *, mean, samples, x, extras) -> None:
        m = mask if mask is not None else np.ones(target.shape[-2:], bool)
        if m.any():
            self.record("psnr", metrics.psnr(prediction[0][m], target[0][m], DEPTH_PEAK_M))


@dataclass(frozen=True)
class DepthRefinement(Task):
    """Refined depth maps (metres) from raw Kinect ones."""

    name: str = "depth"
    target: str = "continuous"

    summary_metrics: ClassVar[tuple[str, ...]] = ("bpd", "psnr")

    def read(self, decoded, key: str):
        """Refined ``target.npy``, its valid ``mask.png`` and the raw ``input.npy`` (metres, 0 = invalid)."""
        if "input.npy" not in decoded:
            raise ShardError(f"{key}: task 'depth' needs input.npy (the raw Kinect depth) in the sample; "
                             "shards from before the refined-target protocol hold none: fetch sevenscenes again")
        y, _, mask, extras = super().read(decoded, key)
        x = hwc(np.asarray(decoded["input.npy"], np.float32))
        if x.shape[:2] != y.shape[:2]:
            raise ShardError(f"{key}: input.npy {x.shape[:2]} and target.npy {y.shape[:2]} differ in size")
        return y, x, mask, extras

    def resize(self, y, x, mask, extras, size: int, *, rng: np.random.Generator):
        """A random ``size`` x ``size`` window (no resize); frames smaller than ``size`` are an error."""
        h, w = y.shape[:2]
        if h < size or w < size:
            raise ShardError(f"depth frame of {h}x{w} is smaller than the {size}x{size} crop")
        best = None
        for _ in range(CROP_TRIES):
            top, left = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
            share = float(mask[top: top + size, left: left + size].mean())
            if best is None or share > best[0]:
                best = (share, top, left)
            if share >= CROP_MIN_VALID:
                break
        _, top, left = best
        window = (slice(top, top + size), slice(left, left + size))
        return (y[window], x[window], mask[window], {k: v[window] for k, v in extras.items()})

    def derive_input(self, y, x, mask, *, key: str, seed: int, epoch: int):
        return np.clip(x / DEPTH_MAX_M, 0.0, 1.0).astype(np.float32), mask

    def select_target(self, y, mask):
        """Invalid target pixels filled from their nearest valid one (unscored: the mask stays 0 there)."""
        filled = fill_invalid(y[..., 0], mask[..., 0] > 0.5)
        return filled[..., None].astype(np.float32), mask

    def scorer(self) -> DepthScorer:
        return DepthScorer()

    def display(self, y) -> np.ndarray:
        """Depth / ``DEPTH_MAX_M``: one fixed scale, so the same depth is the same grey in every column."""
        return rgb_image(np.clip(np.nan_to_num(as_numpy(y) / DEPTH_MAX_M), 0.0, 1.0))
