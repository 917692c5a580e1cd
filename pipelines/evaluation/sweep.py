"""Sampling temperature sweeps (Winkler et al. 2019, Figure 3): metrics per temperature and a sample grid.

Temperature scales every prior std; 0 decodes the prior means. Each temperature scores the sweep split and the
experiment's extra splits (the SR test sets) with the protocol of `cnf evaluate` (``evaluate_experiment``);
``select_temperature`` picks the best one on the sweep split (a validation split), which `cnf evaluate` then
uses for every split (Winkler et al. 2019, Table 2). The grid shows the same inputs at every temperature, drawn
with the same noise so that only its scale changes.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from pipelines.evaluation.experiment import (dataset_folder, eval_dataset, eval_splits, evaluate_experiment,
                                             held_out_options)
from pipelines.evaluation.split import real_size
from pipelines.params import HOLDOUT_SPLIT
from pipelines.tasks import Task, display_input, get_task
from pipelines.tasks.base import UNPADDED

GRID_INPUTS = 4  # rows of the temperature grid


@dataclass(frozen=True)
class SweepEntry:
    """One entry of params.yaml's ``sweeps`` section: ``<experiment>: {dataset: <name>[, select: <metric>]}``.
    ``dataset`` is the one the sweep split (``sweep.split``, else the eval split) is read from: the eval dataset,
    or a training set whose held-out split the temperature is chosen on (denoising: bsds500's valid, the test set
    being CBSD68); ``select`` names the metric the sweep chooses the sampling temperature by (on the sweep
    split), which `cnf evaluate` then uses."""

    experiment: str
    dataset: str
    select: str | None = None


def sweep_entry(sections: Mapping[str, Any], experiment: str) -> SweepEntry | None:
    """``experiment``'s entry of ``sections["sweeps"]`` (``Params.sections``), None when it has none."""
    sweeps = sections.get("sweeps") or {}
    if not isinstance(sweeps, Mapping):
        raise ValueError(f"sweeps: expected a mapping of experiment -> {{dataset, select}}, got {sweeps!r}")
    if experiment not in sweeps:
        return None
    body = sweeps[experiment]
    where = f"sweeps.{experiment}"
    if not isinstance(body, Mapping) or "dataset" not in body or set(body) - {"dataset", "select"}:
        raise ValueError(f"{where}: expected {{dataset: <name>[, select: <metric>]}}, got {body!r}")
    select = body.get("select")
    if select is not None and not isinstance(select, str):
        raise ValueError(f"{where}.select: expected a metric name (e.g. psnr), got {select!r}")
    return SweepEntry(experiment, str(body["dataset"]), select)


def sweep_split(exp) -> str:
    """The split a sweep scores: ``sweep.split``, else the eval split."""
    return exp.sweep.split or exp.data.eval_split


def sweep_splits(exp, dataset: str | None = None) -> dict[str, dict[str, Any]]:
    """What a sweep scores: the sweep split (the one a temperature is chosen on) of ``dataset`` (the
    ``sweeps.<exp>.dataset`` of params.yaml, e.g. a training set's held-out split; default the eval dataset),
    then, unless ``sweep.extra_splits`` is off, ``eval.extra_splits`` (the SR test sets, so each temperature's
    test scores are on record). Bits/dim is not what a sweep is for, so extra splits take it over whole images
    rather than ``bpd_crops``. ``sweep.max_images`` caps the sweep split (its first images, in shard order).
    ``sweep.split: holdout`` is the training split's last ``data.holdout`` samples (``train.select``'s)."""
    split = sweep_split(exp)
    if split == HOLDOUT_SPLIT:
        if dataset not in (None, exp.data.dataset):
            raise ValueError(f"sweeps.{exp.name}.dataset: {dataset!r}, but sweep.split {HOLDOUT_SPLIT!r} is held "
                             f"out of the training set {exp.data.dataset!r}")
        first = {"dataset": exp.data.dataset, "split": exp.data.train_split, "holdout": exp.data.holdout}
    else:
        first = {"dataset": dataset or eval_dataset(exp), "split": split}
    if exp.sweep.max_images:
        first["max_images"] = exp.sweep.max_images
    out = {split: first}
    if not exp.sweep.extra_splits:
        return out
    for name, spec in eval_splits(exp).items():
        if name != exp.data.eval_split and name != split:
            out[name] = {k: v for k, v in spec.items() if k != "bpd_crops"}
    return out


