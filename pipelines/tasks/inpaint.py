"""Inpainting of a central block (Lu & Huang 2020, sec. 5.6, Table 5).

"We set the features to be the occluded images and the labels to be the center region that needs to be
inpainted": x = the 8-bit image / 255 (centre square, resized to ``size``) with its central block of side
``block_fraction`` x the image side zeroed; y = that block alone (image8, ``(3, b, b)``), so the flow models only
the hidden pixels; mask = ones on y's grid. Scores (8-bit, peak 255, per image then averaged; the paper does not
say which region):

- ``psnr``: the whole image, the predicted block put back into the pixels x shows (exact there, so only the
  block errs): 10 log10(255^2 N / SSE_block) with N the image's elements, the hidden block's PSNR plus
  10 log10(N / N_block) (6.02 dB for a quarter hidden). This is the region the comparison in Table 5 implies:
  DCGANi and DCGANi-b (Yeh et al. 2017) output whole images, the blending acting on the block's colours against
  their surround, and 22 to 25 dB over a hidden quarter alone would put every method far past what the
  surround determines.
- ``psnr_block``: the hidden block alone (all of ``y``), the stricter number.
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


def composite(block: np.ndarray, x: np.ndarray, fraction: float = 0.5) -> np.ndarray:
    """The whole 8-bit image ``(C, H, W)``: ``x``'s shown pixels (``x`` in [0, 1]) with ``block`` in the hidden one."""
    image = np.rint(np.asarray(x, np.float64) * 255.0)
    rows, cols = central_block(image.shape[-2], image.shape[-1], fraction)
    if image[:, rows, cols].shape != block.shape:
        raise ValueError(f"inpaint: a block of shape {block.shape} does not fill the hidden block "
                         f"{image[:, rows, cols].shape} of x {image.shape} (block_fraction {fraction})")
    image[:, rows, cols] = block
    return image


class InpaintScorer(Scorer):
    """Mean PSNR over images of the 8-bit rounded prediction: the whole image (``psnr``) and the block alone.

    Without ``x`` (``cnf score`` of bare blocks) only ``psnr_block`` can be computed.
    """

    def __init__(self, block_fraction: float = 0.5):
        super().__init__()
        self.block_fraction = block_fraction

    def score_image(self, prediction, target, mask, *, mean, samples, x, extras) -> None:
        m = mask if mask is not None else np.ones(target.shape[-2:], bool)
        p = np.clip(np.rint(prediction), 0, 255)
        self.record("psnr_block", metrics.psnr(p[:, m], target[:, m], 255.0))
        if x is not None:
            truth = composite(target, x, self.block_fraction)
            self.record("psnr", metrics.psnr(composite(np.where(m, p, target), x, self.block_fraction), truth, 255.0))


@dataclass(frozen=True)
class Inpainting(Task):
    """The central block of 8-bit RGB images from the images with that block removed."""

    name: str = "inpaint"
    target: str = "image8"
    size: int | None = 64
    block_fraction: float = 0.5  # side of the central block / side of the image (the paper's is lost)

    summary_metrics: ClassVar[tuple[str, ...]] = ("bpd", "psnr", "psnr_block")

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
        return InpaintScorer(self.block_fraction)
