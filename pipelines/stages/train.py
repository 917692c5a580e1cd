"""`cnf train EXPERIMENT`: fit one experiment of params.yaml with Ray Train, tracked in one MLflow run.

The driver (this module) validates the parameters, opens (or reopens) the experiment's MLflow run, starts Ray
(a local instance limited to ``--num-cpus``, or the cluster at ``$RAY_ADDRESS``), runs
``pipelines.training.worker.train_loop_per_worker`` on ``scaling.num_workers`` workers, then writes the declared
outputs: ``--model-out`` (final flowlib checkpoint), ``--metrics-out`` (JSON), and MLflow artifacts
(``checkpoint/model.pt``, ``config/<exp>.yaml``, ``samples/*.png`` at several temperatures).

Resuming: Ray Train 2.60 (Train V2) reloads the checkpoint manager snapshot kept in
``<storage>/<experiment>/`` when a run with the same ``RunConfig(name, storage_path)`` starts again, and hands the
latest checkpoint to ``ray.train.get_checkpoint()`` in every worker; ``FailureConfig(max_failures)`` restarts the
worker group from it in the same way. Each checkpoint is committed (registered by the Train controller) before the
workers train on, so either kind of crash loses at most one ``train.checkpoint_every`` interval. The MLflow run
id is kept in ``<state-dir>/mlflow_run_id`` (written atomically), so a rerun after the driver was killed continues
the same step counter in the same MLflow run. ``--fresh`` discards both and starts over. A stored run is
resumed only if it was trained with the same config, dataset (manifest hash) and training code
(``TRAINING_CODE``); otherwise the run starts fresh, so ``dvc repro`` after such a change retrains.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pipelines.io import copy_file, write_text

RUN_ID_FILE = "mlflow_run_id"
CONFIG_FILE = "config_sha256"  # what the checkpoints in <storage>/<experiment> were trained with
# The code that decides what a checkpoint holds: the models and the training batches (not logging, not the
# driver). A change here makes a stored run stale, like a changed config or dataset.
TRAINING_CODE = ("flowlib", "pipelines/training/worker.py", "pipelines/data/loader.py", "pipelines/tasks.py")
# Environment a worker on a remote cluster needs to reach the same services (no secrets: configure those on
# the cluster itself).
_FORWARD_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION")


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
    parser.add_argument("--metrics-out", help="metrics JSON (default: metrics/train/<experiment>.json)")
    parser.add_argument("--num-cpus", type=int, default=None,
                        help="CPUs for a local Ray instance (default: what the workers need, at least all cores)")
    parser.add_argument("--fresh", action="store_true",
                        help="discard a previous run's checkpoints and MLflow run id instead of resuming")
    parser.add_argument("--resume-any-code", action="store_true",
                        help="resume a stored run even if the training code (flowlib, loader, tasks, worker) "
                             "changed since it was trained (by default that starts fresh)")
    parser.add_argument("--no-samples", action="store_true", help="skip the sample grids logged to MLflow")


def code_fingerprint(root: Path | None = None, paths: tuple[str, ...] = TRAINING_CODE) -> str:
    """sha256 over the ``*.py`` files of ``paths`` (files or packages, relative to ``root``), names included.

    ``root`` defaults to the folder holding the installed ``flowlib`` and ``pipelines`` packages.
    """
    root = Path(root) if root is not None else Path(__file__).resolve().parents[2]
    digest = hashlib.sha256()
    for rel in paths:
        base = root / rel
        if not base.exists():
            raise FileNotFoundError(f"code_fingerprint: {base} does not exist")
        files = [base] if base.is_file() else sorted(base.rglob("*.py"))
        for path in files:
            digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _abs(path: str | os.PathLike) -> str:
    """Absolute path, or the URI unchanged: Ray workers start in their own directory, so relative paths break."""
    text = str(path)
    return text if "://" in text else str(Path(text).expanduser().resolve())


def git_commit() -> str:
    """HEAD of the project repository, with ``-dirty`` when tracked files changed; ``unknown`` outside git."""
    from pipelines.tracking import project_root

    try:
        root = project_root()
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except Exception:
        return "unknown"


def _manifest_bytes(data_dir: str) -> bytes:
    from pipelines.data import storage

    uri = storage.join(data_dir, "manifest.json")
    try:
        return storage.get_bytes(uri) if storage.is_s3(data_dir) else Path(uri).read_bytes()
    except (FileNotFoundError, OSError, Exception) as exc:
        raise FileNotFoundError(f"no dataset at {data_dir} ({uri} unreadable: {exc}); fetch it first, e.g. "
                                f"`cnf fetch <dataset> --source demo --out {data_dir}`") from None


def manifest_sha256(data_dir: str) -> str:
    """sha256 of ``<data_dir>/manifest.json``; raises a clear error when the dataset was never fetched."""
    return hashlib.sha256(_manifest_bytes(data_dir)).hexdigest()


def data_fingerprint(data_dir: str) -> str:
    """sha256 of what the shards hold: the manifest's dataset and splits (every shard's sha256 and count).

    Unlike ``manifest_sha256`` it ignores where the release was fetched from, so the same archive fetched
    from another path or bucket is the same data.
    """
    manifest = json.loads(_manifest_bytes(data_dir))
    content = {"dataset": manifest.get("dataset"), "splits": manifest.get("splits")}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def _read_run_id(state_dir: Path) -> str | None:
    try:
        text = (state_dir / RUN_ID_FILE).read_text().strip()
    except FileNotFoundError:
        return None
    return text or None


class RayConnectError(RuntimeError):
    """``$RAY_ADDRESS`` names a cluster that ``ray.init`` could not join."""


def _token_auth_for_local_cluster(address: str) -> None:
    """Set ``RAY_AUTH_MODE=token`` when ``address`` is a cluster on this machine and this user has a Ray token.

    ``ray start --head`` secures a cluster with the user's token (``~/.ray/auth_token``) by default, and
    ``ray.init(address="auto")`` turns token auth on by itself, but Ray 2.60 never does so for an explicit address
    such as ``127.0.0.1:6379`` (the same cluster then refuses the driver: "InvalidAuthToken"). For an address
    on this machine the local token is the right one and does not leave the host, so do what ``auto`` does;
    for a remote address the user's ``RAY_AUTH_MODE`` (or its absence) stands.
    """
    if os.environ.get("RAY_AUTH_MODE") is not None or address == "auto":
        return
    if not (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
            or (Path.home() / ".ray" / "auth_token").is_file()):
        return
    host = address.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
    local = {"localhost", "127.0.0.1", "::1", "0.0.0.0"}
    try:
        import psutil

        local |= {a.address.split("%")[0] for addrs in psutil.net_if_addrs().values() for a in addrs}
    except Exception:
        pass
    if host in local or host.startswith("127."):
        os.environ["RAY_AUTH_MODE"] = "token"


def _init_ray(num_cpus_needed: float, num_cpus: int | None, use_gpu: bool):
    # Workers must not chdir into the trial folder: every path we hand them is absolute anyway, but user
    # code that opens a relative path (e.g. params) would silently break.
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    # The Train controller polls the workers this often (Ray's default: 2 s; the trainer forwards the variable
    # to the controller). Every checkpoint waits for that poll to commit it (pipelines.training.worker), and the end of
    # a fit is only seen on a poll, so a shorter interval shortens both; polling two actors is cheap.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    # Train V2 patches the workers' print into its logger and, once anything has wrapped sys.stdout (MLflow
    # does), also tees it to stdout, so every progress line reached the driver twice. Plain prints reach the
    # driver once through Ray's log forwarding and still land in the worker's log file.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    address = os.environ.get("RAY_ADDRESS", "").strip()
    if address:
        _token_auth_for_local_cluster(address)  # before Ray reads its configuration
    import ray

    if ray.is_initialized():
        return ray
    if address:
        # Joins the cluster named by $RAY_ADDRESS ("auto", "host:port" or "ray://..."; auth from the environment).
        # The driver only disconnects when it exits: the cluster stays up for the next stage.
        try:
            ray.init(address=address, log_to_driver=True, configure_logging=False)
        except Exception as exc:
            raise RayConnectError(
                f"could not join the Ray cluster at RAY_ADDRESS={address!r} ({type(exc).__name__}: {exc}); is it "
                "running (`ray status`)? A token-secured cluster also needs RAY_AUTH_MODE=token and its token "
                "(RAY_AUTH_TOKEN or ~/.ray/auth_token)") from exc
    else:
        # address="local" forces a private instance: a bare ray.init() silently joins any cluster that a
        # `ray start` on this machine left behind (another user's, with other resources and lifetime).
        cpus = num_cpus or max(int(num_cpus_needed + 0.999), os.cpu_count() or 1)
        ray.init(address="local", num_cpus=cpus, num_gpus=None if use_gpu else 0, include_dashboard=False,
                 log_to_driver=True, configure_logging=False)
    return ray


def _to_display(t, target: str, num_classes: int | None):
    """(C, H, W) tensor in data space -> (H, W, 3) uint8 for a grid."""
    import numpy as np

    a = t.detach().float().cpu().numpy()
    if target == "image8":
        a = a / 255.0
    elif target == "categorical":
        a = a / max((num_classes or 2) - 1, 1)
    elif target == "continuous":
        lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
        a = (a - lo) / (hi - lo) if hi > lo and (lo < 0 or hi > 1) else a
    a = np.clip(np.nan_to_num(a), 0, 1)
    if a.shape[0] == 1:
        a = np.repeat(a, 3, axis=0)
    return (a[:3].transpose(1, 2, 0) * 255).round().astype(np.uint8)


def sample_grids(model, batch: dict, target: str, temperatures, out_dir: Path, num_classes=None) -> list[Path]:
    """One PNG per temperature: rows are x (resized to y), y, and a sample y ~ p(y|x) at that temperature."""
    import numpy as np
    import torch
    from PIL import Image

    x, y = batch["x"], batch["y"]
    n = min(4, x.shape[0])
    x, y = x[:n], y[:n]
    paths = []
    h, w = y.shape[-2:]
    xs = [np.asarray(Image.fromarray(_to_display(x[i], "continuous", None)).resize((w, h), Image.NEAREST))
          for i in range(n)]
    ys = [_to_display(y[i], target, num_classes) for i in range(n)]
    for t in temperatures:
        torch.manual_seed(0)
        with torch.no_grad():
            s = model.sample(x, temperature=float(t))
        ss = [_to_display(s[i], target, num_classes) for i in range(n)]
        rows = [np.concatenate(r, axis=1) for r in (xs, ys, ss)]
        grid = np.concatenate(rows, axis=0)
        path = out_dir / f"samples_T{float(t):.2f}.png"
        Image.fromarray(grid).resize((grid.shape[1] * 4, grid.shape[0] * 4), Image.NEAREST).save(path)
        paths.append(path)
    return paths


def train_experiment(exp, params, *, data_dir: str, storage: str, state_dir: Path, model_out: Path,
                     metrics_out: Path, num_cpus: int | None = None, fresh: bool = False, samples: bool = True,
                     t_start: float | None = None, resume_any_code: bool = False) -> dict:
    """Fit ``exp`` (an ``ExperimentParams``) with Ray Train; returns the metrics dict also written to ``metrics_out``."""
    import yaml

    from pipelines import tracking
    from pipelines.tasks import get_task

    t_start = t_start or time.time()
    task = get_task(exp.task)
    experiment = exp.to_dict()
    if task.num_classes and experiment["model"].get("num_classes") is None:
        experiment["model"]["num_classes"] = task.num_classes
    experiment["model"] = {k: v for k, v in experiment["model"].items() if v is not None}
    data_sha = manifest_sha256(data_dir)

    run_dir = storage.rstrip("/") + "/" + exp.name
    # Resuming is only sound for the same model, data, optimiser and training code: more steps may continue a
    # finished run, but a changed config (e.g. a DVC rerun after editing params.yaml), dataset or model/loader
    # code must start over, or the stage would report a model the current code and data never produced.
    resume_key = {k: v for k, v in experiment.items() if k not in ("eval", "sweep", "scaling", "description", "table")}
    resume_key["train"] = {k: v for k, v in experiment["train"].items()
                           if k not in ("steps", "checkpoint_every", "log_every", "fail_at_step", "max_nonfinite")}
    resume_key["data"] = {**resume_key["data"], "content_sha256": data_fingerprint(data_dir)}
    config_sha = hashlib.sha256(json.dumps(resume_key, sort_keys=True).encode()).hexdigest()
    code_sha = code_fingerprint()
    try:
        stored = (state_dir / CONFIG_FILE).read_text().split()
    except FileNotFoundError:
        stored = None
    if stored is not None and not fresh:
        if not stored or stored[0] != config_sha:
            print(f"[{exp.name}] configuration or dataset changed since the stored run: starting fresh", flush=True)
            fresh = True
        elif stored[1:2] != [code_sha] and not resume_any_code:
            print(f"[{exp.name}] training code ({', '.join(TRAINING_CODE)}) changed since the stored run: "
                  "starting fresh (--resume-any-code continues it instead)", flush=True)
            fresh = True
    if fresh:
        if "://" not in storage:
            if Path(run_dir).exists():
                shutil.rmtree(run_dir)
        else:
            import pyarrow.fs

            fs, path = pyarrow.fs.FileSystem.from_uri(run_dir)
            if fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound:
                fs.delete_dir(path)
        (state_dir / RUN_ID_FILE).unlink(missing_ok=True)
        (state_dir / "fail_at_step.done").unlink(missing_ok=True)
    state_dir.mkdir(parents=True, exist_ok=True)
    write_text(state_dir / CONFIG_FILE, f"{config_sha}\n{code_sha}\n")

    # MLflow: one run per experiment, reopened on a rerun; rank 0 logs per-step metrics into it.
    exp_name = tracking.experiment_name(exp.paper, params.mlflow.experiment_prefix)
    previous = _read_run_id(state_dir)
    run_id = tracking.open_run(exp_name, exp.name, previous)
    write_text(state_dir / RUN_ID_FILE, run_id + "\n")
    tracking.log_params(run_id, {**exp.flatten(), "profile": params.profile, "git_commit": git_commit(),
                                 "data_manifest_sha256": data_sha, "data_dir": data_dir, "target": task.target})
    tracking.set_tags(run_id, {"profile": params.profile, "experiment": exp.name, "git_commit": git_commit(),
                               "table": ",".join(exp.table)})
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / f"{exp.name}.yaml"
        cfg.write_text(yaml.safe_dump({"profile": params.profile, "experiment": experiment}, sort_keys=False))
        tracking.log_artifact(run_id, cfg, "config")
    print(f"[{exp.name}] MLflow run {run_id} in experiment {exp_name!r} at {tracking.tracking_uri()}"
          f"{' (resumed)' if previous == run_id else ''}", flush=True)

    scaling = exp.scaling
    ray = _init_ray(scaling.num_workers * scaling.cpus_per_worker, num_cpus, scaling.use_gpu)
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from pipelines.training.worker import MODEL_FILE, train_loop_per_worker

    resources = {"CPU": scaling.cpus_per_worker}
    if scaling.use_gpu:
        resources["GPU"] = scaling.gpus_per_worker or 1
    env = {k: os.environ[k] for k in _FORWARD_ENV if os.environ.get(k)}
    env["MLFLOW_TRACKING_URI"] = tracking.tracking_uri()
    env["RAY_CHDIR_TO_TRIAL_DIR"] = "0"
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"experiment": experiment, "data_dir": data_dir, "target": task.target,
                           "mlflow_run_id": run_id, "tracking_uri": tracking.tracking_uri(),
                           "state_dir": str(state_dir)},
        scaling_config=ScalingConfig(num_workers=scaling.num_workers, use_gpu=scaling.use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(name=exp.name, storage_path=storage,
                             failure_config=FailureConfig(max_failures=scaling.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2),
                             worker_runtime_env={"env_vars": env}),
    )
    t_fit = time.time()
    try:
        result = trainer.fit()
    except BaseException as exc:
        status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
        try:
            tracking.finish_run(run_id, status)
        finally:
            raise
    metrics = dict(result.metrics or {})
    if result.checkpoint is None:
        raise RuntimeError(f"{exp.name}: training finished without a checkpoint in {run_dir}")
    with result.checkpoint.as_directory() as folder:
        copy_file(Path(folder) / MODEL_FILE, model_out)

    # Artifacts: the final checkpoint under its contract name, and sample grids at several temperatures.
    with tempfile.TemporaryDirectory() as tmp:
        named = Path(tmp) / "checkpoint" / "model.pt"
        named.parent.mkdir()
        shutil.copyfile(model_out, named)
        tracking.log_artifact(run_id, named, "checkpoint")
        if samples:
            try:
                grids = _sample_grids_for(exp, experiment, task, data_dir, model_out, Path(tmp))
                for g in grids:
                    tracking.log_artifact(run_id, g, "samples")
            except Exception as exc:  # a broken sampler must not lose a finished training run
                print(f"[{exp.name}] warning: sample grids failed: {type(exc).__name__}: {exc}", file=sys.stderr)

    first = float(metrics.get("first_step_unix") or 0.0)
    out = {
        "experiment": exp.name, "profile": params.profile, "steps": int(metrics.get("step", 0)),
        "resumed_from_step": int(metrics.get("resumed_from_step", 0)),
        "final_train_nll": metrics.get("train_nll"), "final_train_bpd": metrics.get("train_bpd"),
        "samples_per_s": metrics.get("samples_per_s"), "nonfinite_skipped": int(metrics.get("nonfinite_skipped", 0)),
        "num_workers": scaling.num_workers, "mlflow_run_id": run_id, "mlflow_experiment": exp_name,
        "wall_s": round(time.time() - t_start, 3), "fit_s": round(time.time() - t_fit, 3),
        "startup_s": round(first - t_start, 3) if first else None,
        "checkpoint": str(model_out), "data_manifest_sha256": data_sha, "ray_run_dir": run_dir,
    }
    out = {k: (None if isinstance(v, float) and v != v else v) for k, v in out.items()}
    tracking.log_metrics(run_id, {k: out[k] for k in ("final_train_bpd", "samples_per_s", "wall_s", "startup_s")
                                  if out[k] is not None}, step=out["steps"])
    tracking.finish_run(run_id, "FINISHED")
    write_text(metrics_out, json.dumps(out, indent=2) + "\n")
    return out


def _sample_grids_for(exp, experiment: dict, task, data_dir: str, model_path: Path, out_dir: Path) -> list[Path]:
    from flowlib.checkpoint import load_model
    from pipelines.data.loader import loader_options, make_loader

    model = load_model(str(model_path)).eval()
    data = experiment["data"]
    loader = make_loader(data_dir, data["train_split"], exp.task, batch_size=4, train=False, seed=0,
                         **loader_options(data, train=False))
    batch = next(iter(loader))
    # A model trained on patches has a fixed y/x shape: show the top-left crop of the evaluation images.
    cfg = getattr(model, "config", {}) or {}
    for key, shape_key in (("y", "y_shape"), ("x", "x_shape")):
        if cfg.get(shape_key):
            h, w = cfg[shape_key][-2:]
            batch[key] = batch[key][..., :h, :w]
    return sample_grids(model, batch, task.target, exp.sweep.temperatures, out_dir,
                        experiment["model"].get("num_classes"))


def run(args: argparse.Namespace) -> int:
    from pipelines.params import ParamsError, load_params

    t_start = _process_start_time()
    try:
        params = load_params(args.params, args.overrides, args.experiment)
    except ParamsError as exc:
        print(f"cnf train: {exc}", file=sys.stderr)
        return 2
    exp = params.experiment(args.experiment)
    data_dir = _abs(args.data or str(args.data_root).rstrip("/") + "/" + exp.data.dataset)
    storage = _abs(args.storage if "://" in str(args.storage) or Path(args.storage).is_absolute()
                   else Path.cwd() / args.storage)
    state_dir = Path(_abs(args.state_dir or (Path(storage) / exp.name if "://" not in storage
                                             else Path("runs") / exp.name)))
    model_out = Path(_abs(args.model_out or Path("models") / f"{exp.name}.pt"))
    metrics_out = Path(_abs(args.metrics_out or Path("metrics") / "train" / f"{exp.name}.json"))
    try:
        out = train_experiment(exp, params, data_dir=data_dir, storage=storage, state_dir=state_dir,
                               model_out=model_out, metrics_out=metrics_out, num_cpus=args.num_cpus,
                               fresh=args.fresh, samples=not args.no_samples, t_start=t_start,
                               resume_any_code=args.resume_any_code)
    except (FileNotFoundError, RayConnectError) as exc:
        print(f"cnf train {exp.name}: {exc}", file=sys.stderr)
        return 1
    print(f"[{exp.name}] done: {out['steps']} steps (resumed from {out['resumed_from_step']}), "
          f"train bpd {out['final_train_bpd']}, {out['samples_per_s']} samples/s, start-up {out['startup_s']} s, "
          f"wall {out['wall_s']} s -> {model_out}, {metrics_out}", flush=True)
    return 0
