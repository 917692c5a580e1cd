"""Figure/ground segmentation of Weizmann horses (Lu & Huang 2020, sec. 5.2, Table 1).

y = binary foreground map, x = RGB, both resized to ``size`` (the paper's 32/64/128 rows). Score: foreground
IoU per image, averaged over images (the DVN convention c-Glow's Table 1 reproduces); the mean over both
classes is reported beside it as ``iou_classes``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from flowlib import metrics
from pipelines.tasks.base import Scorer, Task, valid_box


class SegmentationScorer(Scorer):
    """Mean IoU of label maps inside the valid region."""

    def __init__(self) -> None:
        super().__init__()
        self.preds: list[np.ndarray] = []
        self.targets: list[np.ndarray] = []

    def score_image(self, prediction, target, mask, *, mean, samples, x, extras) -> None:
        rows, cols = valid_box(mask, target.shape[-2:])
        self.preds.append(prediction[0, rows, cols])
        self.targets.append(target[0, rows, cols])

    def split_metrics(self) -> dict:
        return {"iou": metrics.iou(self.preds, self.targets, mode="foreground"),
                "iou_classes": metrics.iou(self.preds, self.targets, mode="classes")}


@dataclass(frozen=True)
class HorseSegmentation(Task):
    """Binary horse/background maps at a square ``size``."""

    name: str = "horses"
    target: str = "binary"
    size: int | None = 64

    summary_metrics: ClassVar[tuple[str, ...]] = ("bpd", "iou")

    def scorer(self) -> SegmentationScorer:
        return SegmentationScorer()
