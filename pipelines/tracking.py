"""MLflow helpers shared by the train, evaluate and sweep stages: one tracking URI, one experiment per paper.

The API is deliberately small and stateless (no ``mlflow.start_run`` global state), so a driver can create a run
and hand its id to a Ray worker, and a rerun after a crash can reopen the same run:

- ``tracking_uri()``: ``$MLFLOW_TRACKING_URI`` or ``sqlite:///<project root>/mlflow.db``
- ``experiment_name(paper, prefix="")``: ``"winkler2019" -> "winkler2019-cnf"``, ``"lu2020" -> "lu2020-cglow"``
- ``open_run(experiment_name, run_name, run_id=None) -> run_id``: get-or-create the experiment, then reopen
  ``run_id`` when it exists there, else create a new run
- ``log_params(run_id, dict)``: truncated to MLflow's limits; keys already logged with the same value are skipped
- ``log_metrics(run_id, dict, step)``, ``log_artifact(run_id, path, artifact_path)``, ``set_tags(run_id, dict)``
- ``finish_run(run_id, status="FINISHED")``; ``closing_run(run_id)``: a context that closes the run on every exit
  path (FINISHED, FAILED on an error, KILLED on Ctrl-C / SIGTERM, see ``terminate_as_interrupt``)
- ``git_commit()``: the project's HEAD (``-dirty`` when tracked files changed), logged with every training run
- ``source_tags(entry_point)``: MLflow's standard source tags (``mlflow.source.git.commit``, ``.name``, ``.type``)
- ``log_dataset(run_id, name, uri, digest)``: the training shards as an MLflow dataset input (Dataset column)
- ``open_stage_run(experiment, run_name, stage, parent_run_id)``: a run of evaluate/sweep nested under the
  training run it measures (``mlflow.parentRunId``; the parent tagged ``cnf.<stage>_run_id``)
- ``log_flowlib_model(run_id, checkpoint, registered_name)``: the checkpoint in MLflow's model format (pyfunc),
  registered as a version of ``registered_name``; ``flowlib.load_model("models:/<name>/<version>")`` loads it
- ``system_metrics(run_id)``: MLflow's system metrics monitor (CPU, memory, disk, network, GPU) around a block
- ``check_store()``: fail in seconds, in one line naming the URI or file, when the store cannot be used

Every experiment is tagged ``mlflow.experimentKind = custom_model_development`` so that MLflow 3's UI opens it in
the model-training view (runs, metrics, models), not the GenAI view (traces).

``mlflow`` is imported inside the functions: importing it costs 1.5-2 s and stages that never track should not pay.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sqlite3
import subprocess
import time
import warnings
from pathlib import Path
from typing import Any, Iterator, Mapping


class TrackingError(RuntimeError):
    """The tracking store cannot be used; the message is one line naming the URI or file and what to do."""


def project_root(start: Path | None = None) -> Path:
    """The project a stage runs in: the nearest folder up from the working directory holding ``dvc.yaml`` or
    ``.git`` (DVC runs stages from there), else the working directory. Not the package's install location, so a
    clone of the project keeps its own MLflow store."""
    here = (start or Path.cwd()).resolve()
    parts = here.parts
    # `dvc exp run --queue` / `--temp` runs each experiment in a copy of the repository under
    # <repo>/.dvc/tmp/exps/<tmp>/; the store belongs to the repository itself, or the runs would be lost with
    # the copy (Ray's storage, `runs/`, stays per copy so that queued experiments cannot resume each other's).
    for i in range(len(parts) - 2):
        if parts[i: i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    for folder in (here, *here.parents):
        if (folder / "dvc.yaml").is_file() or (folder / ".git").exists():
            return folder
    return here


def _git_root() -> Path | None:
    """The checkout a stage runs in (the working directory's; under `dvc exp run --queue` the experiment's own
    copy), else the one this code was imported from (a `cnf` started outside any checkout)."""
    for where in (Path.cwd(), Path(__file__).resolve().parent):
        try:
            out = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=where, capture_output=True, text=True,
                                 timeout=10)
        except Exception:
            continue
        if out.returncode == 0 and out.stdout.strip():
            return Path(out.stdout.strip())
    return None


def git_commit() -> str:
    """HEAD of the project repository (``_git_root``), with ``-dirty`` when tracked files changed; ``unknown``
    outside git."""
    try:
        root = _git_root()
        if root is None:
            return "unknown"
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except Exception:
        return "unknown"


def source_tags(entry_point: str) -> dict[str, str]:
    """MLflow's standard source tags (the UI's Source column): the git commit (without ``-dirty``; that state is
    the ``git_commit`` tag and param), the entry point (e.g. ``pipelines/stages/train.py``), the branch and the
    remote when there is one, and, under `dvc exp run`, the DVC experiment's name (``dvc.exp_name``)."""
    commit = git_commit()
    tags = {"mlflow.source.name": entry_point, "mlflow.source.type": "LOCAL"}
    if commit != "unknown":
        tags["mlflow.source.git.commit"] = commit.removesuffix("-dirty")
    for tag, cmd in (("mlflow.source.git.branch", ["git", "rev-parse", "--abbrev-ref", "HEAD"]),
                     ("mlflow.source.git.repoURL", ["git", "remote", "get-url", "origin"])):
        try:
            out = subprocess.run(cmd, cwd=_git_root() or Path.cwd(), capture_output=True, text=True, timeout=10)
        except Exception:
            continue
        if out.returncode == 0 and out.stdout.strip() and out.stdout.strip() != "HEAD":
            tags[tag] = out.stdout.strip()
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc.exp_name"] = os.environ["DVC_EXP_NAME"]
    return tags


