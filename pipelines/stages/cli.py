"""`cnf <stage> ...`: the project's console command. Argument parsing only; each stage lives in its module.

Every stage module exposes ``configure(parser)`` (adds its arguments) and ``run(args) -> int``. Modules are
imported only for the stage that runs, so `cnf fetch` never pays for importing Ray or MLflow.
"""
from __future__ import annotations

import argparse
import importlib
import sys

STAGES = {
    "fetch": ("pipelines.stages.fetch", "fetch a dataset release into sharded WebDataset tars"),
    "train": ("pipelines.stages.train", "train one experiment of params.yaml with Ray Train, tracked in MLflow"),
    "evaluate": ("pipelines.stages.evaluate", "evaluate a trained experiment on its test split"),
    "score": ("pipelines.stages.score", "score predictions made elsewhere, or a built-in method"),
    "sweep": ("pipelines.stages.sweep", "sweep sampling temperatures for a trained experiment"),
    "tables": ("pipelines.stages.tables", "build every table and figure of both papers"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="cnf", description="Conditional normalizing flows: pipeline stages")
    sub = parser.add_subparsers(dest="stage", metavar="STAGE", required=True)
    chosen = argv[0] if argv and argv[0] in STAGES else None
    for name, (module, help_text) in STAGES.items():
        stage_parser = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            importlib.import_module(module).configure(stage_parser)
    args = parser.parse_args(argv)
    from pipelines.tracking import TrackingError

    try:
        return int(importlib.import_module(STAGES[args.stage][0]).run(args) or 0)
    except TrackingError as exc:  # an unusable MLflow store: one line naming it, not a driver traceback
        print(f"cnf {args.stage}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
