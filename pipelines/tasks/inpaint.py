"""Inpainting of a central block (Lu & Huang 2020, sec. 5.6, Table 5).

"We set the features to be the occluded images and the labels to be the center region that needs to be
inpainted": x = the 8-bit image / 255 (centre square, resized to ``size``) with its central block of side
``block_fraction`` x the image side zeroed; y = that block alone (image8, ``(3, b, b)``), so the flow models only
the hidden pixels; mask = ones on y's grid. Score: PSNR (8-bit, peak 255) of the hidden block, i.e. of all of
``y`` (the paper does not say which region; the whole-image PSNR would count the 75 % of pixels x shows, about
6 dB higher).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from flowlib import metrics
from pipelines.data.imaging import center_square
from pipelines.tasks.base import Scorer, Task


def central_block(height: int, width: int, fraction: float = 0.5) -> tuple[slice, slice]:
    """Rows and columns of the central block of side ``fraction`` x (height, width) (fraction^2 of the pixels)."""
    bh, bw = int(round(height * fraction)), int(round(width * fraction))
    top, left = (height - bh) // 2, (width - bw) // 2
    return slice(top, top + bh), slice(left, left + bw)


def central_block_mask(height: int, width: int, fraction: float = 0.5) -> np.ndarray:
    """1 inside the central block of side ``fraction`` x (height, width), 0 elsewhere (fraction^2 hidden)."""
    mask = np.zeros((height, width), np.float32)
    mask[central_block(height, width, fraction)] = 1.0
    return mask


class InpaintScorer(Scorer):
    """Mean PSNR over images of the 8-bit rounded prediction of the hidden block (all of ``y``)."""

    def score_image(self, prediction, target, mask, *, mean, samples, x, extras) -> None:
        m = mask if mask is not None else np.ones(target.shape[-2:], bool)
        p = np.clip(np.rint(prediction), 0, 255)
        self.record("psnr", metrics.psnr(p[:, m], target[:, m], 255.0))


@dataclass(frozen=True)
class Inpainting(Task):
    """The central block of 8-bit RGB images from the images with that block removed."""

    name: str = "inpaint"
    target: str = "image8"
    size: int | None = 64
    block_fraction: float = 0.5  # side of the central block / side of the image (the paper's is lost)

    summary_metrics: ClassVar[tuple[str, ...]] = ("bpd", "psnr")

    def resize(self, y, x, mask, extras, size: int, *, rng: np.random.Generator):
        """The centre square first (faces stay unstretched), then the common resize."""
        y, mask = center_square(y), center_square(mask)
        x = center_square(x) if x is not None else None
        return super().resize(y, x, mask, extras, size, rng=rng)

    def derive_input(self, y, x, mask, *, key: str, seed: int, epoch: int):
        block = central_block_mask(y.shape[0], y.shape[1], self.block_fraction)
        return (y / 255.0 * (1.0 - block[..., None])).astype(np.float32), mask

    def select_target(self, y, mask):
        """The hidden block: what the model predicts, all of it scored."""
        rows, cols = central_block(y.shape[0], y.shape[1], self.block_fraction)
        block = np.ascontiguousarray(y[rows, cols])
        return block, np.ones(block.shape[:2] + (1,), np.float32)

    def scorer(self) -> InpaintScorer:
        return InpaintScorer()
