"""The training driver: fit one experiment with Ray Train, tracked in one MLflow run (``cnf train``'s library).

``train_experiment`` runs these steps, each one function:

1. ``read_dataset``: the training shards' ``manifest.json``, read once (its sha256 is logged, its content
   fingerprinted, and the parsed manifest handed to the workers' loaders);
2. ``model_options``: the ``build_model`` options (the experiment's, with the task's ``num_classes``);
3. ``prepare_stored_run``: resume or discard what ``<storage>/<experiment>`` holds (``pipelines.training.resume``);
4. ``start_tracking``: open (or reopen) the experiment's MLflow run, log params, MLflow's source tags, the
   training shards as a dataset input and the config;
5. ``fit``: connect to Ray (``pipelines.training.cluster``), run ``train_loop_per_worker`` on
   ``scaling.num_workers`` workers, and disconnect (a private local instance is shut down);
6. ``export_results``: copy the final checkpoint to ``model_out``, log it (as an artifact and in MLflow's model
   format, registered as a version of the registered model ``<prefix><experiment>``) and sample grids
   (``pipelines.training.grids``) to MLflow;
7. ``summarize``: the scalar metrics written to ``metrics_out`` (what `dvc metrics diff` compares) and the run's
   bookkeeping and timings written to ``info_out`` (run ids, paths, manifest digest, wall/fit/start-up seconds);
   with ``plots_out``, the training curves read back from the run (``training_curve``) for `dvc plots`.

The MLflow run is closed on every way out (``tracking.closing_run``): FINISHED, FAILED on an error (also one
after training, e.g. an unwritable ``model_out``), KILLED on Ctrl-C or SIGTERM. MLflow's system metrics monitor
logs CPU, memory, disk and network use to the run while it trains.

Resuming: Ray Train 2.60 (Train V2) reloads the checkpoint manager snapshot kept in ``<storage>/<experiment>/``
when a run with the same ``RunConfig(name, storage_path)`` starts again, and hands the latest checkpoint to
``ray.train.get_checkpoint()`` in every worker; ``FailureConfig(max_failures)`` restarts the worker group from
it in the same way. Each checkpoint is committed before the workers train on
(``pipelines.training.checkpointing``), so either kind of crash loses at most one ``train.checkpoint_every``
interval. The MLflow run id is kept in ``<state-dir>/mlflow_run_id``, so a rerun after the driver was killed
continues the same step counter in the same MLflow run.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from pipelines.io import copy_file, write_text
from pipelines.training import resume
from pipelines.training.faults import MARKER_FILE, CrashOnce


INFO_FILE = "train_info.json"

# The numbers of metrics/train/<exp>.json, all scalars: what a user compares across runs and `dvc exp show` lists.
# `samples_per_s` is the one timing figure there (throughput is compared too); the reproducibility test skips it.
METRIC_KEYS = ("steps", "final_train_nll", "final_train_bpd", "samples_per_s", "nonfinite_skipped")
TIMING_KEYS = ("samples_per_s", "wall_s", "fit_s", "startup_s")


@dataclass(frozen=True)
class Dataset:
    """A training dataset as read once by the driver: where it is, its parsed manifest, the manifest's sha256."""

    uri: str
    manifest: dict
    manifest_sha256: str


@dataclass(frozen=True)
class RunPaths:
    """Where a training run reads and writes (absolute paths; ``data_dir`` and ``storage`` may be ``s3://``)."""

    data_dir: str
    storage: str  # Ray storage: the run lives in <storage>/<experiment>
    state_dir: Path  # local: mlflow_run_id, config_sha256
    model_out: Path
    metrics_out: Path  # scalar metrics only
    info_out: Path | None = None  # run bookkeeping and timings (default <state_dir>/train_info.json)
    plots_out: Path | None = None  # the training curves for `dvc plots` (not written when None)

    @property
    def info_file(self) -> Path:
        return self.info_out or self.state_dir / INFO_FILE

    def run_dir(self, experiment: str) -> str:
        return self.storage.rstrip("/") + "/" + experiment


def read_dataset(data_dir: str) -> Dataset:
    """``data_dir``'s manifest; a ``FileNotFoundError`` saying how to fetch it when it is not there."""
    from pipelines.data import shards, storage

    uri = storage.join(data_dir, shards.MANIFEST)
    try:
        raw = storage.get_bytes(uri)
        manifest = json.loads(raw)
    except Exception as exc:
        raise FileNotFoundError(f"no dataset at {data_dir} ({uri} unreadable: {exc}); fetch it first, e.g. "
                                f"`cnf fetch <dataset> --source demo --out {data_dir}`") from None
    if not isinstance(manifest, dict):
        raise FileNotFoundError(f"no dataset at {data_dir}: {uri} holds {type(manifest).__name__}, not a manifest")
    return Dataset(uri=data_dir, manifest=manifest, manifest_sha256=hashlib.sha256(raw).hexdigest())


