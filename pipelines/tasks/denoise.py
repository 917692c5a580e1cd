"""Image denoising (Lu & Huang 2020, sec. 5.4, Table 3): x = y + n, n ~ N(0, sigma^2), sigma on the 0..255 scale.

"Following previous work [Schmidt & Roth 2014], we crop a region for each image and resize it to [size]": the
region is not given; ours is the centred square of the image (the largest one, so nothing is stretched: a
481x321 BSDS image gives its middle 321x321), then MATLAB-bicubic resized to ``size``. y is that clean image as
a *continuous* target in [0, 1]; x = y + n is not clipped (additive white Gaussian noise as DnCNN's protocol
has it, Zhang et al. 2017: clipping would change the noise's distribution), drawn per sample from
``key_rng(key, seed, epoch)`` so evaluation sees the same noisy inputs on every machine. ``noise_sigma`` = 25
(the paper's value was lost in extraction; 25 is DnCNN's standard level). Score: PSNR of the clean-image
prediction on [0, 1] over all pixels and channels (c-Glow's residual form x - n gives the same image).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from flowlib import metrics
from pipelines.data.augment import key_rng
from pipelines.data.imaging import center_square
from pipelines.tasks.base import Scorer, Task, valid_box


def add_gaussian_noise(clean01: np.ndarray, sigma255: float, rng: np.random.Generator) -> np.ndarray:
    """x = y + n, n ~ N(0, (sigma/255)^2), not clipped; c-Glow sec. 5.4 (following Zhang et al. 2017)."""
    return (clean01 + rng.normal(0.0, sigma255 / 255.0, size=clean01.shape)).astype(np.float32)


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

    def resize(self, y, x, mask, extras, size: int, *, rng: np.random.Generator):
        """The centred square first (the aspect ratio is kept), then the common resize."""
        y, mask = center_square(y), center_square(mask)
        extras = {k: center_square(v) for k, v in extras.items()}
        return super().resize(y, center_square(x) if x is not None else None, mask, extras, size, rng=rng)

    def derive_input(self, y, x, mask, *, key: str, seed: int, epoch: int):
        return add_gaussian_noise(y, self.noise_sigma, key_rng(key, seed, epoch)), mask

    def scorer(self) -> DenoiseScorer:
        return DenoiseScorer()