# Experiment name per paper (the `paper:` key of an experiment in params.yaml).
PAPER_EXPERIMENTS = {"winkler2019": "winkler2019-cnf", "lu2020": "lu2020-cglow"}

# MLflow 3.x server-side limits (mlflow.utils.validation); values longer than this are rejected, not truncated.
MAX_PARAM_VALUE = 6000
MAX_KEY = 250
MAX_PARAMS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000


# The UI's experiment kind (MLflow 3: `mlflow.experimentKind`; the UI's ExperimentKind enum): without it, a new
# experiment may open in the GenAI (traces) view.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"

# An unreachable server is reported after this many seconds (MLflow's own client retries for minutes).
CONNECT_TIMEOUT_S = 5
_checked: set[str] = set()


def machine() -> dict[str, Any]:
    """What this process runs on, for the record beside a run's timings: CPU model, logical CPUs (and the
    ones this process may use), torch's version and intra-op threads, the GPU when torch sees one."""
    import platform

    import torch

    from flowlib import bfloat16_is_native

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    out: dict[str, Any] = {"cpu": cpu, "cpus": os.cpu_count(),
                           "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
                           "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                           # the vector ISA torch dispatches to (AVX2 / AVX512 / ...) and native bfloat16: two
                           # "AMD EPYC" VMs can differ 2x in speed and in what scaling.mixed_precision auto picks
                           "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                           "bfloat16_native": bfloat16_is_native("cpu")}
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(0)
    return out


def tracking_uri() -> str:
    """The tracking URI every stage uses: ``$MLFLOW_TRACKING_URI`` if set, else the project's SQLite file."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_root() / 'mlflow.db'}"


def _sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def check_store(uri: str | None = None) -> None:
    """Fail fast, in one line, when the store cannot be used (checked once per process and URI).

    An HTTP server must answer ``/health`` within ``CONNECT_TIMEOUT_S`` (and later requests retry a few times, not
    for minutes: ``MLFLOW_HTTP_REQUEST_MAX_RETRIES``/``_TIMEOUT`` default to 2 and 30 s unless set); an
    existing SQLite file must be a readable SQLite database (a transaction a killed writer left half done is
    rolled back, as SQLite does on any read-write open). Raises ``TrackingError``.
    """
    uri = uri or tracking_uri()
    if uri in _checked:
        return
    path = _sqlite_path(uri)
    if path is not None:
        if path.exists():
            try:
                if path.stat().st_size:
                    with open(path, "rb") as f:
                        if f.read(16) != b"SQLite format 3\x00":
                            raise sqlite3.DatabaseError("file is not a database")
                # Read-write, never creating: a writer killed mid-transaction (SIGKILL, a lost node) leaves a hot
                # journal that the first connection must roll back; a read-only one cannot and would report
                # "attempt to write a readonly database" for a store that is fine.
                with contextlib.closing(sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=30)) as db:
                    db.execute("PRAGMA quick_check").fetchall()
            except (sqlite3.Error, OSError) as exc:
                raise TrackingError(f"MLflow store {path} is unreadable ({exc}): move it aside (a new store is "
                                    "created) or point MLFLOW_TRACKING_URI at another one") from None
        init_sqlite_store(uri, path)
    elif uri.startswith(("http://", "https://")):
        import urllib.error
        import urllib.request

        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
        try:
            urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=CONNECT_TIMEOUT_S).close()
        except urllib.error.HTTPError:
            pass  # it answered: a server behind a proxy may not serve /health
        except Exception as exc:  # URLError, timeout, connection refused
            reason = getattr(exc, "reason", exc)
            raise TrackingError(f"MLflow tracking server {uri} (MLFLOW_TRACKING_URI) is unreachable ({reason}); "
                                "start it, or unset MLFLOW_TRACKING_URI to use the project's mlflow.db") from None
    _checked.add(uri)


def init_sqlite_store(uri: str, path: Path) -> None:
    """Create (or migrate) the SQLite store ``path`` of ``uri`` while holding ``.<name>.lock`` beside it.

    MLflow creates the tables of a new store, and runs its migrations, on first use; two processes doing that at
    once race ("table experiments already exists"), which is what two queued `dvc exp run`s starting together
    did. The lock serialises it; once the schema exists this is a cheap no-op query.
    """
    import fcntl

    from mlflow import MlflowClient

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            client = MlflowClient(tracking_uri=uri, registry_uri=uri)
            client.search_experiments(max_results=1)
            client.search_registered_models(max_results=1)
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def experiment_name(paper: str, prefix: str = "") -> str:
    """MLflow experiment for a paper key (``winkler2019`` / ``lu2020``), optionally prefixed (``mlflow.experiment_prefix``)."""
    try:
        name = PAPER_EXPERIMENTS[paper]
    except KeyError:
        raise ValueError(f"unknown paper {paper!r}: expected one of {sorted(PAPER_EXPERIMENTS)}") from None
    return f"{prefix}{name}"


def _client():
    from mlflow import MlflowClient

    uri = tracking_uri()
    check_store(uri)
    return MlflowClient(tracking_uri=uri)


def _artifact_location(uri: str) -> str | None:
    """``<project>/mlruns`` for the project's SQLite store (MLflow's default is relative to the working
    directory, which differs under `dvc exp run --queue`); the server's own choice otherwise."""
    path = _sqlite_path(uri)
    return (path.parent / "mlruns").as_uri() if path is not None else None


