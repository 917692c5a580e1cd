"""Depth refinement on 7-Scenes (Lu & Huang 2020, sec. 5.5, Table 4).

y = depth in metres (continuous), mask = valid depth, x = y with Kinect-like axial noise, scaled to [0, 1] by
``DEPTH_MAX_M``, drawn per sample from ``key_rng(key, seed, epoch)``. Score: PSNR in metres inside the
valid-depth mask with peak ``DEPTH_MAX_M``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from flowlib import metrics
from pipelines.data.augment import key_rng
from pipelines.tasks.base import Scorer, Task, rgb_image, as_numpy

#: Depth maps are fed to the encoder as depth / DEPTH_MAX_M (7-Scenes' Kinect reads up to ~4 m; 8 m leaves
#: headroom so noisy values are not clipped).
DEPTH_MAX_M = 8.0


def kinect_depth_noise(depth_m: np.ndarray, valid: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Noisy depth with the Kinect axial noise model sigma(z) = 0.0012 + 0.0019 (z - 0.4)^2 metres.

    Source: Nguyen, Izadi, Lovell 2012 ("Modeling Kinect sensor noise"); invalid pixels stay 0.
    """
    sigma = 0.0012 + 0.0019 * (depth_m - 0.4) ** 2
    noisy = depth_m + rng.normal(size=depth_m.shape) * sigma
    return np.where(valid > 0, noisy, 0.0).astype(np.float32)


class DepthScorer(Scorer):
    """Mean PSNR over images inside the valid-depth mask (peak ``DEPTH_MAX_M``)."""

    def score_image(self, prediction, target, mask, *, mean, samples, x, extras) -> None:
        m = mask if mask is not None else np.ones(target.shape[-2:], bool)
        if m.any():
            self.record("psnr", metrics.psnr(prediction[0][m], target[0][m], DEPTH_MAX_M))


@dataclass(frozen=True)
class DepthRefinement(Task):
    """Clean depth maps (metres) from noisy ones."""

    name: str = "depth"
    target: str = "continuous"

    summary_metrics: ClassVar[tuple[str, ...]] = ("bpd", "psnr")

    def derive_input(self, y, x, mask, *, key: str, seed: int, epoch: int):
        noisy = kinect_depth_noise(y, mask[..., :1], key_rng(key, seed, epoch))
        return np.clip(noisy / DEPTH_MAX_M, 0.0, 1.0), mask

    def scorer(self) -> DepthScorer:
        return DepthScorer()

    def display(self, y) -> np.ndarray:
        """Depth / ``DEPTH_MAX_M``: one fixed scale, so the same depth is the same grey in every column."""
        return rgb_image(np.clip(np.nan_to_num(as_numpy(y) / DEPTH_MAX_M), 0.0, 1.0))
