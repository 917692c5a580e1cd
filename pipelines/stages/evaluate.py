"""Stage `cnf evaluate`: a trained experiment on its test split (and extra splits) -> metrics, info, plot data.

    cnf evaluate EXPERIMENT [--params params.yaml] [--model models/<exp>.pt] [--data-root data/shards]
                 [--out metrics/eval/<exp>.json] [--info-out info/eval/<exp>.json]
                 [--plots-out plots/eval/<exp>.json] [--train-info runs/<exp>/train_info.json] [--figures DIR]
                 [--sweeps info/sweep] [--any-checkpoint] [--set k=v ...]

Scores with ``pipelines.evaluation.evaluate_experiment``: bits/dim and the task's paper protocol
(``pipelines/tasks/<task>.py``), sampling at ``eval.temperature``, or at the temperature `cnf sweep` chose on a
validation split when ``sweeps.<exp>.select`` is set (read from ``<sweeps>/<exp>.json``, the sweep's info
file). The experiment's ``table`` names must be tables of ``pipelines.reporting.reported``, and the checkpoint
must be one of this experiment (the experiment name `cnf train` stored in it, and its model config; an
override: ``--any-checkpoint``); either is refused before any work. Writes atomically:

- ``--out``: ``{split: {metric: number}}``, the task's summary metrics only (what ``dvc metrics`` shows); of
  the split a sweep chose the temperature on, only bits/dim (its PSNR/SSIM there, biased by the choice, go to
  the info file: ``selection_free``);
- ``--info-out``: labels, model config, temperature (and how it was chosen), the ``mlflow_run_id`` of the
  training run (read from ``--train-info``) and per split everything else (counts, keys, per-image values,
  the PR curve and samples for vessels);
- ``--plots-out``: the PR curves as records ``{split, threshold, precision, recall, f1}`` for ``dvc plots``
  (an empty list for tasks without one).

Logs ``eval.<split>.<metric>`` metrics, figures and both files to a run nested under the training run.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipelines.stages._args import add_trained_model_arguments


def configure(parser: argparse.ArgumentParser) -> None:
    add_trained_model_arguments(parser)
    parser.add_argument("--out", default=None, help="metrics JSON, numbers only (default metrics/eval/<exp>.json)")
    parser.add_argument("--info-out", default=None,
                        help="bookkeeping JSON: labels, config, temperature, run id, per-image values, curves "
                             "(default info/eval/<exp>.json)")
    parser.add_argument("--plots-out", default=None,
                        help="PR curve records for `dvc plots` (default plots/eval/<exp>.json)")
    parser.add_argument("--seeds-dir", default=None,
                        help="the other runs of an experiment with train.seeds > 1 (`cnf train --seeds-out`; "
                             "default models/<exp>.seeds): metrics are the mean over runs, with <metric>_std")
    parser.add_argument("--any-checkpoint", action="store_true",
                        help="evaluate --model even if it is a checkpoint of another experiment or config")
    parser.add_argument("--figures", default=None, help="also write the PR figures here (default: MLflow only)")
    parser.add_argument("--sweeps", default="info/sweep",
                        help="folder of `cnf sweep` info files: an experiment with sweeps.<exp>.select in "
                             "params.yaml is evaluated at the temperature its sweep chose (<folder>/<exp>.json)")


def sampling_temperature(exp, sections, sweeps_dir) -> tuple[float, dict | None]:
    """``(temperature, selection)``: the one ``cnf sweep`` chose on a validation split when params.yaml's
    ``sweeps.<exp>.select`` asks for it (Winkler et al. 2019, Table 2), else ``eval.temperature`` and None."""
    from pipelines.evaluation.sweep import sweep_entry

    entry = sweep_entry(sections, exp.name)
    if entry is None or entry.select is None:
        return exp.eval.temperature, None
    path = Path(sweeps_dir) / f"{exp.name}.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; sweeps.{exp.name}.select asks for the temperature `cnf sweep "
                                f"{exp.name}` chooses (run it first)")
    try:
        selection = json.loads(path.read_text()).get("selection")
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if not selection or selection.get("metric") != entry.select:
        raise ValueError(f"{path}: no temperature chosen by {entry.select!r} (found {selection!r}); rerun "
                         f"`cnf sweep {exp.name}` with the current params.yaml")
    from pipelines.evaluation.outputs import relative_path

    return float(selection["temperature"]), {**selection, "source": relative_path(path) or path.name}


def selection_free(outputs: tuple[dict, dict], selection: dict | None) -> tuple[dict, dict]:
    """``(metrics, info)`` with the temperature-dependent metrics of the split the sweep chose the temperature
    on moved to the info file: chosen there, they are biased upwards and are no result to compare (the sweep's
    metrics file holds them); that split keeps its bits/dim, which no temperature changes."""
    from pipelines.evaluation.sweep import TEMPERATURE_FREE

    metrics, info = outputs
    split = (selection or {}).get("split")
    if split not in metrics:
        return metrics, info
    moved = {k: v for k, v in metrics[split].items() if k not in TEMPERATURE_FREE}
    kept = {k: v for k, v in metrics[split].items() if k in TEMPERATURE_FREE}
    metrics = {**metrics, split: kept} if kept else {k: v for k, v in metrics.items() if k != split}
    splits = dict(info.get("splits") or {})
    splits[split] = {**splits.get(split, {}), **moved, "selection_biased": sorted(moved)}
    return metrics, {**info, "splits": splits}


def run(args: argparse.Namespace) -> int:
    import tempfile
    import time

    import torch

    from pipelines.evaluation.experiment import (eval_dataset, eval_figures, eval_outputs, evaluate_experiment,
                                                 load_experiment_model, scalar_metrics, train_run_id,
                                                 training_cost)
    from pipelines.evaluation.outputs import pr_records, relative_path
    from pipelines import tracking
    from pipelines.evaluation.seeds import aggregate_seed_results, seed_model_paths
    from pipelines.io import write_json
    from pipelines.params import load_params
    from pipelines.reporting.reported import table_names
    from pipelines.tasks import get_task

    t_start = time.time()
    params = load_params(args.params, args.overrides, experiment=args.experiment)
    exp = params.experiment(args.experiment)
    tables = table_names(exp.table, f"experiments.{exp.name}.table")
    model_path = args.model or f"models/{exp.name}.pt"
    try:
        runs = seed_model_paths(exp, model_path, args.seeds_dir)
        models = [load_experiment_model(run_exp, path, any_checkpoint=args.any_checkpoint) for run_exp, path in runs]
    except (ValueError, FileNotFoundError) as exc:
        print(f"cnf evaluate {exp.name}: error: {exc}", file=sys.stderr)
        return 2
    temperature, selection = sampling_temperature(exp, params.sections, args.sweeps)
    out_path = Path(args.out or f"metrics/eval/{exp.name}.json")
    info_path = Path(args.info_out or f"info/eval/{exp.name}.json")
    plots_path = Path(args.plots_out or f"plots/eval/{exp.name}.json")
    train_info = args.train_metrics or f"runs/{exp.name}/train_info.json"
    run_id = train_run_id(train_info)

    per_run = []
    for (run_exp, path), model in zip(runs, models):
        if len(runs) > 1:
            print(f"[{exp.name}] evaluating run {len(per_run) + 1}/{len(runs)}: {path}", file=sys.stderr, flush=True)
        torch.manual_seed(args.seed)
        try:
            per_run.append(evaluate_experiment(exp, model, args.data, seed=args.seed, temperature=temperature))
        except FloatingPointError as exc:  # every draw of an image overflowed: no prediction, nothing written
            print(f"cnf evaluate {exp.name}: error: {path}: {exc}", file=sys.stderr)
            return 1
    task = get_task(exp.task)
    results = aggregate_seed_results(per_run, task.summary_metrics, [run_exp.train.seed for run_exp, _ in runs])
    info = {
        "experiment": exp.name, "paper": exp.paper, "tables": list(tables), "task": exp.task,
        "profile": params.profile, "mlflow_run_id": run_id, "checkpoint": relative_path(model_path),
        "model": exp.model.build_options() | {"family": exp.model.family},
        "data": {k: v for k, v in {"dataset": exp.data.dataset, "size": exp.data.size,
                                   "eval_split": exp.data.eval_split, "eval_dataset": eval_dataset(exp)}.items()
                 if v is not None},
        "n_samples": exp.eval.n_samples, "temperature": temperature, "temperature_selection": selection,
        "seed": args.seed, "primary": exp.data.eval_split, "plots": relative_path(plots_path),
        "seed_checkpoints": [relative_path(path) for _, path in runs] if len(runs) > 1 else None,
        "training": training_cost(train_info),  # steps, wall_s, samples_per_s, machine (the table notes)
    }
    records = pr_records(results)
    info["evaluation"] = {"wall_s": round(time.time() - t_start, 1), "machine": tracking.machine()}
    if run_id:
        # A run nested under the training run; the training run itself when the recorded one is gone.
        run_id, stage_run = tracking.open_stage_run(tracking.experiment_name(exp.paper, params.mlflow.experiment_prefix),
                                                    exp.name, "evaluate", run_id)
        info["mlflow_run_id"] = run_id
        metrics, info = selection_free(eval_outputs(exp, results, **info), selection)
        with tracking.closing_run(stage_run):
            tracking.log_metrics(stage_run, scalar_metrics(results))
            with tempfile.TemporaryDirectory() as tmp:
                for path in eval_figures(exp.name, results, args.figures or tmp):
                    tracking.log_artifact(stage_run, path, "figures")
                for name, payload in (("metrics", metrics), ("info", info), ("pr", records)):
                    tracking.log_artifact(stage_run, write_json(Path(tmp) / f"{name}.json", payload), "eval")
    else:
        print(f"warning: no mlflow_run_id in {train_info}; metrics are not tracked", file=sys.stderr)
        metrics, info = selection_free(eval_outputs(exp, results, **info), selection)
        if args.figures:
            eval_figures(exp.name, results, args.figures)
    write_json(plots_path, records)
    write_json(info_path, info)
    write_json(out_path, metrics)
    primary = results[exp.data.eval_split]
    print(json.dumps({"experiment": exp.name, "mlflow_run_id": run_id,
                      **{k: primary[k] for k in ("n", *get_task(exp.task).summary_metrics) if k in primary}}))
    return 0