def _experiment_id(client, name: str) -> str:
    try:
        exp = client.get_experiment_by_name(name)
    except Exception as exc:
        path = _sqlite_path(tracking_uri())
        where = f"MLflow store {path}" if path else f"MLflow tracking server {tracking_uri()}"
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise TrackingError(f"{where} cannot be read ({type(exc).__name__}: {first}); move it aside or point "
                            "MLFLOW_TRACKING_URI at another store") from None
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        if exp.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
            client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        return exp.experiment_id
    try:
        return client.create_experiment(name, artifact_location=_artifact_location(tracking_uri()),
                                        tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
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


@contextlib.contextmanager
def closing_run(run_id: str, on_success: str | None = "FINISHED") -> Iterator[str]:
    """Close ``run_id`` on every way out of the block: ``on_success`` (FINISHED; None leaves it open), KILLED on
    ``KeyboardInterrupt`` (Ctrl-C, and SIGTERM under ``terminate_as_interrupt``), FAILED on any other error
    (which propagates)."""
    try:
        yield run_id
    except KeyboardInterrupt:
        finish_run(run_id, "KILLED")
        raise
    except BaseException:
        finish_run(run_id, "FAILED")
        raise
    if on_success:
        finish_run(run_id, on_success)


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Within the block SIGTERM raises ``KeyboardInterrupt`` as Ctrl-C does, so `kill` and DVC's cancellation close
    the run as KILLED instead of ending the process with the run left RUNNING."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def log_dataset(run_id: str, name: str, uri: str, digest: str, context: str = "train",
                profile: Mapping[str, Any] | None = None) -> None:
    """Log a dataset as an input of the run (the UI's Dataset column): ``name``, where it lives (``uri``), the
    manifest's ``digest`` (sha256, shortened to MLflow's 36 characters), ``mlflow.data.context`` = ``context``."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    source_type = uri.split("://", 1)[0] if "://" in uri else "local"
    entity = Dataset(name=_truncate(name, 500), digest=digest[:36], source_type=source_type,
                     source=json.dumps({"uri": uri}), profile=json.dumps(dict(profile or {})))
    _client().log_inputs(run_id, datasets=[DatasetInput(entity, tags=[InputTag("mlflow.data.context", context)])])


def open_stage_run(experiment_name: str, run_name: str, stage: str,
                   parent_run_id: str | None) -> tuple[str, str]:
    """Create the run of ``stage`` (``evaluate``, ``sweep``) measuring the training run ``parent_run_id``:
    nested under it (``mlflow.parentRunId``: the UI lists it below the training run), tagged ``cnf.stage``, and
    the parent tagged ``cnf.<stage>_run_id`` (the link back). Returns ``(reported_run_id, stage_run_id)``: the
    run a table row names (the training run, or the stage run itself when the training run is not in this
    store, e.g. a fresh ``mlflow.db``, with a warning) and the run to log the stage's results to."""
    client = _client()
    exp_id = _experiment_id(client, experiment_name)
    parent = None
    if parent_run_id:
        try:
            parent = client.get_run(parent_run_id)
        except Exception:
            parent = None
        if parent is None or parent.info.experiment_id != exp_id or parent.info.lifecycle_stage == "deleted":
            warnings.warn(f"MLflow run {parent_run_id} not found in experiment {experiment_name!r} at "
                          f"{tracking_uri()}; the {stage} run is not nested under a training run", stacklevel=2)
            parent = None
    tags = {"cnf.stage": stage, **source_tags(f"pipelines/stages/{stage}.py")}
    if parent is not None:
        tags["mlflow.parentRunId"] = parent.info.run_id
    run_id = client.create_run(exp_id, run_name=f"{run_name}/{stage}", tags=tags).info.run_id
    if parent is None:
        return run_id, run_id
    client.set_tag(parent.info.run_id, f"cnf.{stage}_run_id", run_id)
    return parent.info.run_id, run_id


