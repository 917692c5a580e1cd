"""One split through a model: bits/dim from ``log_likelihood``, predictions from ``predict``, the task's scorer.

Predictions are the mean of ``n_samples`` samples at ``temperature`` (Lu & Huang 2020, sec. 4.3; Winkler et al.
2019, sec. 5.2 takes the mean of 100 samples as the soft map). Bits/dim is the total NLL over the total number
of dimensions (padding included, as the model sees it): 8-bit targets discrete over 256 levels, binary /
categorical flows the dequantization lower bound, factorized models the exact normalised likelihood.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

import torch

from pipelines.io import Progress
from pipelines.tasks import Task


def evaluate_split(model, batches: Iterable[Mapping[str, Any]], task: Task, *, n_samples: int, temperature: float,
                   scatter_samples: int | None = None, label: str = "eval", total: int | None = None,
                   max_batches: int | None = None) -> dict:
    """Run ``model`` over ``batches`` of one split and return ``task.scorer()``'s summary.

    ``batches`` are loader batches ``{"x", "y", "mask", "key", extras...}``. Tasks whose protocol scores
    individual samples (vessel: the PR scatter) get ``min(scatter_samples, n_samples)`` of them per image,
    ``scatter_samples`` defaulting to the task's. ``max_batches`` stops early; ``total`` (samples) is for the
    progress line only.
    """
    scorer = task.scorer()
    per_image = scorer.scatter_samples if scatter_samples is None else scatter_samples
    per_image = min(per_image, n_samples) if scorer.scatter_samples else 0
    progress = Progress(f"[{label}]", total, unit="samples")
    model.eval()
    with torch.inference_mode():
        for b, batch in enumerate(batches):
            if max_batches is not None and b >= max_batches:
                break
            y, x = batch["y"].float(), batch["x"].float()
            scorer.add_likelihood(model.log_likelihood(y, x), int(model.num_dims(y)))
            out = model.predict(x, n_samples=n_samples, temperature=temperature)
            samples = [model.sample(x, temperature=temperature) for _ in range(per_image)]
            scorer.add(batch, out, samples)
            progress.step(y.shape[0], what=f"(batch {b + 1})")
    if progress.n == 0:
        raise ValueError(f"[{label}] no batches to evaluate")
    return scorer.summary()


def finite_scalars(result: Mapping[str, Any]) -> dict[str, float | int]:
    """The finite numbers of a result (what is printed and tracked; lists, curves, labels and inf are not)."""
    return {k: v for k, v in result.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))}