def model_options(exp, task) -> dict:
    """``build_model`` options of ``exp``: its model section's, with the task's ``num_classes`` unless set."""
    options = exp.model.build_options()
    if task.num_classes and options.get("num_classes") is None:
        options["num_classes"] = task.num_classes
    return options


def built_experiment(exp, options: Mapping[str, Any]) -> dict:
    """``exp.to_dict()`` with ``model`` as it is built (``options``): what resume fingerprints and MLflow record."""
    return {**exp.to_dict(), "model": {"family": exp.model.family, **options}}


def prepare_stored_run(name: str, experiment: Mapping[str, Any], dataset: Dataset, paths: RunPaths, *,
                       fresh: bool = False, resume_any_code: bool = False) -> None:
    """Keep the stored run when it was trained with this config, data and code, else discard it; then record
    what the run in ``paths.run_dir(name)`` is trained with."""
    current = resume.Fingerprints(
        config=resume.config_fingerprint(experiment, resume.data_fingerprint(dataset.manifest)),
        code=resume.code_fingerprint())
    run_dir = paths.run_dir(name)
    decision = resume.decide_resume(resume.Fingerprints.read(paths.state_dir), current, fresh=fresh,
                                    resume_any_code=resume_any_code,
                                    stored_step=resume.stored_checkpoints(run_dir).latest_step,
                                    steps=experiment["train"]["steps"])
    if decision.reason:
        print(f"[{name}] {decision.reason}", flush=True)
    if decision.fresh:
        resume.discard_run(run_dir, paths.state_dir, extra_files=(MARKER_FILE,))
    else:
        for folder in resume.remove_incomplete_checkpoints(run_dir):
            print(f"[{name}] removed {folder}: a checkpoint Ray never committed (crash or full disk)", flush=True)
    paths.state_dir.mkdir(parents=True, exist_ok=True)
    current.write(paths.state_dir)


def start_tracking(exp, params, experiment: Mapping[str, Any], dataset: Dataset, target: str,
                   state_dir: Path) -> str:
    """Open the experiment's MLflow run (reopened when ``state_dir`` names one) and log params, tags and the
    config artifact; returns the run id, also written to ``state_dir``."""
    import yaml

    from pipelines import tracking

    exp_name = tracking.experiment_name(exp.paper, params.mlflow.experiment_prefix)
    previous = resume.read_run_id(state_dir)
    run_id = tracking.open_run(exp_name, exp.name, previous)
    resume.write_run_id(state_dir, run_id)
    with tracking.closing_run(run_id, on_success=None):  # closes it only when logging fails
        tracking.set_tags(run_id, {**tracking.source_tags("pipelines/stages/train.py"), "cnf.stage": "train"})
        splits = {k: v.get("count") for k, v in (dataset.manifest.get("splits") or {}).items() if isinstance(v, Mapping)}
        tracking.log_dataset(run_id, exp.data.dataset, dataset.uri, dataset.manifest_sha256,
                             profile={"splits": splits})
        commit = tracking.git_commit()
        tracking.log_params(run_id, {**exp.flatten(), "profile": params.profile, "git_commit": commit,
                                     "data_manifest_sha256": dataset.manifest_sha256, "data_dir": dataset.uri,
                                     "target": target})
        tracking.set_tags(run_id, {"profile": params.profile, "experiment": exp.name, "git_commit": commit,
                                   "table": ",".join(exp.table)})
        with tempfile.TemporaryDirectory() as tmp:
            config = Path(tmp) / f"{exp.name}.yaml"
            config.write_text(yaml.safe_dump({"profile": params.profile, "experiment": dict(experiment)},
                                             sort_keys=False))
            tracking.log_artifact(run_id, config, "config")
    print(f"[{exp.name}] MLflow run {run_id} in experiment {exp_name!r} at {tracking.tracking_uri()}"
          f"{' (resumed)' if previous == run_id else ''}", flush=True)
    return run_id


