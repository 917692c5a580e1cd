"""Stage `cnf tables`: every table and figure of both papers (:mod:`pipelines.reporting.tables`).

    cnf tables [--params params.yaml] [--metrics metrics] [--info info] [--out tables] [--figures figures]
               [--no-check-runs]

Reads each result's metrics and info file. The params say which rows must be computed (experiments whose
``table`` names a table, and the ``scores`` entries): a missing result is an error naming its file.
``--params none`` uses whatever results there are.
"""
from __future__ import annotations

import argparse
import sys


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", default="params.yaml",
                        help="params.yaml: the profile label and the rows that must be computed (default "
                             "%(default)s; 'none': use the results there are)")
    parser.add_argument("--metrics", default="metrics", help="folder with eval/ and score/ metrics JSON")
    parser.add_argument("--info", default="info", help="folder with eval/ and score/ info JSON (default %(default)s)")
    parser.add_argument("--out", default="tables")
    parser.add_argument("--figures", default="figures")
    parser.add_argument("--no-check-runs", action="store_true",
                        help="do not require every computed row's MLflow run id to be in the tracking store")


def run(args: argparse.Namespace) -> int:
    from pipelines.reporting.tables import build_all, expected_results

    profile, expected = None, None
    if args.params and args.params.lower() != "none":
        from pipelines.params import load_params

        params = load_params(args.params)
        profile, expected = params.profile, expected_results(params)
    try:
        build_all(args.metrics, args.out, args.figures, profile=profile, check_runs=not args.no_check_runs,
                  info_dir=args.info, expected=expected)
    except (FileNotFoundError, ValueError) as exc:  # a missing result or an untraceable row: one line naming it
        print(f"cnf tables: error: {exc}", file=sys.stderr)
        return 2
    return 0
