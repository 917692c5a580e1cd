"""Figures of both papers as PNG files (matplotlib, Agg backend): PR curves, PR sample scatter, sample grids,
likelihood curves.

Every function takes plain data (lists, arrays, dicts read from metrics JSON or MLflow) and a path, writes the
PNG atomically and returns the path, so stages can log it to MLflow as an artifact.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)  # headless: no display on CI or Ray workers
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | os.PathLike) -> Path:
    from pipelines.io import write_with

    try:
        return write_with(path, lambda tmp: fig.savefig(tmp, dpi=120, bbox_inches="tight"), suffix=".png")
    finally:
        fig.canvas.figure.clf()
        _pyplot().close(fig)
    return path


def _iso_f_lines(ax) -> None:
    # Constant-F contours, as drawn in Winkler et al. 2019, Figure 5 (left).
    r = np.linspace(0.01, 1, 200)
    for f in (0.2, 0.4, 0.6, 0.8):
        p = f * r / (2 * r - f)
        ok = (p > 0) & (p <= 1)
        ax.plot(r[ok], p[ok], color="green", alpha=0.25, lw=0.8)


def pr_curves(curves: Mapping[str, Mapping], path: str | os.PathLike, points: Mapping[str, Sequence[float]] | None = None,
              title: str = "DRIVE: precision-recall") -> Path:
    """PR curves from a threshold sweep of soft maps, the maximal F of each marked (Winkler et al. 2019, Fig. 5 left).

    ``curves``: label -> ``{"precision": [...], "recall": [...], "f1": float}``; ``points``: label ->
    ``(recall, precision)`` single operating points (e.g. the second human observer).
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    _iso_f_lines(ax)
    for label, c in curves.items():
        p, r = np.asarray(c["precision"]), np.asarray(c["recall"])
        f = 2 * p * r / np.maximum(p + r, 1e-12)
        best = int(np.argmax(f))
        (line,) = ax.plot(r, p, lw=1.5, label=f"{label} [F={f[best]:.3f}]")
        ax.plot(r[best], p[best], "o", color=line.get_color())
    for label, (r, p) in (points or {}).items():
        f = 2 * p * r / max(p + r, 1e-12)
        ax.plot([r], [p], "*", ms=10, label=f"{label} [F={f:.3f}]")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="recall", ylabel="precision", title=title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower left", fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def pr_scatter(samples: Mapping[str, Mapping[str, Sequence[float]]], path: str | os.PathLike,
               title: str = "DRIVE: individual samples in PR space") -> Path:
    """Precision/recall of individual samples per model (Winkler et al. 2019, Figure 5 right).

    ``samples``: label -> ``{"precision": [...], "recall": [...]}``, one entry per (image, sample).
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    _iso_f_lines(ax)
    for label, s in samples.items():
        ax.scatter(s["recall"], s["precision"], s=10, alpha=0.6, label=label)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="recall", ylabel="precision", title=title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower left", fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _to_display(image: np.ndarray) -> np.ndarray:
    """A grid cell as drawn: ``(H, W, 3)`` floats in [0, 1], made by ``Task.display`` (y) or
    ``pipelines.tasks.base.display_input`` (x); figures only draw, they do not guess an image's scale."""
    a = np.asarray(image, dtype=np.float64)
    if a.ndim != 3 or a.shape[-1] != 3:
        raise ValueError(f"sample_grid: expected (H, W, 3) images from Task.display, got shape {a.shape}")
    if not np.all((a >= 0.0) & (a <= 1.0)):
        raise ValueError(f"sample_grid: image values outside [0, 1] (min {np.nanmin(a):g}, max {np.nanmax(a):g}); "
                         "draw y with Task.display and x with display_input")
    return a


def sample_grid(rows: Sequence[Mapping[str, np.ndarray]], columns: Sequence[str], path: str | os.PathLike,
                title: str = "") -> Path:
    """A grid of images: one row per input, one column per entry (input, temperatures, ground truth...).

    Winkler et al. 2019, Figure 3 (samples at temperatures 0, 0.5, 1.0 beside the baseline and truth).
    ``rows``: a list of ``{column: (H, W, 3) image in [0, 1]}`` (``Task.display``, ``display_input``).
    """
    plt = _pyplot()
    n, m = len(rows), len(columns)
    fig, axes = plt.subplots(n, m, figsize=(1.8 * m, 1.8 * n), squeeze=False)
    for i, row in enumerate(rows):
        for j, col in enumerate(columns):
            ax = axes[i][j]
            ax.axis("off")
            if col in row:
                img = _to_display(row[col])
                ax.imshow(img, vmin=0, vmax=1, interpolation="nearest")
            if i == 0:
                ax.set_title(col, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def metric_vs_temperature(results: Mapping[float, Mapping[str, float]], keys: Sequence[str],
                          path: str | os.PathLike, title: str = "") -> Path:
    """One panel per metric against the sampling temperature."""
    plt = _pyplot()
    keys = [k for k in keys if any(k in r for r in results.values())]
    fig, axes = plt.subplots(1, max(1, len(keys)), figsize=(3.2 * max(1, len(keys)), 3), squeeze=False)
    temps = sorted(results)
    for ax, key in zip(axes[0], keys):
        ax.plot(temps, [results[t].get(key, np.nan) for t in temps], "o-")
        ax.set(xlabel="temperature", ylabel=key)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def likelihood_curves(histories: Mapping[str, tuple[Sequence[int], Sequence[float]]], path: str | os.PathLike,
                      ylabel: str = "training NLL", title: str = "") -> Path:
    """Training negative log-likelihood against step for several runs (Lu & Huang 2020, Figure 6)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, (steps, values) in histories.items():
        ax.plot(steps, values, lw=1.2, label=label)
    ax.set(xlabel="step", ylabel=ylabel, title=title)
    if histories:
        ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _save(fig, path)
