"""Retinal vessel segmentation on DRIVE (Winkler et al. 2019, sec. 5.2, Table 3, Figure 5).

y = binary vessel map, x = fundus RGB, mask = field of view. Training augments with the joint affine warp of
App. A (``pipelines.data.augment.drive_augment``). Scores: max F-score over thresholds of the soft map (the
mean of samples) with the DRIU protocol inside the FOV (per-image P/R averaged, F of the averages), the PR
curve, and precision/recall of individual samples for the PR scatter of Figure 5 (right).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from flowlib import metrics
from pipelines.tasks.base import Scorer, Task

SCATTER_SAMPLES = 5  # individual samples per image for the PR scatter (Winkler et al. 2019, Figure 5 right)


def unit_map(label_map: np.ndarray) -> np.ndarray:
    """A vessel map file in [0, 1] as (1, H, W): 0/1 labels stay, 8-bit maps (0/255 GIFs, soft PNGs) are / 255."""
    a = np.asarray(label_map, dtype=np.float64)
    if a.ndim == 3:
        a = a[..., 0]
    return (a / 255.0 if a.max() > 1.0 else a)[None]


class VesselScorer(Scorer):
    """F-score of the soft maps with the DRIU protocol (:func:`flowlib.metrics.vessel_fscore`)."""

    scatter_samples: ClassVar[int] = SCATTER_SAMPLES

    def __init__(self) -> None:
        super().__init__()
        self.soft: list[np.ndarray] = []
        self.targets: list[np.ndarray] = []
        self.masks: list[np.ndarray] = []
        self.sample_p: list[float] = []
        self.sample_r: list[float] = []

    def score_image(self, prediction, target, mask, *, mean, samples, x, extras) -> None:
        m = mask if mask is not None else np.ones(target.shape[-2:], bool)
        self.soft.append(mean[0])
        self.targets.append(target[0] > 0.5)
        self.masks.append(m)
        for s in samples:
            p, r = metrics.precision_recall(np.asarray(s)[0] > 0.5, target[0] > 0.5, m)
            self.sample_p.append(float(p[0]))
            self.sample_r.append(float(r[0]))

    def split_metrics(self) -> dict:
        res = metrics.vessel_fscore(self.soft, self.targets, self.masks)
        out = {k: res[k] for k in ("f1", "precision", "recall", "threshold")}
        out.update(curve=res["curve"], per_image=res["per_image"],
                   samples_pr={"precision": self.sample_p, "recall": self.sample_r})
        return out


@dataclass(frozen=True)
class VesselSegmentation(Task):
    """Binary vessel maps of DRIVE fundus images, scored inside the field of view."""

    name: str = "vessel"
    target: str = "binary"

    summary_metrics: ClassVar[tuple[str, ...]] = ("bpd", "f1", "precision", "recall")
    augment: ClassVar[bool] = True

    def scorer(self) -> VesselScorer:
        return VesselScorer()

    def read_prediction(self, image: np.ndarray) -> np.ndarray:
        return unit_map(image)