def sweep_experiment(exp, model, data_dir: str | Path, temperatures: Sequence[float], *, seed: int = 0,
                     splits: Mapping[str, Mapping[str, Any]] | None = None) -> dict:
    """``{split name: {temperature: summary}}`` over ``splits`` (default ``sweep_splits(exp)``), the sweep split
    first; predictions are the mean of ``sweep.n_samples`` (else ``eval.n_samples``) samples at that temperature.

    A temperature at which some image has no finite draw at all (``evaluate_split``'s FloatingPointError: the
    prior's tails overflow float32) is recorded as ``{"failed": reason}`` for that split rather than ending the
    sweep: it has no prediction, so ``select_temperature`` never chooses it."""
    n_samples = exp.sweep.n_samples or exp.eval.n_samples
    splits = sweep_splits(exp) if splits is None else splits
    results: dict[str, dict[float, dict]] = {name: {} for name in splits}
    for t in temperatures:
        print(f"[{exp.name}] sweep: temperature {float(t):g}", file=sys.stderr, flush=True)
        for name, spec in splits.items():
            try:
                out = evaluate_experiment(exp, model, data_dir, seed=seed, n_samples=n_samples,
                                          temperature=float(t), splits={name: spec})[name]
            except FloatingPointError as exc:
                print(f"[{exp.name}] sweep: temperature {float(t):g} on {name}: {exc}", file=sys.stderr, flush=True)
                out = {"dataset": spec["dataset"], "split": spec.get("split", "test"), "failed": str(exc)}
            results[name][float(t)] = out
    return results


def select_temperature(results: Mapping[float, Mapping[str, Any]], metric: str) -> float:
    """The temperature whose summary has the best ``metric`` (highest; lowest for ``bpd``); ties go to the
    lowest temperature. A metric no temperature reports is an error naming the ones there are."""
    scored = {t: s[metric] for t, s in results.items()
              if isinstance(s.get(metric), (int, float)) and math.isfinite(float(s[metric]))}
    if not scored:
        there = sorted({k for s in results.values() for k, v in s.items() if isinstance(v, (int, float))})
        raise ValueError(f"no temperature has a finite {metric!r} to choose by; the sweep reports {there}")
    sign = 1.0 if metric == "bpd" else -1.0
    return min(sorted(scored), key=lambda t: sign * float(scored[t]))


def grid_batch(exp, data_dir: str | Path, *, seed: int = 0, dataset: str | None = None,
               spec: Mapping[str, Any] | None = None) -> dict:
    """The first ``GRID_INPUTS`` samples of the sweep split (``spec``, an entry of :func:`sweep_splits`; default
    the sweep split of ``dataset``, else of the eval dataset), as the evaluation loader reads them: one batch
    when they share a shape, else ``x`` and ``y`` are lists of ``(1, C, H, W)`` tensors (native-size images,
    e.g. the SR validation split, which no batch can hold)."""
    from itertools import islice

    from pipelines.data.loader import loader_options, make_loader

    spec = sweep_splits(exp, dataset)[sweep_split(exp)] if spec is None else spec
    folder = dataset_folder(data_dir, spec["dataset"], exp.data.dataset)
    loader = make_loader(folder, spec["split"], exp.task, batch_size=1, train=False, seed=seed,
                         **held_out_options(spec), **loader_options(exp.data, train=False))
    items = list(islice(iter(loader), GRID_INPUTS))
    if not items:
        raise ValueError(f"{exp.name}: the sweep split {sweep_split(exp)!r} has no samples for the grid")
    keys = [k for b in items for k in b.get("key", [])]
    xs, ys, us = [b["x"] for b in items], [b["y"] for b in items], [b[UNPADDED] for b in items]
    if len({tuple(t.shape) for t in xs}) == 1 and len({tuple(t.shape) for t in ys}) == 1:
        return {"x": torch.cat(xs), "y": torch.cat(ys), UNPADDED: torch.cat(us), "key": keys}
    return {"x": xs, "y": ys, UNPADDED: us, "key": keys}


