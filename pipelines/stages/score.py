"""Stage `cnf score`: score predictions made elsewhere, or a built-in method, with the papers' protocols.

    cnf score TASK --data SHARDS --split SPLIT (--pred DIR | --method NAME) [--scale S] [--out FILE]
              [--track PAPER] [--name NAME] [--params params.yaml]

``TASK`` is ``sr`` (PSNR/SSIM on the Y channel, ``scale`` pixels shaved; Winkler et al. 2019, Table 2) or
``vessel`` (max F-score, DRIU protocol, inside the FOV; Winkler et al. 2019, Table 3): the scorer `cnf
evaluate` uses (``pipelines.evaluation.external.score_predictions``). Built-in methods need no training, so
their table rows are computed here rather than cited: ``bicubic`` (SR) and ``second_observer`` (vessel, the
"Human" row). ``--pred DIR`` scores image files named after the sample keys: ``01_manual2.gif`` or ``01.png``
-> key ``01`` (the longest key that leads the file name). The last line printed is one JSON object of the
scalar results (``sr``: psnr, ssim, n, scale; ``vessel``: f1, precision, recall, threshold, n). ``--out``
writes the task's summary metrics only (``{psnr, ssim}``, ``{f1, precision, recall}``: numbers, what ``dvc
metrics`` shows) and ``--info-out`` the rest (each only when asked for; dvc.yaml asks for both):
name, task, method, split, dataset, counts, keys, per-image values, the PR curve for vessels, the profile and
``mlflow_run_id``; both atomically. ``--track`` logs the result to an MLflow run of that paper's experiment so
that table rows built from it carry a run id.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from pipelines.evaluation.external import METHODS, file_tasks


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("task", choices=file_tasks(), help="sr (PSNR/SSIM, Y channel) or vessel (F-score, DRIU protocol)")
    parser.add_argument("--data", required=True, help="shard folder (or s3:// prefix) written by `cnf fetch`")
    parser.add_argument("--split", required=True, help="split to score, e.g. test")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--pred", help="folder of prediction images named after sample keys")
    group.add_argument("--method", choices=sorted(METHODS),
                       help="built-in method: bicubic (sr), second_observer (vessel)")
    parser.add_argument("--scale", type=int, default=None, help="SR scale (default: meta.json of each sample)")
    parser.add_argument("--out", default=None, help="also write the metrics (numbers only) to this JSON file")
    parser.add_argument("--info-out", default=None,
                        help="also write the rest of the result (labels, run id, per-image values, curves) to "
                             "this JSON file (dvc.yaml: info/score/<name>.json)")
    parser.add_argument("--track", default=None, metavar="PAPER",
                        help="log the result to an MLflow run in this paper's experiment (winkler2019 | lu2020)")
    parser.add_argument("--name", default=None, help="run name / label for --track and --out (default: derived)")
    parser.add_argument("--params", default=None, help="params.yaml, for mlflow.experiment_prefix with --track")


def run(args: argparse.Namespace) -> int:
    from pipelines.evaluation.outputs import relative_path, summary_info, summary_metrics, without_none
    from pipelines.evaluation.split import finite_scalars
    from pipelines.evaluation.external import score_predictions
    from pipelines.io import write_json
    from pipelines.tasks import get_task

    result = score_predictions(args.task, args.data, args.split, pred=args.pred, method=args.method,
                               scale=args.scale)
    name = args.name or f"score-{args.task}-{Path(str(args.data).rstrip('/')).name}-{args.split}-" \
                        f"{args.method or Path(args.pred).name}"
    result["name"] = name
    params = None
    if args.params:
        from pipelines.params import load_params

        params = load_params(args.params)
    if args.track:
        from pipelines import tracking

        prefix = params.mlflow.experiment_prefix if params else ""
        run_id = tracking.open_run(tracking.experiment_name(args.track, prefix), name)
        with tracking.closing_run(run_id):
            tracking.set_tags(run_id, {"stage": "score", "cnf.stage": "score", "task": args.task,
                                       "method": result["method"], "split": args.split, "data": str(args.data),
                                       **tracking.source_tags("pipelines/stages/score.py")})
            tracking.log_metrics(run_id, finite_scalars(result))
        result["mlflow_run_id"] = run_id
    if args.out:
        write_json(args.out, summary_metrics(get_task(args.task), result))
    if args.info_out:
        task = get_task(args.task)
        info = summary_info(task, result)
        # No path of this machine in the outputs: the shards and a --pred folder relative to the project.
        info.update(data=relative_path(args.data), profile=params.profile if params else None)
        if args.pred:
            info.update(method="pred", pred=relative_path(args.pred))
        write_json(args.info_out, without_none(info))
    summary = finite_scalars(result)
    summary.update({"method": result["method"], "split": args.split})
    if "mlflow_run_id" in result:
        summary["mlflow_run_id"] = result["mlflow_run_id"]
    print(json.dumps(summary, sort_keys=True))
    return 0
