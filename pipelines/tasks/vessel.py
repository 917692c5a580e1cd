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


# An integer map with more than two values is an 8-bit probability map (/ 255) only if it reaches this high: one
# that stays at a few small values ({0, 1, 2}, say) is far likelier a 0/1 mask gone wrong (JPEG artefacts, a
# label map with an extra class) than a model that never exceeds p = 0.06, and scoring it either way is a guess.
MIN_8BIT_MAP_MAX = 16
MAP_ENCODINGS = ("a binary mask (two values: {0, 1}, {0, 255}, bool or {0, M}), an 8-bit probability map "
                 f"(integers 0..255 reaching at least {MIN_8BIT_MAP_MAX}) or a float map in [0, 1]")


def unit_map(label_map: np.ndarray) -> np.ndarray:
    """A vessel map file as (1, H, W) in [0, 1]; a ``ValueError`` says what the values are when they fit no encoding.

    A binary mask is binary whatever its two values: ``{0, 1}``, ``{0, 255}``, bool, any integer ``{0, M}`` or
    float ``{0, M > 1}``, each becomes 0/1. Soft maps stay as documented: integers 0..255 with more than two
    values are an 8-bit probability map (/ 255), floats in [0, 1] are probabilities as they are. Anything else
    (negative or NaN values, floats above 1, integers above 255, an integer map of a few small values, see
    ``MIN_8BIT_MAP_MAX``) is refused rather than rescaled by a guess. Colour maps are read from their first
    channel.
    """
    a = np.asarray(label_map)
    if a.ndim == 3:
        a = a[..., 0]
    if a.dtype == bool:
        return a.astype(np.float64)[None]
    integer = np.issubdtype(a.dtype, np.integer)
    if not (integer or np.issubdtype(a.dtype, np.floating)):
        raise ValueError(f"a {a.dtype} map; expected {MAP_ENCODINGS}")
    a = a.astype(np.float64)
    if not np.isfinite(a).all():
        raise ValueError(f"non-finite values in the map; expected {MAP_ENCODINGS}")
    values = np.unique(a)
    lo, hi, n = float(values[0]), float(values[-1]), len(values)
    if lo < 0:
        raise ValueError(f"values {lo:g}..{hi:g} include negatives; expected {MAP_ENCODINGS}")
    if (n <= 2 and lo == 0 and (integer or hi > 1)) or (integer and n == 1):
        return (a > 0).astype(np.float64)[None]  # {0, M}, or a constant integer map: binary whatever M is
    if integer:
        if hi > 255 or hi < MIN_8BIT_MAP_MAX:
            raise ValueError(f"integer values {lo:g}..{hi:g} ({n} distinct) are neither a binary mask nor an 8-bit "
                             f"probability map; expected {MAP_ENCODINGS}")
        return (a / 255.0)[None]
    if hi > 1:
        raise ValueError(f"float values {lo:g}..{hi:g} ({n} distinct) lie outside [0, 1]; expected {MAP_ENCODINGS}")
    return a[None]


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
