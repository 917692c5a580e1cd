"""Stage `cnf evaluate`: a trained experiment on its test split (and extra splits) -> metrics JSON + MLflow.

    cnf evaluate EXPERIMENT [--params params.yaml] [--model models/<exp>.pt] [--data DIR]
                 [--out metrics/eval/<exp>.json] [--train-metrics metrics/train/<exp>.json] [--figures DIR]
                 [--set k=v ...]

Scores with ``pipelines.evaluation.evaluate_experiment``: bits/dim and the task's paper protocol
(``pipelines/tasks/<task>.py``). Writes ``--out`` atomically with the ``mlflow_run_id`` of the experiment's
training run (read from ``metrics/train/<exp>.json``) and logs ``eval.<split>.<metric>`` metrics and plots to
that run.
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


def run(args: argparse.Namespace) -> int:
    import tempfile

    import torch

    from flowlib.checkpoint import load_model
    from pipelines.evaluation.experiment import (eval_dataset, eval_figures, evaluate_experiment, scalar_metrics,
                                                 train_run_id)
    from pipelines.io import write_json
    from pipelines.params import load_params
    from pipelines.tasks import get_task

    params = load_params(args.params, args.overrides, experiment=args.experiment)
    exp = params.experiment(args.experiment)
    model_path = args.model or f"models/{exp.name}.pt"
    out_path = Path(args.out or f"metrics/eval/{exp.name}.json")
    run_id = train_run_id(args.train_metrics or f"metrics/train/{exp.name}.json")

    torch.manual_seed(args.seed)
    model = load_model(model_path)
    results = evaluate_experiment(exp, model, args.data, seed=args.seed)
    tables = [exp.table] if isinstance(exp.table, str) else list(exp.table or [])
    payload = {
        "experiment": exp.name, "paper": exp.paper, "tables": [t for t in tables if t], "task": exp.task,
        "profile": params.profile, "mlflow_run_id": run_id, "checkpoint": str(model_path),
        "model": exp.model.build_options() | {"family": exp.model.family},
        "data": {"dataset": exp.data.dataset, "size": exp.data.size, "eval_split": exp.data.eval_split,
                 "eval_dataset": eval_dataset(exp)},
        "n_samples": exp.eval.n_samples, "temperature": exp.eval.temperature, "seed": args.seed,
        "primary": exp.data.eval_split, "splits": results,
    }
    if run_id:
        from pipelines import tracking

        # open_run returns a new run when the recorded one is gone (e.g. a fresh mlflow.db): log there.
        run_id = tracking.open_run(tracking.experiment_name(exp.paper, params.mlflow.experiment_prefix), exp.name,
                                   run_id)
        payload["mlflow_run_id"] = run_id
        tracking.log_metrics(run_id, scalar_metrics(results))
        with tempfile.TemporaryDirectory() as tmp:
            for path in eval_figures(exp.name, results, args.figures or tmp):
                tracking.log_artifact(run_id, path, "figures")
            summary_file = write_json(Path(tmp) / "eval.json", payload)
            tracking.log_artifact(run_id, summary_file, "eval")
        tracking.finish_run(run_id)
    else:
        print(f"warning: no mlflow_run_id in {args.train_metrics or f'metrics/train/{exp.name}.json'}; "
              "metrics are not tracked", file=sys.stderr)
        if args.figures:
            eval_figures(exp.name, results, args.figures)
    write_json(out_path, payload)
    primary = results[exp.data.eval_split]
    print(json.dumps({"experiment": exp.name, "mlflow_run_id": run_id,
                      **{k: primary[k] for k in ("n", *get_task(exp.task).summary_metrics) if k in primary}}))
    return 0
