"""Stage `cnf sweep`: metrics and sample grids of a trained experiment across sampling temperatures.

    cnf sweep EXPERIMENT [--params params.yaml] [--model models/<exp>.pt] [--data DIR]
              [--out metrics/sweep/<exp>.json] [--figures figures] [--set k=v ...]

For each temperature of ``sweep.temperatures`` (default 0, 0.5, 0.8, 1.0; temperature scales every prior
std, 0 decodes the prior means) the experiment's eval split (``sweep.split`` to choose another) is scored
with the evaluation protocol of `cnf evaluate` (prediction = mean of ``sweep.n_samples`` or ``eval.n_samples``
samples). A sample grid for fixed inputs (the first batch of the split: input, one sample per temperature,
ground truth; Winkler et al. 2019, Figure 3) and a metric-vs-temperature plot go to ``figures/`` and to the
experiment's MLflow run (``sweep.<metric>`` at step = round(100 T)). Writes ``metrics/sweep/<exp>.json``.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from pipelines.stages.evaluate import (SUMMARY_METRICS, dataset_folder, evaluate_experiment, task_name,
                                train_run_id)

GRID_INPUTS = 4  # rows of the temperature grid


def display(t: torch.Tensor, target: str, num_classes: int | None = None) -> np.ndarray:
    """A data-space image ``(C, H, W)`` as floats in [0, 1] for a figure."""
    a = t.detach().double().cpu().numpy()
    if target == "image8":
        a = a / 255.0
    elif target == "categorical":
        a = a / max((num_classes or 3) - 1, 1)
    elif target == "continuous" and (a.min() < 0 or a.max() > 1):
        a = (a - a.min()) / max(a.max() - a.min(), 1e-12)
    return np.clip(a, 0, 1)


def temperature_grid(model, batch: Mapping[str, Any], temperatures, target: str, num_classes: int | None,
                     seed: int = 0) -> list[dict]:
    """Rows ``{"input": x, "T=t": sample, ..., "truth": y}`` for the first inputs of ``batch``."""
    x, y = batch["x"][:GRID_INPUTS].float(), batch["y"][:GRID_INPUTS].float()
    rows = [{"input": np.clip(x[i].double().numpy(), 0, 1), "truth": display(y[i], target, num_classes)}
            for i in range(x.shape[0])]
    with torch.no_grad():
        for t in temperatures:
            torch.manual_seed(seed)  # the same noise at every temperature: only the scale changes
            s = model.sample(x, temperature=float(t))
            for i, row in enumerate(rows):
                row[f"T={float(t):g}"] = display(s[i], target, num_classes)
    return rows


def sweep_experiment(exp, model, data_dir: str | Path, temperatures, *, seed: int = 0) -> dict:
    """``{temperature: summary of the split}`` for every temperature (see the module docstring)."""
    split = exp.sweep.split or exp.data.eval_split
    dataset = getattr(exp.data, "eval_dataset", None) or exp.data.dataset
    n_samples = exp.sweep.n_samples or exp.eval.n_samples
    results = {}
    for t in temperatures:
        print(f"[{exp.name}] sweep: temperature {float(t):g}", file=sys.stderr, flush=True)
        out = evaluate_experiment(exp, model, data_dir, seed=seed, n_samples=n_samples, temperature=float(t),
                                  splits={split: {"dataset": dataset, "split": split}})
        results[float(t)] = out[split]
    return results


def configure(parser: argparse.ArgumentParser) -> None:
    from pipelines.stages.evaluate import add_trained_model_arguments

    add_trained_model_arguments(parser)
    parser.add_argument("--out", default=None, help="default metrics/sweep/<exp>.json")
    parser.add_argument("--figures", default="figures")
    parser.add_argument("--temperatures", default=None, help="comma-separated, overrides sweep.temperatures")


def run(args: argparse.Namespace) -> int:
    from flowlib.checkpoint import load_model
    from pipelines.reporting import figures
    from pipelines.data.loader import loader_options, make_loader
    from pipelines.params import load_params
    from pipelines.io import write_json
    from pipelines.tasks import get_task

    params = load_params(args.params, args.overrides, experiment=args.experiment)
    exp = params.experiment(args.experiment)
    temps = ([float(t) for t in args.temperatures.split(",")] if args.temperatures
             else [float(t) for t in exp.sweep.temperatures])
    if not temps or any(t < 0 or not math.isfinite(t) for t in temps):
        raise ValueError(f"sweep temperatures must be finite and >= 0, got {temps}")
    model_path = args.model or f"models/{exp.name}.pt"
    out_path = Path(args.out or f"metrics/sweep/{exp.name}.json")
    run_id = train_run_id(args.train_metrics or f"metrics/train/{exp.name}.json")
    task = get_task(exp.task)
    model = load_model(model_path)
    model.eval()

    results = sweep_experiment(exp, model, args.data, temps, seed=args.seed)

    split = exp.sweep.split or exp.data.eval_split
    dataset = getattr(exp.data, "eval_dataset", None) or exp.data.dataset
    kwargs = loader_options(exp.data, train=False)
    loader = make_loader(dataset_folder(args.data, dataset, exp.data.dataset), split, exp.task,
                         batch_size=GRID_INPUTS, train=False, seed=args.seed, **kwargs)
    batch = next(iter(loader))
    rows = temperature_grid(model, batch, temps, task.target, exp.model.num_classes or task.num_classes, args.seed)
    columns = ["input", *[f"T={t:g}" for t in temps], "truth"]
    keys = [k for k in SUMMARY_METRICS.get(task_name(exp.task), ("bpd",)) if k != "bpd"] or ["bpd"]
    figs = Path(args.figures)
    paths = [
        figures.sample_grid(rows, columns, figs / f"{exp.name}_temperature_grid.png",
                            title=f"{exp.name}: samples per temperature ({split})"),
        figures.metric_vs_temperature(results, keys, figs / f"{exp.name}_temperature_metrics.png", title=exp.name),
    ]
    payload = {"experiment": exp.name, "paper": exp.paper, "task": exp.task, "profile": params.profile,
               "mlflow_run_id": run_id, "split": split, "dataset": dataset,
               "n_samples": exp.sweep.n_samples or exp.eval.n_samples, "temperatures": temps,
               "results": {f"{t:g}": {k: v for k, v in s.items() if not isinstance(v, (list, dict))}
                           for t, s in results.items()},
               "figures": [str(p) for p in paths], "grid_keys": list(batch.get("key", []))[:GRID_INPUTS]}
    if run_id:
        from pipelines import tracking

        run_id = tracking.open_run(tracking.experiment_name(exp.paper, params.mlflow.experiment_prefix), exp.name,
                                   run_id)
        payload["mlflow_run_id"] = run_id
        for t, s in results.items():
            tracking.log_metrics(run_id, {f"sweep.{k}": v for k, v in s.items()
                                          if isinstance(v, (int, float)) and not isinstance(v, bool)
                                          and math.isfinite(float(v))} | {"sweep.temperature": t},
                                 step=int(round(100 * t)))
        for p in paths:
            tracking.log_artifact(run_id, p, "figures")
        tracking.finish_run(run_id)
    else:
        print(f"warning: no mlflow_run_id for {exp.name}; sweep not tracked", file=sys.stderr)
    write_json(out_path, payload)
    print(json.dumps({"experiment": exp.name, "temperatures": temps,
                      **{k: [results[t].get(k) for t in temps] for k in keys}}))
    return 0
