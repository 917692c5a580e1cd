"""Super-resolution (Winkler et al. 2019, sec. 5.1, Tables 1 and 2): y = HR image8, x = its bicubic LR image.

The shards store ``input.png`` = MATLAB-bicubic ``imresize(modcrop(HR), 1/scale)`` (made at fetch); a resize
of the sample resizes HR and makes its LR input again. Scores: PSNR and SSIM on the BT.601 Y channel, 8-bit
rounded, ``scale`` pixels shaved, inside the valid region (:func:`sr_image_scores`, the one implementation
that `cnf evaluate`, `cnf sweep` and `cnf score` share).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from flowlib import metrics
from pipelines.data.imaging import bicubic_lr, hwc, imresize, resize_nearest
from pipelines.tasks.base import Scorer, Task, valid_box

#: SSIM's Gaussian window is 11 x 11 (sigma 1.5): smaller images have no valid window position.
SSIM_MIN_SIDE = 11


def sr_image_scores(prediction: np.ndarray, target: np.ndarray, mask: np.ndarray | None, scale: int) -> dict:
    r"""PSNR and SSIM of one RGB 8-bit image pair with the SR-literature protocol.

    .. math:: \mathrm{PSNR} = 10 \log_{10} \frac{255^2}{\mathrm{MSE}(Y(\lfloor \hat y \rceil), Y(y))}

    on the BT.601 luma Y (``flowlib.metrics.rgb_to_y``) of the prediction rounded to 8 bits, inside the valid
    region's bounding box (``mask`` (H, W) bool; None: the whole image), ``scale`` pixels shaved per side; SSIM
    (11 x 11 Gaussian window) on the same Y when both sides are at least 11 pixels. ``prediction``, ``target``:
    (3, H, W) on the 0..255 scale. Source: Dong et al. 2015; Wang et al. 2018; Winkler et al. 2019, Table 2.
    """
    rows, cols = valid_box(mask, target.shape[-2:])
    p, t = prediction[:, rows, cols] / 255.0, target[:, rows, cols] / 255.0
    p = np.clip(np.rint(p * 255.0), 0, 255) / 255.0
    yp, yt = metrics.shave(metrics.rgb_to_y(p), scale), metrics.shave(metrics.rgb_to_y(t), scale)
    out = {"psnr": metrics.psnr(yp, yt, 255.0)}
    if min(yt.shape) >= SSIM_MIN_SIDE:
        out["ssim"] = metrics.ssim(yp, yt, 255.0)
    return out


class SuperResolutionScorer(Scorer):
    """Mean PSNR / SSIM over images (Winkler et al. 2019, Table 2)."""

    def __init__(self, scale: int):
        super().__init__()
        self.scale = scale

    def score_image(self, prediction, target, mask, *, mean, samples, x, extras) -> None:
        for name, value in sr_image_scores(prediction, target, mask, self.scale).items():
            self.record(name, value)


@dataclass(frozen=True)
class SuperResolution(Task):
    """x2 (``scale``) super-resolution of 8-bit RGB images from their MATLAB-bicubic downscaled version."""

    name: str = "sr"
    target: str = "image8"
    scale: int = 2  # SR factor: x is y's size / scale

    summary_metrics: ClassVar[tuple[str, ...]] = ("bpd", "psnr", "ssim")

    @property
    def input_scale(self) -> int:
        return self.scale

    def resize(self, y, x, mask, extras, size: int, *, rng: np.random.Generator):
        """HR resized to ``size`` (bicubic, 8-bit), then its LR input made again: x = bicubic_lr(HR)."""
        hr = imresize(np.clip(y, 0, 255).astype(np.uint8), output_shape=(size, size))
        y = hwc(hr.astype(np.float32))
        x = hwc(bicubic_lr(hr, self.scale).astype(np.float32) / 255.0)
        mask = hwc(resize_nearest(mask, (size, size)))
        return y, x, mask, extras

    def scorer(self) -> SuperResolutionScorer:
        return SuperResolutionScorer(self.scale)

    def read_prediction(self, image: np.ndarray) -> np.ndarray:
        """An RGB(A) 8-bit image file -> (3, H, W) on the 0..255 scale (alpha dropped)."""
        a = np.asarray(image, dtype=np.float64)
        if a.ndim != 3 or a.shape[-1] < 3:
            raise ValueError(f"expected an RGB image (H, W, 3), got shape {a.shape}")
        return a[..., :3].transpose(2, 0, 1)