def fit(job, storage: str, num_cpus: int | None = None):
    """Run ``train_loop_per_worker`` for ``job`` (a ``TrainJob``) on its ``scaling``; returns Ray's ``Result``."""
    from pipelines.training.cluster import init_ray, release_ray, worker_env

    exp = job.experiment
    scaling = exp.scaling
    ray = init_ray(scaling.num_workers * scaling.cpus_per_worker, num_cpus, scaling.use_gpu)
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from pipelines.training.worker import raise_if_fatal, train_loop_per_worker

    resources = {"CPU": scaling.cpus_per_worker}
    if scaling.use_gpu:
        resources["GPU"] = scaling.gpus_per_worker or 1
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"job": job},
        scaling_config=ScalingConfig(num_workers=scaling.num_workers, use_gpu=scaling.use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(name=exp.name, storage_path=storage,
                             failure_config=FailureConfig(max_failures=scaling.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2),
                             worker_runtime_env={"env_vars": worker_env(job.tracking_uri)}),
    )
    result = trainer.fit()
    # The controller has finished; the export after this needs no Ray. Not on an error or interrupt: shutting Ray
    # down under a fit that SIGTERM cut short aborts the process (exit -6) before the MLflow run is marked KILLED.
    release_ray(ray)
    return raise_if_fatal(result, exp.name)  # divergence, config errors: not retried, no model


def registered_model_name(exp, params) -> str:
    """The registered model an experiment's trained versions go to: ``<mlflow.experiment_prefix><experiment>``."""
    return f"{params.mlflow.experiment_prefix}{exp.name}"


def export_results(result, job, task, run_id: str, paths: RunPaths, *, samples: bool = True,
                   registered_name: str | None = None) -> str | None:
    """Copy the final checkpoint to ``paths.model_out`` and log it (``checkpoint/model.pt``), in MLflow's model
    format registered as a version of ``registered_name`` (when given), and, unless ``samples`` is off, sample
    grids (``samples/*.png``) to the MLflow run. Returns the ``models:/<name>/<version>`` URI (or None)."""
    from pipelines import tracking
    from pipelines.training.checkpointing import BEST_FILE, MODEL_FILE
    from pipelines.training.grids import checkpoint_grids

    exp = job.experiment
    if result.checkpoint is None:
        raise RuntimeError(f"{exp.name}: training finished without a checkpoint in {paths.run_dir(exp.name)}")
    with result.checkpoint.as_directory() as folder:
        # train.select: the checkpoint with the lowest held-out bits/dim, else the last step's.
        best = Path(folder) / BEST_FILE
        copy_file(best if exp.train.select and best.is_file() else Path(folder) / MODEL_FILE, paths.model_out)
    with tempfile.TemporaryDirectory() as tmp:
        named = Path(tmp) / "checkpoint" / "model.pt"
        named.parent.mkdir()
        shutil.copyfile(paths.model_out, named)
        tracking.log_artifact(run_id, named, "checkpoint")
        model_uri = tracking.log_flowlib_model(run_id, named, registered_name) if registered_name else None
        if samples:
            try:
                for grid in checkpoint_grids(paths.model_out, exp, task, job.data_dir, Path(tmp), job.manifest):
                    tracking.log_artifact(run_id, grid, "samples")
            except Exception as exc:  # a broken sampler must not lose a finished training run
                print(f"[{exp.name}] warning: sample grids failed: {type(exc).__name__}: {exc}", file=sys.stderr)
    return model_uri


