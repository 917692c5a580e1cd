"""Stage `cnf sweep`: a trained experiment across sampling temperatures.

    cnf sweep EXPERIMENT [--params params.yaml] [--model models/<exp>.pt] [--data-root data/shards]
              [--out metrics/sweep/<exp>.json] [--info-out info/sweep/<exp>.json]
              [--plots-out plots/sweep/<exp>.json] [--figures figures] [--temperatures T,T,...]
              [--any-checkpoint] [--listed-only] [--set k=v ...]

For each temperature of ``sweep.temperatures`` (default 0, 0.5, 0.8, 1.0; temperature scales every prior
std, 0 decodes the prior means) the experiment's sweep split (``sweep.split``, else the eval split, of the
dataset ``sweeps.<exp>.dataset`` names, else of the eval dataset; its first ``sweep.max_images`` only, if set)
and its ``eval.extra_splits`` (the SR test sets) are scored with the evaluation protocol of `cnf evaluate`
(prediction = mean of ``sweep.n_samples`` or ``eval.n_samples`` samples; ``pipelines.evaluation.sweep``).
With ``sweeps.<exp>.select: <metric>`` in params.yaml the temperature with the best metric on the sweep split
is chosen (``selection`` in the info file), and `cnf evaluate` uses it for every split (Winkler et al. 2019,
Table 2). The checkpoint must be one of this experiment (as in `cnf evaluate`). Writes atomically:

- ``--out``: ``{split: {metric: best value over the temperatures}}`` (highest; not bpd: no function of it);
- ``--info-out``: labels, the temperatures, ``selection`` (metric, temperature, split, dataset, value, rule),
  the temperature each best value was reached at, the splits' datasets, the figures, ``mlflow_run_id``;
- ``--plots-out``: the curves, one record ``{temperature, split, metric, value}`` per value, for ``dvc plots``.

With ``--listed-only`` (the pipeline's stage, one per experiment) an experiment without a ``sweeps.<exp>`` entry is
not swept: the stage writes ``{}`` metrics, ``[]`` plots, an info file with ``swept: false`` and an empty figures
folder, without loading the model, so each evaluation can depend on its own sweep file.

A sample grid for fixed inputs (the first batch of the sweep split: input, one sample per temperature, ground
truth; Winkler et al. 2019, Figure 3) and a metric-vs-temperature plot go to ``--figures`` and to the
experiment's MLflow run (``sweep.<metric>`` at step = round(100 T)).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from pipelines.stages._args import add_trained_model_arguments


def configure(parser: argparse.ArgumentParser) -> None:
    add_trained_model_arguments(parser)
    parser.add_argument("--out", default=None, help="metrics JSON, numbers only (default metrics/sweep/<exp>.json)")
    parser.add_argument("--info-out", default=None,
                        help="bookkeeping JSON: temperatures, selection, run id (default info/sweep/<exp>.json)")
    parser.add_argument("--plots-out", default=None,
                        help="metric-vs-temperature records for `dvc plots` (default plots/sweep/<exp>.json)")
    parser.add_argument("--any-checkpoint", action="store_true",
                        help="sweep --model even if it is a checkpoint of another experiment or config")
    parser.add_argument("--figures", default="figures")
    parser.add_argument("--temperatures", default=None, help="comma-separated, overrides sweep.temperatures")
    parser.add_argument("--listed-only", action="store_true",
                        help="sweep only if params.yaml has a sweeps.<exp> entry; else record that it has none")


def run(args: argparse.Namespace) -> int:
    from pipelines.evaluation.experiment import load_experiment_model, train_run_id
    from pipelines.evaluation.outputs import relative_path
    from pipelines.evaluation.split import finite_scalars
    from pipelines.evaluation.sweep import (GRID_INPUTS, grid_batch, select_temperature, sweep_entry,
                                            sweep_experiment, sweep_outputs, sweep_splits, temperature_grid)
    from pipelines.io import write_json
    from pipelines.params import load_params
    from pipelines.reporting import figures
    from pipelines.tasks import get_task

    params = load_params(args.params, args.overrides, experiment=args.experiment)
    exp = params.experiment(args.experiment)
    temps = ([float(t) for t in args.temperatures.split(",")] if args.temperatures
             else [float(t) for t in exp.sweep.temperatures])
    if not temps or any(t < 0 or not math.isfinite(t) for t in temps):
        raise ValueError(f"sweep temperatures must be finite and >= 0, got {temps}")
    task = get_task(exp.task).with_options(**(exp.data.options or {}))
    entry = sweep_entry(params.sections, exp.name)
    if entry is not None and entry.select is not None and entry.select not in task.summary_metrics:
        raise ValueError(f"sweeps.{exp.name}.select: {entry.select!r} is not a metric of task {exp.task!r}; "
                         f"expected one of {list(task.summary_metrics)}")
    out_path = Path(args.out or f"metrics/sweep/{exp.name}.json")
    info_path = Path(args.info_out or f"info/sweep/{exp.name}.json")
    plots_path = Path(args.plots_out or f"plots/sweep/{exp.name}.json")
    if entry is None and args.listed_only:
        Path(args.figures).mkdir(parents=True, exist_ok=True)
        write_json(plots_path, [])
        write_json(info_path, {"experiment": exp.name, "paper": exp.paper, "task": exp.task, "profile": params.profile,
                               "swept": False, "reason": f"params.yaml has no sweeps.{exp.name} entry"})
        write_json(out_path, {})
        print(json.dumps({"experiment": exp.name, "swept": False}))
        return 0
    model_path = args.model or f"models/{exp.name}.pt"
    try:
        model = load_experiment_model(exp, model_path, any_checkpoint=args.any_checkpoint)
    except ValueError as exc:
        print(f"cnf sweep {exp.name}: error: {exc}", file=sys.stderr)
        return 2
    run_id = train_run_id(args.train_metrics or f"runs/{exp.name}/train_info.json")
    model.eval()

    # The sweep split is read from sweeps.<exp>.dataset (e.g. a training set's held-out split), else the eval set.
    dataset = entry.dataset if entry is not None else None
    splits = sweep_splits(exp, dataset)
    by_split = sweep_experiment(exp, model, args.data, temps, seed=args.seed, splits=splits)
    split = next(iter(splits))
    results = by_split[split]
    metrics, best_at, records = sweep_outputs(task, by_split)

    batch = grid_batch(exp, args.data, seed=args.seed, spec=splits[split])
    rows = temperature_grid(model, batch, temps, task, args.seed)
    columns = ["input", *[f"T={t:g}" for t in temps], "truth"]
    keys = [k for k in task.summary_metrics if k != "bpd"] or ["bpd"]
    figs = Path(args.figures)
    paths = [
        figures.sample_grid(rows, columns, figs / f"{exp.name}_temperature_grid.png",
                            title=f"{exp.name}: samples per temperature ({split})"),
        figures.metric_vs_temperature(results, keys, figs / f"{exp.name}_temperature_metrics.png", title=exp.name),
    ]
    info = {"experiment": exp.name, "paper": exp.paper, "task": exp.task, "profile": params.profile, "swept": True,
            "mlflow_run_id": run_id, "split": split, "dataset": splits[split]["dataset"],
            "n_samples": exp.sweep.n_samples or exp.eval.n_samples, "temperatures": temps,
            "splits": {name: {"dataset": spec["dataset"], "split": spec.get("split", "test"),
                              **({"holdout": spec["holdout"]} if spec.get("holdout") else {}),
                              "n": next((s["n"] for s in by_split[name].values() if "n" in s), None)}
                       for name, spec in splits.items()},
            # Temperatures without a prediction (every draw of some image overflowed float32): never chosen.
            "failed": {name: {str(t): s["failed"] for t, s in per_t.items() if "failed" in s}
                       for name, per_t in by_split.items() if any("failed" in s for s in per_t.values())} or None,
            "best_at": best_at, "plots": relative_path(plots_path),
            "figures": [p for p in (relative_path(p) for p in paths) if p] or None,
            "grid_keys": list(batch.get("key", []))[:GRID_INPUTS]}
    if entry is not None and entry.select is not None:
        chosen = select_temperature(results, entry.select)
        info["selection"] = {"metric": entry.select, "temperature": chosen, "split": split,
                             "dataset": splits[split]["dataset"], "value": results[chosen].get(entry.select),
                             "rule": f"the temperature of {temps} with the best {entry.select} on {split} "
                                     "(ties: the lowest)"}
    if run_id:
        from pipelines import tracking

        run_id, stage_run = tracking.open_stage_run(tracking.experiment_name(exp.paper, params.mlflow.experiment_prefix),
                                                    exp.name, "sweep", run_id)
        info["mlflow_run_id"] = run_id
        with tracking.closing_run(stage_run):
            for t, s in results.items():
                tracking.log_metrics(stage_run, {f"sweep.{k}": v for k, v in finite_scalars(s).items()}
                                     | {"sweep.temperature": t}, step=int(round(100 * t)))
            for name in splits:
                if name == split:
                    continue
                for t, s in by_split[name].items():
                    tracking.log_metrics(stage_run, {f"sweep.{name}.{k}": v for k, v in finite_scalars(s).items()},
                                         step=int(round(100 * t)))
            if "selection" in info:
                tracking.log_metrics(stage_run, {"sweep.selected_temperature": info["selection"]["temperature"]})
            for p in paths:
                tracking.log_artifact(stage_run, p, "figures")
    else:
        print(f"warning: no mlflow_run_id for {exp.name}; sweep not tracked", file=sys.stderr)
    write_json(plots_path, records)
    write_json(info_path, {k: v for k, v in info.items() if v is not None})
    write_json(out_path, metrics)
    print(json.dumps({"experiment": exp.name, "temperatures": temps,
                      **{k: [results[t].get(k) for t in temps] for k in keys},
                      **({"selected_temperature": info["selection"]["temperature"]} if "selection" in info
                         else {})}))
    return 0
