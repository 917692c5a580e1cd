"""Stage `cnf evaluate`: a trained experiment on its test split (and extra splits) -> metrics JSON + MLflow.

    cnf evaluate EXPERIMENT [--params params.yaml] [--model models/<exp>.pt] [--data-root data/shards]
                 [--out metrics/eval/<exp>.json] [--train-info runs/<exp>/train_info.json] [--figures DIR]
                 [--sweeps metrics/sweep] [--set k=v ...]

Scores with ``pipelines.evaluation.evaluate_experiment``: bits/dim and the task's paper protocol
(``pipelines/tasks/<task>.py``), sampling at ``eval.temperature``, or at the temperature `cnf sweep` chose on a
validation split when ``sweeps.<exp>.select`` is set (recorded as ``temperature_selection``). The experiment's
``table`` names must be tables of ``pipelines.reporting.reported``; an unknown one is refused before any work.
Writes ``--out`` atomically with the ``mlflow_run_id`` of the experiment's training run (read from
``runs/<exp>/train_info.json``) and logs ``eval.<split>.<metric>`` metrics and plots to a run nested under it.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipelines.stages._args import add_trained_model_arguments


def configure(parser: argparse.ArgumentParser) -> None:
    add_trained_model_arguments(parser)
    parser.add_argument("--out", default=None, help="metrics JSON (default metrics/eval/<exp>.json)")
    parser.add_argument("--figures", default=None, help="also write the PR figures here (default: MLflow only)")
    parser.add_argument("--sweeps", default="metrics/sweep",
                        help="folder of `cnf sweep` outputs: an experiment with sweeps.<exp>.select in params.yaml "
                             "is evaluated at the temperature its sweep chose (<folder>/<exp>.json)")


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
    return float(selection["temperature"]), {**selection, "source": str(path)}


def run(args: argparse.Namespace) -> int:
    import tempfile

    import torch

    from flowlib.checkpoint import load_model
    from pipelines.evaluation.experiment import (eval_dataset, eval_figures, evaluate_experiment, scalar_metrics,
                                                 train_run_id)
    from pipelines.io import write_json
    from pipelines.params import load_params
    from pipelines.reporting.reported import table_names
    from pipelines.tasks import get_task

    params = load_params(args.params, args.overrides, experiment=args.experiment)
    exp = params.experiment(args.experiment)
    tables = table_names(exp.table, f"experiments.{exp.name}.table")
    temperature, selection = sampling_temperature(exp, params.sections, args.sweeps)
    model_path = args.model or f"models/{exp.name}.pt"
    out_path = Path(args.out or f"metrics/eval/{exp.name}.json")
    run_id = train_run_id(args.train_metrics or f"runs/{exp.name}/train_info.json")

    torch.manual_seed(args.seed)
    model = load_model(model_path)
    results = evaluate_experiment(exp, model, args.data, seed=args.seed, temperature=temperature)
    payload = {
        "experiment": exp.name, "paper": exp.paper, "tables": list(tables), "task": exp.task,
        "profile": params.profile, "mlflow_run_id": run_id, "checkpoint": str(model_path),
        "model": exp.model.build_options() | {"family": exp.model.family},
        "data": {"dataset": exp.data.dataset, "size": exp.data.size, "eval_split": exp.data.eval_split,
                 "eval_dataset": eval_dataset(exp)},
        "n_samples": exp.eval.n_samples, "temperature": temperature, "temperature_selection": selection,
        "seed": args.seed,
        "primary": exp.data.eval_split, "splits": results,
    }
    if run_id:
        from pipelines import tracking

        # A run nested under the training run; the training run itself when the recorded one is gone.
        run_id, stage_run = tracking.open_stage_run(tracking.experiment_name(exp.paper, params.mlflow.experiment_prefix),
                                                    exp.name, "evaluate", run_id)
        payload["mlflow_run_id"] = run_id
        with tracking.closing_run(stage_run):
            tracking.log_metrics(stage_run, scalar_metrics(results))
            with tempfile.TemporaryDirectory() as tmp:
                for path in eval_figures(exp.name, results, args.figures or tmp):
                    tracking.log_artifact(stage_run, path, "figures")
                summary_file = write_json(Path(tmp) / "eval.json", payload)
                tracking.log_artifact(stage_run, summary_file, "eval")
    else:
        print(f"warning: no mlflow_run_id in {args.train_metrics or f'runs/{exp.name}/train_info.json'}; "
              "metrics are not tracked", file=sys.stderr)
        if args.figures:
            eval_figures(exp.name, results, args.figures)
    write_json(out_path, payload)
    primary = results[exp.data.eval_split]
    print(json.dumps({"experiment": exp.name, "mlflow_run_id": run_id,
                      **{k: primary[k] for k in ("n", *get_task(exp.task).summary_metrics) if k in primary}}))
    return 0