# What the logged model needs at load time (pyfunc environments); exact versions, so nothing is inferred.
def _requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for name in ("torch", "numpy", "mlflow"):
        try:
            out.append(f"{name}=={version(name).split('+')[0]}")
        except PackageNotFoundError:
            continue
    return out


def _pyfunc_model():
    """A pyfunc wrapper of a flowlib checkpoint: ``predict(x)`` is the model's sample-mean prediction (c-Glow
    sec. 4.3) of a float ``(B, C, H, W)`` array in [0, 1], params ``n_samples`` (1) and ``temperature`` (1.0).

    Built inside a function so that importing this module never imports mlflow; cloudpickle stores the class
    by value, so loading it needs flowlib and torch, not this module."""
    import mlflow.pyfunc

    class FlowlibModel(mlflow.pyfunc.PythonModel):
        def load_context(self, context):
            from flowlib.checkpoint import load_model

            self.model = load_model(context.artifacts["checkpoint"]).eval()

        def predict(self, context, model_input, params=None):
            import numpy as np
            import torch

            params = params or {}
            x = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
            out = self.model.predict(x, n_samples=int(params.get("n_samples", 1)),
                                     temperature=float(params.get("temperature", 1.0)))
            return out["prediction"].detach().cpu().numpy()

    return FlowlibModel()


def log_flowlib_model(run_id: str, checkpoint: str | os.PathLike, registered_name: str,
                      name: str = "model") -> str:
    """Log ``checkpoint`` to ``run_id`` in MLflow's model format (a pyfunc whose artifact ``checkpoint`` is the
    flowlib file) and register it as a new version of ``registered_name``; returns ``models:/<name>/<version>``.

    No input example is given: MLflow would fix the batch dimension from it; the signature leaves it free
    (``-1``) and takes the channel and spatial sizes from the checkpoint's ``x_shape``/``y_shape``.
    """
    import mlflow
    import numpy as np
    import torch
    from mlflow.models import Model, ModelSignature
    from mlflow.types import Schema, TensorSpec

    config = torch.load(checkpoint, map_location="cpu", weights_only=False).get("config", {})
    signature = None
    if config.get("x_shape") and config.get("y_shape"):
        signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype("float32"), (-1, *config["x_shape"]))]),
                                   outputs=Schema([TensorSpec(np.dtype("float32"), (-1, *config["y_shape"]))]))
    check_store()
    mlflow.set_tracking_uri(tracking_uri())
    mlflow.set_registry_uri(tracking_uri())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        info = Model.log(artifact_path=None, name=name, flavor=mlflow.pyfunc, run_id=run_id,
                         python_model=_pyfunc_model(), artifacts={"checkpoint": str(checkpoint)},
                         signature=signature, pip_requirements=_requirements(),
                         registered_model_name=registered_name, await_registration_for=30)
    version = info.registered_model_version
    set_tags(run_id, {"cnf.registered_model": f"models:/{registered_name}/{version}"})
    return f"models:/{registered_name}/{version}"


@contextlib.contextmanager
def system_metrics(run_id: str, sampling_interval: float = 5.0) -> Iterator[None]:
    """MLflow's system metrics monitor (``system/cpu_utilization_percentage``, memory, disk, network, GPU when
    there is one) logging to ``run_id`` while the block runs; nothing when psutil is missing."""
    try:
        import psutil  # noqa: F401 - the monitor's dependency
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
    except ImportError:
        yield
        return
    monitor = SystemMetricsMonitor(run_id, sampling_interval=sampling_interval, resume_logging=True,
                                   tracking_uri=tracking_uri())
    monitor.start()
    try:
        yield
    finally:
        monitor.finish()
