"""`cnf train EXPERIMENT`: fit one experiment of params.yaml with Ray Train, tracked in one MLflow run.

Argument parsing and output only: ``pipelines.training.driver.train_experiment`` does the work (resume or
discard the stored run, MLflow, Ray, fit, artifacts). Writes ``--model-out`` (final flowlib checkpoint),
``--metrics-out`` (scalar metrics JSON: steps, final train NLL and bits/dim, samples/s, skipped steps),
``--info-out`` (the run's bookkeeping: MLflow run id, registered model, paths, manifest digest, timings),
``--plots-out`` (the training curves ``[{step, train_nll, train_bpd}]`` for `dvc plots`), ``--seeds-out``
(with ``train.seeds`` N > 1, runs 1..N-1 of the experiment, each with its own seed, Ray and MLflow run) and
MLflow artifacts (``checkpoint/model.pt``, the registered ``model``, ``config/<exp>.yaml``, ``samples/*.png``).
Ctrl-C and SIGTERM stop it with the MLflow run marked KILLED (exit 130); rerunning resumes.
A stored run is resumed only if it was trained with the same config, dataset and training code
(``pipelines.training.resume``); ``--fresh`` discards it. The parameters are validated before anything starts,
so a misspelt key fails here, naming it.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


def _process_start_time() -> float:
    """Unix time this process started (so start-up includes interpreter and import time)."""
    try:
        import psutil

        return psutil.Process().create_time()
    except Exception:
        return time.time()


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("experiment", help="experiment name in params.yaml (experiments.<name>)")
    parser.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a parameter, e.g. --set train.steps=10 (relative to the experiment) or "
                             "--set experiments.drive_cnf.train.lr=1e-4; repeatable")
    parser.add_argument("--data", help="training shards (folder or s3:// URI; default: <data-root>/<dataset>)")
    parser.add_argument("--data-root", default="data/shards",
                        help="folder (or s3:// prefix) holding one shard folder per dataset (default: %(default)s)")
    parser.add_argument("--storage", default="runs",
                        help="Ray storage path (folder or s3:// URI); the run lives in <storage>/<experiment>")
    parser.add_argument("--state-dir", help="local folder for the MLflow run id file (default: runs/<experiment>)")
    parser.add_argument("--model-out", help="final checkpoint (default: models/<experiment>.pt)")
    parser.add_argument("--metrics-out", help="scalar metrics JSON (default: metrics/train/<experiment>.json)")
    parser.add_argument("--info-out", help="run bookkeeping JSON: MLflow run id, paths, timings (default: "
                                           "<state-dir>/train_info.json, i.e. runs/<experiment>/train_info.json)")
    parser.add_argument("--plots-out", help="training curves for `dvc plots`: [{step, train_nll, train_bpd}, ...] "
                                            "from the MLflow run (default: not written)")
    parser.add_argument("--seeds-out", help="folder of the other runs when train.seeds > 1 (run k: seed<k>.pt, "
                                             "seed<k>.json metrics, seed<k>.info.json); created, empty, for one "
                                             "seed so that DVC can declare it (default: models/<experiment>.seeds)")
    parser.add_argument("--num-cpus", type=int, default=None,
                        help="CPUs for a local Ray instance (default: what the workers need, at least all cores)")
    parser.add_argument("--fresh", action="store_true",
                        help="discard a previous run's checkpoints and MLflow run id instead of resuming")
    parser.add_argument("--resume-any-code", action="store_true",
                        help="resume a stored run even if the training code (flowlib, loader, tasks, worker) "
                             "changed since it was trained (by default that starts fresh)")
    parser.add_argument("--no-samples", action="store_true", help="skip the sample grids logged to MLflow")


def _abs(path: str | os.PathLike) -> str:
    """Absolute path, or the URI unchanged: Ray workers start in their own directory, so relative paths break."""
    text = str(path)
    return text if "://" in text else str(Path(text).expanduser().resolve())


def run_paths(args: argparse.Namespace, exp):
    """The run's paths from the arguments and their defaults, absolute."""
    from pipelines.training.driver import RunPaths

    storage = _abs(args.storage if "://" in str(args.storage) or Path(args.storage).is_absolute()
                   else Path.cwd() / args.storage)
    return RunPaths(
        data_dir=_abs(args.data or str(args.data_root).rstrip("/") + "/" + exp.data.dataset),
        storage=storage,
        state_dir=Path(_abs(args.state_dir or (Path(storage) / exp.name if "://" not in storage
                                               else Path("runs") / exp.name))),
        model_out=Path(_abs(args.model_out or Path("models") / f"{exp.name}.pt")),
        metrics_out=Path(_abs(args.metrics_out or Path("metrics") / "train" / f"{exp.name}.json")),
        info_out=Path(_abs(args.info_out)) if args.info_out else None,
        plots_out=Path(_abs(args.plots_out)) if getattr(args, "plots_out", None) else None)


