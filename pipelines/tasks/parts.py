"""Face part labelling on LFW (Lu & Huang 2020, sec. 5.2, Table 2).

y = categorical {0 background, 1 face, 2 hair}, x = RGB, resized to ``size``. Score: super-pixel accuracy
(the fraction of super-pixels whose majority predicted label equals the majority true label), with the
super-pixels of the LFW release (``superpixels.png`` in the shards) or, when the shards carry none, SLIC
super-pixels of x (then the output says ``superpixels: slic``); pixel accuracy beside it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Mapping

import numpy as np

from flowlib import metrics
from pipelines.tasks.base import Scorer, Task, valid_box


def slic_superpixels(x: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """SLIC super-pixels of an input image ``(C, H, W)`` in [0, 1], about 16 pixels each (LFW fallback)."""
    from skimage.segmentation import slic

    img = np.asarray(x, dtype=np.float64)[:, : shape[0], : shape[1]].transpose(1, 2, 0)
    n = max(4, (shape[0] * shape[1]) // 16)
    return slic(img, n_segments=n, compactness=10.0, start_label=0, channel_axis=-1 if img.shape[-1] > 1 else None)


class SuperpixelScorer(Scorer):
    """Super-pixel accuracy over the split and mean pixel accuracy over images (c-Glow Table 2)."""

    def __init__(self) -> None:
        super().__init__()
        self.preds: list[np.ndarray] = []
        self.targets: list[np.ndarray] = []
        self.maps: list[np.ndarray] = []
        self.source: str | None = None

    def score_image(self, prediction, target, mask, *, mean, samples, x, extras) -> None:
        rows, cols = valid_box(mask, target.shape[-2:])
        if "superpixels" in extras:
            sp = np.asarray(extras["superpixels"]).reshape(target.shape[-2:])[rows, cols].astype(np.int64)
            self.source = "shards"
        else:
            if x is None:
                raise ValueError("parts: without super-pixels in the sample, SLIC needs the input x")
            sp = slic_superpixels(x, target.shape[-2:])[rows, cols]
            self.source = "slic"
        pred, true = prediction[0, rows, cols], target[0, rows, cols]
        self.preds.append(pred)
        self.targets.append(true)
        self.maps.append(sp)
        self.record("pixel_accuracy", float(np.mean(np.rint(pred) == np.rint(true))))

    def split_metrics(self) -> dict:
        return {"spa": metrics.superpixel_accuracy(self.preds, self.targets, self.maps), "superpixels": self.source}


@dataclass(frozen=True)
class FaceParts(Task):
    """Three-class face/hair/background maps of LFW funneled faces at a square ``size``."""

    name: str = "parts"
    target: str = "categorical"
    num_classes: int | None = 3
    size: int | None = 64

    summary_metrics: ClassVar[tuple[str, ...]] = ("bpd", "spa", "pixel_accuracy")
    extra_members: ClassVar[Mapping[str, str]] = {"superpixels": "superpixels.png"}

    def scorer(self) -> SuperpixelScorer:
        return SuperpixelScorer()
