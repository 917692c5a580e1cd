"""Several runs of one experiment (``train.seeds``): their models, and their results as mean and standard deviation.

Winkler et al. 2019 report DRIVE (Table 3) as "mean +/- std over 5 runs". `cnf train` trains run k of N with seed
``train.seed + k`` (``ExperimentParams.seed_run``): run 0 is the experiment's model (``models/<exp>.pt``), runs
1..N-1 are ``<seeds_dir>/seed<k>.pt``. `cnf evaluate` scores each run the same way and reports, per split and
per summary metric m, the mean over runs as ``m`` and the sample standard deviation (ddof = 1, the spread of
independent runs) as ``m_std``; with one run, no ``m_std`` is written. Everything that is not a summary metric
(curves, per-image values, counts) is run 0's, and each run's own numbers are kept under ``seed_runs``.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

STD_SUFFIX = "_std"


def seed_model_paths(exp, model_path: str | Path, seeds_dir: str | Path | None = None) -> list[tuple[Any, str]]:
    """``[(seed-run experiment, checkpoint path)]`` for runs 0..N-1 of ``exp`` (N = ``train.seeds``); a missing
    checkpoint is a ``FileNotFoundError`` naming it and the command that writes it."""
    seeds_dir = Path(seeds_dir or Path("models") / f"{exp.name}.seeds")
    runs = [(exp, str(model_path))]
    for k in range(1, exp.train.seeds):
        path = seeds_dir / f"seed{k}.pt"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; experiments.{exp.name}.train.seeds is {exp.train.seeds}, "
                                    f"and `cnf train {exp.name}` writes run {k} there")
        runs.append((exp.seed_run(k), str(path)))
    return runs


def _mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    mean = math.fsum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1))


def aggregate_seed_results(runs: Sequence[Mapping[str, Mapping[str, Any]]], metrics: Sequence[str],
                           seeds: Sequence[int]) -> dict[str, dict[str, Any]]:
    """One ``{split: summary}`` from the summaries of several runs (``runs[0]`` first): each metric in
    ``metrics`` that every run has as a finite number becomes the mean over runs, with ``<metric>_std``;
    the rest is ``runs[0]``'s; ``seed_runs`` lists each run's seed and metric values. One run is returned as is."""
    if len(runs) == 1:
        return {split: dict(summary) for split, summary in runs[0].items()}
    out: dict[str, dict[str, Any]] = {}
    for split, first in runs[0].items():
        summary = dict(first)
        per_run = [{"seed": seed} for seed in seeds]
        for metric in metrics:
            values = [r.get(split, {}).get(metric) for r in runs]
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                       for v in values):
                continue
            mean, std = _mean_std([float(v) for v in values])
            summary[metric], summary[metric + STD_SUFFIX] = mean, std
            for row, v in zip(per_run, values):
                row[metric] = float(v)
        summary["n_runs"] = len(runs)
        summary["seed_runs"] = per_run
        out[split] = summary
    return out
