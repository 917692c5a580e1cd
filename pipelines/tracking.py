"""MLflow helpers shared by the train, evaluate and sweep stages: one tracking URI, one experiment per paper.

The API is deliberately small and stateless (no ``mlflow.start_run`` global state), so a driver can create a run
and hand its id to a Ray worker, and a rerun after a crash can reopen the same run:

- ``tracking_uri()``: ``$MLFLOW_TRACKING_URI`` or ``sqlite:///<project root>/mlflow.db``
- ``experiment_name(paper, prefix="")``: ``"winkler2019" -> "winkler2019-cnf"``, ``"lu2020" -> "lu2020-cglow"``
- ``open_run(experiment_name, run_name, run_id=None) -> run_id``: get-or-create the experiment, then reopen
  ``run_id`` when it exists there, else create a new run
- ``log_params(run_id, dict)``: truncated to MLflow's limits; keys already logged with the same value are skipped
- ``log_metrics(run_id, dict, step)``, ``log_artifact(run_id, path, artifact_path)``, ``set_tags(run_id, dict)``
- ``finish_run(run_id, status="FINISHED")``
- ``git_commit()``: the project's HEAD (``-dirty`` when tracked files changed), logged with every training run

``mlflow`` is imported inside the functions: importing it costs 1.5-2 s and stages that never track should not pay.
"""
from __future__ import annotations

import math
import os
import subprocess
import time
import warnings
from pathlib import Path
from typing import Any, Mapping


def project_root(start: Path | None = None) -> Path:
    """The project a stage runs in: the nearest folder up from the working directory holding ``dvc.yaml`` or
    ``.git`` (DVC runs stages from there), else the working directory. Not the package's install location, so a
    clone of the project keeps its own MLflow store."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "dvc.yaml").is_file() or (folder / ".git").exists():
            return folder
    return here


def git_commit() -> str:
    """HEAD of the project repository, with ``-dirty`` when tracked files changed; ``unknown`` outside git."""
    try:
        root = project_root()
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except Exception:
        return "unknown"


# Experiment name per paper (the `paper:` key of an experiment in params.yaml).
PAPER_EXPERIMENTS = {"winkler2019": "winkler2019-cnf", "lu2020": "lu2020-cglow"}

# MLflow 3.x server-side limits (mlflow.utils.validation); values longer than this are rejected, not truncated.
MAX_PARAM_VALUE = 6000
MAX_KEY = 250
MAX_PARAMS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000


def tracking_uri() -> str:
    """The tracking URI every stage uses: ``$MLFLOW_TRACKING_URI`` if set, else the project's SQLite file."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_root() / 'mlflow.db'}"


def experiment_name(paper: str, prefix: str = "") -> str:
    """MLflow experiment for a paper key (``winkler2019`` / ``lu2020``), optionally prefixed (``mlflow.experiment_prefix``)."""
    try:
        name = PAPER_EXPERIMENTS[paper]
    except KeyError:
        raise ValueError(f"unknown paper {paper!r}: expected one of {sorted(PAPER_EXPERIMENTS)}") from None
    return f"{prefix}{name}"


def _client():
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri())


def _experiment_id(client, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    try:
        return client.create_experiment(name)
    except Exception:
        # Another process created it between our lookup and create (several stages may start at once).
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def open_run(experiment_name: str, run_name: str, run_id: str | None = None) -> str:
    """Reopen ``run_id`` if it exists in ``experiment_name`` (status back to RUNNING), else create a run; returns its id.

    A run id that is unknown to the tracking server, or belongs to another experiment, is not an error: the
    caller asked to resume something that is gone (e.g. a fresh ``mlflow.db``), so a new run is created.
    """
    client = _client()
    exp_id = _experiment_id(client, experiment_name)
    if run_id:
        try:
            run = client.get_run(run_id)
        except Exception:
            run = None
        if run is not None and run.info.experiment_id == exp_id and run.info.lifecycle_stage != "deleted":
            client.update_run(run_id, status="RUNNING")
            return run_id
        warnings.warn(f"MLflow run {run_id} not found in experiment {experiment_name!r} at {tracking_uri()}; "
                      "starting a new run", stacklevel=2)
    return client.create_run(exp_id, run_name=run_name).info.run_id


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def log_params(run_id: str, params: Mapping[str, Any]) -> None:
    """Log params (stringified, truncated to MLflow's limits); already-logged keys with the same value are skipped.

    MLflow params are immutable: a resumed run whose config changed keeps the first value, and the new value is
    recorded as tag ``param_changed.<key>`` with a warning instead of failing the stage.
    """
    from mlflow.entities import Param, RunTag

    client = _client()
    existing = client.get_run(run_id).data.params
    fresh, changed = [], []
    for key, value in params.items():
        key = _truncate(str(key), MAX_KEY)
        value = _truncate("None" if value is None else str(value), MAX_PARAM_VALUE)
        if key not in existing:
            fresh.append(Param(key, value))
        elif existing[key] != value:
            changed.append(RunTag(_truncate(f"param_changed.{key}", MAX_KEY), value))
    for i in range(0, len(fresh), MAX_PARAMS_PER_BATCH):
        client.log_batch(run_id, params=fresh[i: i + MAX_PARAMS_PER_BATCH])
    if changed:
        warnings.warn(f"run {run_id}: params changed since first logged (kept as tags): "
                      f"{[t.key for t in changed]}", stacklevel=2)
        for i in range(0, len(changed), MAX_PARAMS_PER_BATCH):
            client.log_batch(run_id, tags=changed[i: i + MAX_PARAMS_PER_BATCH])


def log_metrics(run_id: str, metrics: Mapping[str, float], step: int | None = None) -> None:
    """Log numeric metrics at ``step``; non-numeric values are dropped, NaN/inf are logged as MLflow allows."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = []
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            try:
                value = float(value)  # numpy / 0-d torch scalars
            except (TypeError, ValueError):
                continue
        value = float(value)
        if math.isnan(value):
            value = float("nan")
        batch.append(Metric(_truncate(str(key), MAX_KEY), value, now, int(step or 0)))
    client = _client()
    for i in range(0, len(batch), MAX_METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=batch[i: i + MAX_METRICS_PER_BATCH])


def set_tags(run_id: str, tags: Mapping[str, Any]) -> None:
    """Set run tags (stringified, truncated)."""
    client = _client()
    for key, value in tags.items():
        client.set_tag(run_id, _truncate(str(key), MAX_KEY), _truncate(str(value), 8000))


def log_artifact(run_id: str, path: str | os.PathLike, artifact_path: str | None = None) -> None:
    """Upload a file or a folder into the run's artifacts under ``artifact_path`` (a folder inside the run).

    ``log_artifact(run, "models/x.pt", "checkpoint")`` stores ``checkpoint/x.pt``; to choose the file name,
    copy it first (``train`` stores the final checkpoint as ``checkpoint/model.pt``).
    """
    client = _client()
    path = Path(path)
    if path.is_dir():
        client.log_artifacts(run_id, str(path), artifact_path)
    elif path.is_file():
        client.log_artifact(run_id, str(path), artifact_path)
    else:
        raise FileNotFoundError(f"artifact to log does not exist: {path}")


def finish_run(run_id: str, status: str = "FINISHED") -> None:
    """Mark the run FINISHED / FAILED / KILLED."""
    _client().set_terminated(run_id, status=status)
