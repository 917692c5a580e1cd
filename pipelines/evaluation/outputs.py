"""What the evaluation stages write, apart from how it is computed: numbers, bookkeeping, plot records.

A result is three files (docs/architecture.md, "Evaluation outputs"): the metrics file holds the task's
``summary_metrics`` only, as numbers (``summary_metrics``: what ``dvc metrics show/diff`` compares); the info
file everything else (``summary_info``: counts, protocol labels, keys, per-image values, curves, with the
labels, config and run id the stage adds; unknown values left out, ``without_none``); a plots file the curves
DVC draws, as records (``pr_records``). No absolute path of the writing machine goes into any of them
(``relative_path``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from pipelines.evaluation.split import finite_scalars


def summary_metrics(task, summary: Mapping[str, Any]) -> dict[str, float]:
    """The task's ``summary_metrics`` that ``summary`` has as finite numbers: what a metrics file holds and
    ``dvc metrics diff`` compares (a missing or non-finite one is left out, never written as null). Counts,
    thresholds and NLL in nats say how a number was obtained: they go to the info file."""
    names = set(task.summary_metrics) | {m + "_std" for m in task.summary_metrics}  # spread over train.seeds runs
    return {k: v for k, v in finite_scalars(summary).items() if k in names}


def summary_info(task, summary: Mapping[str, Any]) -> dict[str, Any]:
    """Everything of ``summary`` that is not a metric: counts, protocol labels, keys, per-image values, curves."""
    metrics = summary_metrics(task, summary)
    return {k: v for k, v in summary.items() if k not in metrics}


def relative_path(path: str | Path | None) -> str | None:
    """``path`` relative to the project root (``tracking.project_root``), a URI unchanged, or None (to be left
    out) when it lies outside the project: no absolute path of the writing machine goes into an output file."""
    if path is None:
        return None
    text = str(path)
    if "://" in text or text.startswith(("runs:/", "models:/")):
        return text
    from pipelines.tracking import project_root

    root = project_root().resolve()
    try:
        return Path(text).resolve().relative_to(root).as_posix()
    except ValueError:
        return None


def without_none(mapping: Mapping[str, Any]) -> dict[str, Any]:
    """``mapping`` without its None values (info files leave out what is unknown)."""
    return {k: v for k, v in mapping.items() if v is not None}


def pr_records(results: Mapping[str, Mapping[str, Any]]) -> list[dict]:
    """The PR curves of the splits that have one, as records ``{split, threshold, precision, recall, f1}`` for
    ``dvc plots`` (Winkler et al. 2019, Figure 5 left); an empty list when no split has one."""
    rows = []
    for name, s in results.items():
        curve = s.get("curve") or {}
        for i, threshold in enumerate(curve.get("thresholds") or []):
            rows.append({"split": name, "threshold": threshold, "precision": curve["precision"][i],
                         "recall": curve["recall"][i], "f1": curve["f1"][i]})
    return rows