def seed_run_paths(exp, paths, k: int, seeds_dir: Path):
    """``(experiment, paths)`` of seed run ``k`` > 0: its Ray run and state beside the experiment's
    (``<exp>-seed<k>``), its model, metrics and bookkeeping in ``seeds_dir`` (``seed<k>.pt``, ``.json``,
    ``.info.json``); no plot data (the experiment's curves are run 0's)."""
    import dataclasses

    run_exp = exp.seed_run(k)
    return run_exp, dataclasses.replace(
        paths, state_dir=paths.state_dir.with_name(f"{paths.state_dir.name}-seed{k}"),
        model_out=seeds_dir / f"seed{k}.pt", metrics_out=seeds_dir / f"seed{k}.json",
        info_out=seeds_dir / f"seed{k}.info.json", plots_out=None)


def keep_seed_files(seeds_dir: Path, seeds: int) -> None:
    """Create ``seeds_dir`` and remove the files of seed runs >= ``seeds`` (left by a run with more seeds)."""
    import re

    seeds_dir.mkdir(parents=True, exist_ok=True)
    for path in seeds_dir.iterdir():
        m = re.fullmatch(r"seed(\d+)(\.pt|\.json|\.info\.json)", path.name)
        if m and int(m.group(1)) >= seeds:
            path.unlink()


def run(args: argparse.Namespace) -> int:
    from pipelines.params import ParamsError, load_params

    t_start = _process_start_time()
    try:
        params = load_params(args.params, args.overrides, args.experiment)
    except ParamsError as exc:
        print(f"cnf train: {exc}", file=sys.stderr)
        return 2
    from pipelines.tracking import TrackingError, terminate_as_interrupt
    from pipelines.training.cluster import RayConnectError
    from pipelines.training.driver import train_experiment
    from pipelines.data.storage import LockError
    from pipelines.training.faults import crash_from_environment
    from pipelines.training.worker import FatalTrainingError

    exp = params.experiment(args.experiment)
    paths = run_paths(args, exp)
    seeds_dir = Path(_abs(args.seeds_out or Path("models") / f"{exp.name}.seeds"))
    runs = [(exp, paths)] + [seed_run_paths(exp, paths, k, seeds_dir) for k in range(1, exp.train.seeds)]
    try:
        with terminate_as_interrupt():
            for k, (run_exp, run_paths_k) in enumerate(runs):
                if exp.train.seeds > 1:
                    print(f"[{exp.name}] seed run {k + 1}/{exp.train.seeds}: {run_exp.name}, train.seed "
                          f"{run_exp.train.seed}", flush=True)
                result = train_experiment(run_exp, params, run_paths_k, num_cpus=args.num_cpus, fresh=args.fresh,
                                          samples=not args.no_samples and k == 0,
                                          t_start=t_start if k == 0 else None, resume_any_code=args.resume_any_code,
                                          crash=crash_from_environment(run_paths_k.state_dir))
                if k == 0:
                    out = result
        keep_seed_files(seeds_dir, exp.train.seeds)
    except KeyboardInterrupt as exc:
        print(f"cnf train {exp.name}: interrupted ({str(exc) or 'Ctrl-C or SIGTERM'}); the MLflow run is marked "
              "KILLED and the last checkpoint is kept: rerun the same command to resume", file=sys.stderr)
        return 130
    except (OSError, RayConnectError, TrackingError, LockError, FatalTrainingError) as exc:  # FileNotFoundError, ...
        print(f"cnf train {exp.name}: {exc}", file=sys.stderr)
        return 1
    print(f"[{exp.name}] done: {out['steps']} steps (resumed from {out['resumed_from_step']}), "
          f"train bpd {out['final_train_bpd']}, {out['samples_per_s']} samples/s, start-up {out['startup_s']} s, "
          f"wall {out['wall_s']} s -> {paths.model_out}, {paths.metrics_out}, {paths.info_file}; "
          f"MLflow model {out['registered_model']}", flush=True)
    return 0