def temperature_grid(model, batch: Mapping[str, Any], temperatures: Sequence[float], task: Task | str,
                     seed: int = 0) -> list[dict]:
    """Rows ``{"input": x, "T=t": sample, ..., "truth": y}`` of ``(H, W, 3)`` images in [0, 1] for the first
    ``GRID_INPUTS`` inputs of ``batch``: x drawn by ``display_input``, y and samples by ``task.display``.

    ``batch["x"]``/``batch["y"]`` are a batch, or lists of ``(1, C, H, W)`` inputs of different sizes (sampled
    one after another from the same seed). Every temperature restarts from ``seed``: the same noise, scaled.
    With the loader's ``unpadded`` marker (``batch[UNPADDED]``, a batch or a list like ``y``) every image is cut
    to its real pixels: the padding for the flow's size multiple is not drawn."""
    task = get_task(task) if isinstance(task, str) else task
    if isinstance(batch["x"], torch.Tensor):
        marker = batch.get(UNPADDED)
        groups = [(batch["x"][:GRID_INPUTS].float(), batch["y"][:GRID_INPUTS].float(),
                   None if marker is None else marker[:GRID_INPUTS])]
    else:
        markers = batch.get(UNPADDED) or [None] * len(batch["x"])
        groups = [(x.float(), y.float(), u) for x, y, u in list(zip(batch["x"], batch["y"], markers))[:GRID_INPUTS]]
    rows, boxes = [], []  # boxes: each row's real pixels on y's grid, for its samples
    for x, y, u in groups:
        for i in range(x.shape[0]):
            bx, by = _real_boxes(x, y, u, i)
            rows.append({"input": display_input(x[i])[bx], "truth": task.display(y[i])[by]})
            boxes.append(by)
    with torch.inference_mode():
        for t in temperatures:
            torch.manual_seed(seed)  # the same noise at every temperature: only the scale changes
            samples = [model.sample(x, temperature=float(t)) for x, _, _ in groups]
            for row, by, s in zip(rows, boxes, (s[i] for s in samples for i in range(s.shape[0]))):
                row[f"T={float(t):g}"] = task.display(s)[by]
    return rows


def _real_boxes(x: torch.Tensor, y: torch.Tensor, marker, i: int) -> tuple[tuple[slice, slice], tuple[slice, slice]]:
    """``(x box, y box)``: the index slices of sample ``i``'s real pixels on ``x``'s and ``y``'s grids (padding is
    bottom/right; ``marker`` None: all of both)."""
    if marker is None:
        return (slice(None), slice(None)), (slice(None), slice(None))
    h, w = real_size({"y": y, UNPADDED: marker}, i)
    (hy, wy), (hx, wx) = y.shape[-2:], x.shape[-2:]
    return (slice(0, math.ceil(h * hx / hy)), slice(0, math.ceil(w * wx / wy))), (slice(0, h), slice(0, w))


def better(metric: str) -> int:
    """+1 when a higher ``metric`` is better, -1 when lower is (bits/dim, as in ``select_temperature``)."""
    return -1 if metric == "bpd" else 1


# A likelihood does not depend on the sampling temperature: bits/dim is the evaluation's number, not a curve.
TEMPERATURE_FREE = ("bpd",)


def sweep_outputs(task: Task, by_split: Mapping[str, Mapping[float, Mapping[str, Any]]]) -> tuple[dict, dict, list]:
    """``(metrics, best_at, records)`` of a sweep (``sweep_experiment``'s ``{split: {temperature: summary}}``).

    ``metrics`` = ``{split: {metric: the best value over the temperatures}}`` (highest; the task's summary
    metrics that depend on the temperature: not bits/dim, ``TEMPERATURE_FREE``): what ``dvc metrics diff`` compares. ``best_at`` = ``{split: {metric: the
    temperature it was best at (ties: the lowest)}}``, for the info file. ``records`` = one ``{temperature,
    split, metric, value}`` per finite value, the curves ``dvc plots`` draws (Winkler et al. 2019, Figure 3).
    """
    from pipelines.evaluation.outputs import summary_metrics

    metrics, best_at, records = {}, {}, []
    for split, per_t in by_split.items():
        values: dict[str, dict[float, float]] = {}
        for t in sorted(per_t):
            for metric, value in summary_metrics(task, per_t[t]).items():
                if metric in TEMPERATURE_FREE:
                    continue
                values.setdefault(metric, {})[float(t)] = value
                records.append({"temperature": float(t), "split": split, "metric": metric, "value": value})
        if values:
            best_at[split] = {m: min(sorted(v), key=lambda t: -better(m) * v[t]) for m, v in values.items()}
            metrics[split] = {m: values[m][t] for m, t in best_at[split].items()}
    return metrics, best_at, records
