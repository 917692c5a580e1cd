"""Sampling temperature sweeps (Winkler et al. 2019, Figure 3): metrics per temperature and a sample grid.

Temperature scales every prior std; 0 decodes the prior means. Each temperature scores the split with the
protocol of `cnf evaluate` (``evaluate_experiment``); the grid shows the same inputs at every temperature,
drawn with the same noise so that only its scale changes.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from pipelines.evaluation.experiment import dataset_folder, eval_dataset, evaluate_experiment
from pipelines.tasks import Task, display_input, get_task

GRID_INPUTS = 4  # rows of the temperature grid


def sweep_split(exp) -> str:
    """The split a sweep scores: ``sweep.split``, else the eval split."""
    return exp.sweep.split or exp.data.eval_split


def sweep_experiment(exp, model, data_dir: str | Path, temperatures: Sequence[float], *, seed: int = 0) -> dict:
    """``{temperature: summary of the sweep split}``, predictions the mean of ``sweep.n_samples`` (else
    ``eval.n_samples``) samples at that temperature."""
    split = sweep_split(exp)
    n_samples = exp.sweep.n_samples or exp.eval.n_samples
    results = {}
    for t in temperatures:
        print(f"[{exp.name}] sweep: temperature {float(t):g}", file=sys.stderr, flush=True)
        out = evaluate_experiment(exp, model, data_dir, seed=seed, n_samples=n_samples, temperature=float(t),
                                  splits={split: {"dataset": eval_dataset(exp), "split": split}})
        results[float(t)] = out[split]
    return results


def grid_batch(exp, data_dir: str | Path, *, seed: int = 0) -> dict:
    """The first ``GRID_INPUTS`` samples of the sweep split, as the evaluation loader reads them."""
    from pipelines.data.loader import loader_options, make_loader

    loader = make_loader(dataset_folder(data_dir, eval_dataset(exp), exp.data.dataset), sweep_split(exp), exp.task,
                         batch_size=GRID_INPUTS, train=False, seed=seed, **loader_options(exp.data, train=False))
    return next(iter(loader))


def temperature_grid(model, batch: Mapping[str, Any], temperatures: Sequence[float], task: Task | str,
                     seed: int = 0) -> list[dict]:
    """Rows ``{"input": x, "T=t": sample, ..., "truth": y}`` of ``(H, W, 3)`` images in [0, 1] for the first
    ``GRID_INPUTS`` inputs of ``batch``: x drawn by ``display_input``, y and samples by ``task.display``."""
    task = get_task(task) if isinstance(task, str) else task
    x, y = batch["x"][:GRID_INPUTS].float(), batch["y"][:GRID_INPUTS].float()
    rows = [{"input": display_input(x[i]), "truth": task.display(y[i])} for i in range(x.shape[0])]
    with torch.inference_mode():
        for t in temperatures:
            torch.manual_seed(seed)  # the same noise at every temperature: only the scale changes
            s = model.sample(x, temperature=float(t))
            for i, row in enumerate(rows):
                row[f"T={float(t):g}"] = task.display(s[i])
    return rows