def summarize(exp, params, metrics: Mapping[str, Any], *, run_id: str, dataset: Dataset, paths: RunPaths,
              t_start: float, t_fit: float, model_uri: str | None = None) -> tuple[dict, dict]:
    """``(scalars, info)`` of a finished fit from the workers' final report ``metrics`` (NaN written as null):
    ``scalars`` (``METRIC_KEYS``, and with ``train.select`` the exported checkpoint's ``selected_step`` and
    ``select_bpd``) go to ``metrics_out``; ``info``, the run's bookkeeping and timings, to
    ``info_out``."""
    from pipelines import tracking

    first = float(metrics.get("first_step_unix") or 0.0)
    now = time.time()
    scalars = {"steps": int(metrics.get("step", 0)), "final_train_nll": metrics.get("train_nll"),
               "final_train_bpd": metrics.get("train_bpd"), "samples_per_s": metrics.get("samples_per_s"),
               "nonfinite_skipped": int(metrics.get("nonfinite_skipped", 0))}
    if exp.train.select and metrics.get("selected_step") is not None:  # the exported checkpoint's step
        scalars.update(selected_step=int(metrics["selected_step"]), select_bpd=metrics.get("select_bpd"))
    info = {
        "experiment": exp.name, "profile": params.profile, "steps": scalars["steps"],
        "resumed_from_step": int(metrics.get("resumed_from_step", 0)), "num_workers": exp.scaling.num_workers,
        "mlflow_run_id": run_id,
        "mlflow_experiment": tracking.experiment_name(exp.paper, params.mlflow.experiment_prefix),
        "mlflow_tracking_uri": tracking.tracking_uri(), "registered_model": model_uri,
        "wall_s": round(now - t_start, 3), "fit_s": round(now - t_fit, 3),
        "startup_s": round(first - t_start, 3) if first else None, "samples_per_s": scalars["samples_per_s"],
        "checkpoint": str(paths.model_out), "metrics": str(paths.metrics_out),
        "data_dir": dataset.uri, "data_manifest_sha256": dataset.manifest_sha256,
        "ray_run_dir": paths.run_dir(exp.name),
        "machine": {**tracking.machine(), "ray_address": os.environ.get("RAY_ADDRESS") or "local",
                    "workers": exp.scaling.num_workers, "cpus_per_worker": exp.scaling.cpus_per_worker},
    }
    clean = lambda d: {k: (None if isinstance(v, float) and v != v else v) for k, v in d.items()}  # noqa: E731
    return clean(scalars), clean(info)


CURVE_KEYS = ("train_nll", "train_bpd")  # logged every train.log_every steps by the worker (_log_step)


def training_curve(run_id: str, keys=CURVE_KEYS) -> list[dict]:
    """``[{step, train_nll, train_bpd}, ...]`` read back from the MLflow run's metric history (single-valued per
    step: a resumed fit does not log the replayed steps again); a key missing at a step is left out."""
    from mlflow import MlflowClient

    from pipelines import tracking

    client = MlflowClient(tracking_uri=tracking.tracking_uri())
    rows: dict[int, dict] = {}
    for key in keys:
        for m in sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp)):
            if m.value == m.value:  # NaN (a skipped step) is no point of a curve
                rows.setdefault(int(m.step), {"step": int(m.step)})[key] = float(m.value)
    return [rows[step] for step in sorted(rows)]


def train_experiment(exp, params, paths: RunPaths, *, num_cpus: int | None = None, fresh: bool = False,
                     samples: bool = True, t_start: float | None = None, resume_any_code: bool = False,
                     crash: CrashOnce | None = None) -> dict:
    """Fit ``exp`` (an ``ExperimentParams`` of ``params``) with Ray Train; returns the metrics dict also written
    to ``paths.metrics_out``. ``crash``: test-only fault injection (``pipelines.training.faults``)."""
    from pipelines import tracking
    from pipelines.tasks import get_task
    from pipelines.training.worker import TrainJob

    t_start = t_start or time.time()
    task = get_task(exp.task)
    dataset = read_dataset(paths.data_dir)
    options = model_options(exp, task)
    experiment = built_experiment(exp, options)
    with resume.hold_run(paths.state_dir):  # a second `cnf train` of this run is refused by name
        prepare_stored_run(exp.name, experiment, dataset, paths, fresh=fresh, resume_any_code=resume_any_code)
        run_id = start_tracking(exp, params, experiment, dataset, task.target, paths.state_dir)
        job = TrainJob(experiment=exp, target=task.target, model_options=options, data_dir=paths.data_dir,
                       manifest=dataset.manifest, mlflow_run_id=run_id, tracking_uri=tracking.tracking_uri(),
                       crash=crash)
        registered = registered_model_name(exp, params)
        with tracking.closing_run(run_id):
            t_fit = time.time()
            with tracking.system_metrics(run_id):
                result = fit(job, paths.storage, num_cpus)
            model_uri = export_results(result, job, task, run_id, paths, samples=samples,
                                       registered_name=registered)
            scalars, info = summarize(exp, params, dict(result.metrics or {}), run_id=run_id, dataset=dataset,
                                      paths=paths, t_start=t_start, t_fit=t_fit, model_uri=model_uri)
            tracking.log_metrics(run_id, {k: v for k, v in {**scalars, **info}.items()
                                          if k in ("final_train_bpd", *TIMING_KEYS) and v is not None},
                                 step=scalars["steps"])
            write_text(paths.info_file, json.dumps(info, indent=2) + "\n")
            write_text(paths.metrics_out, json.dumps(scalars, indent=2) + "\n")
            if paths.plots_out is not None:
                write_text(paths.plots_out, json.dumps(training_curve(run_id), indent=2) + "\n")
        return {**info, **scalars}
