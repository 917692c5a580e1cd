"""Stage `cnf tables`: every table and figure of both papers (:mod:`pipelines.reporting.tables`).

    cnf tables [--params params.yaml] [--metrics metrics] [--out tables] [--figures figures]
"""
from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", default=None, help="params.yaml (for the profile label)")
    parser.add_argument("--metrics", default="metrics", help="folder with eval/ and score/ JSON results")
    parser.add_argument("--out", default="tables")
    parser.add_argument("--figures", default="figures")
    parser.add_argument("--no-check-runs", action="store_true", help="skip checking run ids in the MLflow store")


def run(args: argparse.Namespace) -> int:
    profile = None
    if args.params:
        from pipelines.params import load_params

        profile = load_params(args.params).profile
    from pipelines.reporting.tables import build_all

    build_all(args.metrics, args.out, args.figures, profile=profile, check_runs=not args.no_check_runs)
    return 0
