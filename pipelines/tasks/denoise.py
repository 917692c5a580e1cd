"""Image denoising (Lu & Huang 2020, sec. 5.4, Table 3): x = y + n, n ~ N(0, sigma^2), sigma on the 0..255 scale.

y is the clean image as a *continuous* target in [0, 1]; the noise is drawn per sample from
``key_rng(key, seed, epoch)``, so evaluation sees the same noisy inputs on every machine. Score: PSNR of the
clean-image prediction on [0, 1] over all pixels and channels (c-Glow's residual form x - n gives the same
image).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from flowlib import metrics
from pipelines.data.augment import key_rng
from pipelines.tasks.base import Scorer, Task, valid_box


def add_gaussian_noise(clean01: np.ndarray, sigma255: float, rng: np.random.Generator) -> np.ndarray:
    """x = y + n, n ~ N(0, (sigma/255)^2), clipped to [0, 1]; c-Glow sec. 5.4 (following Zhang et al. 2017)."""
    noisy = clean01 + rng.normal(0.0, sigma255 / 255.0, size=clean01.shape)
    return np.clip(noisy, 0.0, 1.0).astype(np.float32)


class DenoiseScorer(Scorer):
    """Mean PSNR over images of predictions clipped to [0, 1] (peak 1)."""

    def score_image(self, prediction, target, mask, *, mean, samples, x, extras) -> None:
        rows, cols = valid_box(mask, target.shape[-2:])
        self.record("psnr", metrics.psnr(np.clip(prediction[:, rows, cols], 0, 1), target[:, rows, cols], 1.0))


@dataclass(frozen=True)
class Denoising(Task):
    """Clean images in [0, 1] from their noisy versions."""

    name: str = "denoise"
    target: str = "continuous"
    noise_sigma: float = 25.0  # on the 0..255 scale (the paper's value is lost; 25 as in Zhang et al. 2017)

    summary_metrics: ClassVar[tuple[str, ...]] = ("bpd", "psnr")

    def derive_input(self, y, x, mask, *, key: str, seed: int, epoch: int):
        return add_gaussian_noise(y, self.noise_sigma, key_rng(key, seed, epoch)), mask

    def scorer(self) -> DenoiseScorer:
        return DenoiseScorer()
