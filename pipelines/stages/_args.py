"""Command-line arguments shared by the stages that run a trained experiment (not a stage itself)."""
from __future__ import annotations

import argparse


def add_trained_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `cnf evaluate` and `cnf sweep`: the experiment, its params, checkpoint, data and run."""
    parser.add_argument("experiment", help="experiment name in params.yaml")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--model", default=None, help="checkpoint (default models/<exp>.pt) or runs:/<run_id>")
    parser.add_argument("--data-root", dest="data", default="data/shards",
                        help="folder (or s3:// prefix) holding one shard folder per dataset, as in `cnf train` "
                             "(default: %(default)s)")
    parser.add_argument("--train-info", dest="train_metrics", default=None,
                        help="`cnf train`'s run bookkeeping, for the training run id the results are nested under "
                             "in MLflow (default: runs/<exp>/train_info.json)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
