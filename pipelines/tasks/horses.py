"""Figure/ground segmentation of Weizmann horses (Lu & Huang 2020, sec. 5.2, Table 1).

x = RGB, y = the binary foreground map tiled ``tile`` times along the channels ("we copy each mask three times
and tile them together, so y has three channels. This transformation can improve the model performance"),
both resized to ``size`` (the paper's 32/64/128 rows). A prediction is collapsed back to one map by averaging
the soft maps of the channels (each the sample mean, sec. 4.3) and thresholding at 1/2: a majority vote of the
copies that also weighs how sure each is. Score: the class-mean IoU (background and foreground IoU averaged,
per image, then over images: the authors' released code) as ``iou``, the foreground IoU beside it as
``iou_fg``. Bits/dim counts the ``tile`` copies as dimensions (D = tile x H x W), as the model sees them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from flowlib import metrics
from pipelines.tasks.base import Scorer, Task, valid_box


def collapse_tiles(soft: np.ndarray) -> np.ndarray:
    """A tiled binary map's soft channels ``(C, H, W)`` -> one ``(1, H, W)`` 0/1 map: channel mean > 1/2."""
    return (np.asarray(soft, np.float64).mean(axis=0, keepdims=True) > 0.5).astype(np.float64)


class SegmentationScorer(Scorer):
    """Class-mean and foreground IoU of the collapsed label maps inside the valid region."""

    def __init__(self) -> None:
        super().__init__()
        self.preds: list[np.ndarray] = []
        self.targets: list[np.ndarray] = []

    def score_image(self, prediction, target, mask, *, mean, samples, x, extras) -> None:
        if target.shape[0] > 1 and not np.all(target == target[:1]):
            raise ValueError(f"horses: the {target.shape[0]} channels of a tiled target differ")
        rows, cols = valid_box(mask, target.shape[-2:])
        self.preds.append(collapse_tiles(mean)[0, rows, cols])
        self.targets.append(target[0, rows, cols])

    def split_metrics(self) -> dict:
        return {"iou": metrics.iou(self.preds, self.targets, mode="classes"),
                "iou_fg": metrics.iou(self.preds, self.targets, mode="foreground")}


@dataclass(frozen=True)
class HorseSegmentation(Task):
    """Binary horse/background maps at a square ``size``, tiled to ``tile`` identical channels."""

    name: str = "horses"
    target: str = "binary"
    size: int | None = 64
    tile: int = 3  # copies of the mask along the channels (c-Glow sec. 5.2: three); 1 = no tiling

    summary_metrics: ClassVar[tuple[str, ...]] = ("bpd", "iou", "iou_fg")

    def __post_init__(self):
        super().__post_init__()
        if self.tile < 1:
            raise ValueError(f"task {self.name!r}: tile must be >= 1, got {self.tile}")

    def read(self, decoded, key: str):
        """The stored mask tiled along the channels right away, so every later step keeps the copies identical."""
        y, x, mask, extras = super().read(decoded, key)
        return np.repeat(y[..., :1], self.tile, axis=-1), x, mask, extras

    def scorer(self) -> SegmentationScorer:
        return SegmentationScorer()
