"""The per-worker training loop run by Ray Train, and the plain pieces it is made of.

``train_loop_per_worker({"job": TrainJob})`` runs on every Ray worker: resume (or seed), build the model on the
first batch, then step, log and checkpoint until ``train.steps``. The ``TrainJob`` is built once by the driver
(``pipelines.training.driver``): the typed ``ExperimentParams``, the model options as built, the dataset's
manifest (read once, by the driver) and where to log.

The pieces (``train_step``, ``NLLObjective``, ``batches``, ``lr_at``, ``TrainMeter``, ``train_loader``, and
``pipelines.training.checkpointing.Checkpointer``) are plain torch and are unit-tested outside Ray; DDP gradient
averaging is what makes N workers on N shards equal one worker on the union batch.
"""
from __future__ import annotations

import math
import os
import random
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from pipelines.io import format_eta
from pipelines.training.checkpointing import Checkpointer, TrainState, latest_state, set_rng_state

if TYPE_CHECKING:
    from pipelines.params import ExperimentParams
    from pipelines.training.faults import CrashOnce

LN2 = math.log(2.0)


class FatalTrainingError(RuntimeError):
    """An error that restarting the workers from the last checkpoint cannot fix: a diverged fit, a config error.

    Ray Train 2.60's ``FailureConfig`` retries every worker error (``DefaultFailurePolicy`` treats each
    ``WorkerGroupError`` as retryable), and a retry of these only repeats them (a divergence even "finishes":
    the restored counter starts at 0). So the loop does not raise them: every rank returns ``{FATAL_KEY:
    message}`` from ``train_loop_per_worker``, Ray ends the run without a retry and without a new checkpoint,
    and the driver raises ``raise_if_fatal(result)`` (rank 0's return value is ``Result.return_value``).
    """


class NonFiniteError(FatalTrainingError):
    """Too many consecutive steps had a non-finite loss or gradient norm: the fit diverged."""


class WorkerConfigError(FatalTrainingError):
    """The job cannot be set up on a worker (model options, loader options): a config error."""


FATAL_KEY = "fatal_error"  # in the return value of train_loop_per_worker
# Setup errors that a restart cannot fix: the model or the loader refusing the job's options.
CONFIG_ERRORS = (ValueError, TypeError, KeyError)


class NLLObjective(nn.Module):
    """Wraps a StructuredModel so that ``forward(y, x) = model.nll(y, x)``; DDP only synchronises ``forward``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.model.nll(y, x)


@dataclass
class StepResult:
    loss: float  # mean nll over this rank's batch, nats per sample
    bpd: float  # loss / (D ln 2)
    grad_norm: float  # global (all-reduced under DDP) gradient norm before clipping
    finite: bool  # False: the optimizer step was skipped


def train_step(objective: nn.Module, optimizer: torch.optim.Optimizer, y: torch.Tensor, x: torch.Tensor,
               num_dims: int, grad_clip: float | None = None) -> StepResult:
    """One Adam step on the mean NLL; a non-finite loss or gradient norm on any rank skips the step everywhere.

    Backward always runs, even on a NaN loss, so every DDP rank joins the gradient all-reduce; whether to step
    is then agreed with an all-reduce of a finiteness flag, so ranks never diverge.
    """
    optimizer.zero_grad(set_to_none=True)
    loss = objective(y, x).float().mean()
    loss.backward()
    params = [p for p in objective.parameters() if p.grad is not None]
    max_norm = grad_clip if grad_clip is not None else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm) if params else torch.zeros(())
    ok = torch.tensor([float(torch.isfinite(loss).item() and torch.isfinite(grad_norm).item())], device=y.device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    finite = bool(ok.item() > 0)
    if finite:
        optimizer.step()
    else:
        optimizer.zero_grad(set_to_none=True)
    value = float(loss.detach())
    return StepResult(loss=value, bpd=value / (num_dims * LN2), grad_norm=float(grad_norm), finite=finite)


def batches(loader: Iterable[dict]) -> Iterator[tuple[int, dict]]:
    """``(epoch, batch)`` from an endless training loader (``make_loader(..., endless=True)``)."""
    for batch in loader:
        yield max(batch["epoch"]), batch
    raise RuntimeError("the training loader ran out of batches (an endless one never does): is the split "
                       "empty for this rank (no batch)?")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def lr_at(step: int, lr: float, warmup_steps: int, steps: int | None = None, schedule: str = "constant") -> float:
    r"""The learning rate of (0-based) ``step``: a linear warm-up to ``lr`` over ``warmup_steps`` (Glow's), then
    ``schedule``: ``"constant"``, or ``"cosine"`` down to 0 at ``steps`` (Loshchilov & Hutter 2017),

    .. math:: \eta_t = \frac{\eta}{2}\left(1 + \cos \pi \frac{t - t_w}{T - t_w}\right), \quad t_w \le t < T.

    A pure function of the step, so a resumed run continues the same schedule.
    """
    if schedule not in ("constant", "cosine"):
        raise ValueError(f"lr_at: schedule must be 'constant' or 'cosine', got {schedule!r}")
    if schedule == "cosine" and (steps is None or steps <= warmup_steps):
        raise ValueError(f"lr_at: the cosine schedule needs steps > warmup_steps, got steps={steps}, "
                         f"warmup_steps={warmup_steps}")
    if warmup_steps > 0 and step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return lr
    progress = min(1.0, (step - warmup_steps) / (steps - warmup_steps))
    return 0.5 * lr * (1.0 + math.cos(math.pi * progress))


def _to_device(batch: dict, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    return batch["y"].to(device, non_blocking=True).float(), batch["x"].to(device, non_blocking=True).float()


def train_loader(exp: "ExperimentParams", data_dir: str, *, rank: int = 0, world_size: int = 1, epoch: int = 0,
                 manifest: Mapping | None = None):
    """The endless training batches of rank ``rank`` of ``world_size`` for ``exp``, from ``epoch`` on.

    The one place an experiment becomes its training loader; benchmarks/loader_throughput.py measures this same
    loader. ``manifest``: the dataset's manifest when already read (else the loader reads it).
    """
    from pipelines.data.loader import loader_options, make_loader

    return make_loader(data_dir, exp.data.train_split, exp.task, batch_size=exp.train.batch_size // world_size,
                       train=True, rank=rank, world_size=world_size, seed=exp.train.seed, epoch=epoch, endless=True,
                       manifest=manifest, holdout=exp.data.holdout, **loader_options(exp.data, train=True))


def holdout_loader(exp: "ExperimentParams", data_dir: str, manifest: Mapping | None = None):
    """The ``data.holdout`` samples of the training split, in order, prepared as for evaluation."""
    from pipelines.data.loader import loader_options, make_loader

    return make_loader(data_dir, exp.data.train_split, exp.task, batch_size=exp.train.batch_size, train=False,
                       seed=exp.train.seed, manifest=manifest, holdout=exp.data.holdout, held_out=True,
                       **loader_options(exp.data, train=False))


class Selector:
    """Model selection on held-out samples (``train.select``): their bits/dim at each checkpoint, the best kept.

    ``score`` is the mean over the held-out samples of ``-log p(y|x) / (D ln 2)``, with the same dequantization
    noise at every call (a fixed seed, the training RNG untouched), so checkpoints are compared on equal terms.
    ``best`` is ``{"step", "bpd"}`` of the lowest so far (ties: the earliest) and ``state`` its weights (CPU).
    """

    def __init__(self, loader, best: Mapping | None = None, state: Mapping | None = None):
        self.batches = list(loader)
        self.best = dict(best) if best else None
        self.state = state

    def score(self, model: nn.Module) -> float:
        total, count = 0.0, 0
        with torch.random.fork_rng(), torch.no_grad():
            torch.manual_seed(0)
            device = next(model.parameters()).device
            for batch in self.batches:
                y, x = _to_device(batch, device)
                ll = model.log_likelihood(y, x)
                total += float((-ll / (int(model.num_dims(y)) * LN2)).sum())
                count += y.shape[0]
        return total / count

    def update(self, model: nn.Module, step: int) -> float:
        """Score ``model`` at ``step``; keep it when it is the best so far. Returns the score."""
        bpd = self.score(model)
        if math.isfinite(bpd) and (self.best is None or bpd < self.best["bpd"]):
            self.best = {"step": step, "bpd": bpd}
            self.state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        return bpd


class TrainMeter:
    """What this rank has trained: throughput (overall, and per window between log lines) and non-finite steps.

    ``update`` raises ``NonFiniteError`` after ``max_nonfinite`` consecutive skipped steps; ``nonfinite_run``
    (the skipped steps just before a resumed checkpoint) continues a run of them across a restart.
    """

    def __init__(self, name: str, *, world_size: int = 1, max_nonfinite: int = 20, nonfinite_total: int = 0,
                 nonfinite_run: int = 0):
        self.name, self.world_size, self.max_nonfinite = name, world_size, max_nonfinite
        self.nonfinite_total, self.nonfinite_run = nonfinite_total, nonfinite_run
        self.last: StepResult | None = None
        self.samples = 0
        self.t_first: float | None = None
        self.first_step_unix: float | None = None
        self._t_window, self._n_window = time.perf_counter(), 0

    def start(self) -> None:
        """Mark the first training step of this process (start-up ends here)."""
        if self.t_first is None:
            self.t_first = time.perf_counter()
            self.first_step_unix = time.time()

    def update(self, result: StepResult, samples: int, step: int) -> None:
        """Count one step of ``samples`` (this rank's batch) that ended at ``step``."""
        self.last = result
        self.samples += samples
        self._n_window += samples
        if result.finite:
            self.nonfinite_run = 0
            return
        self.nonfinite_run += 1
        self.nonfinite_total += 1
        if self.nonfinite_run >= self.max_nonfinite:
            first = step - self.nonfinite_run + 1
            raise NonFiniteError(
                f"{self.name}: training diverged at step {first}: {self.nonfinite_run} consecutive steps with a "
                f"non-finite loss or gradient norm (steps {first}-{step}; last at step {step}, loss={result.loss}, "
                f"grad_norm={result.grad_norm}); lower train.lr, set train.grad_clip, or raise train.max_nonfinite")

    def window_rate(self) -> float:
        """Global samples/s since the previous call (or the meter's creation); starts the next window."""
        now = time.perf_counter()
        rate = self._n_window * self.world_size / max(now - self._t_window, 1e-9)
        self._t_window, self._n_window = now, 0
        return rate

    def latest(self, stored: Mapping | None = None) -> dict:
        """``train_nll``, ``train_bpd``, ``samples_per_s`` (global, since the first step) of the last step;
        ``stored`` (what the run ended with) when this process trained nothing, e.g. a rerun of a finished run."""
        if self.last is None:
            return dict(stored or {"train_nll": float("nan"), "train_bpd": float("nan"), "samples_per_s": 0.0})
        elapsed = time.perf_counter() - (self.t_first or time.perf_counter())
        return {"train_nll": self.last.loss, "train_bpd": self.last.bpd,
                "samples_per_s": self.samples * self.world_size / elapsed if elapsed > 0 else 0.0}


@dataclass(frozen=True)
class TrainJob:
    """Everything a worker needs, built once by the driver and pickled to every Ray worker.

    ``model_options``: the ``build_model`` options (``experiment.model``'s, with the task's ``num_classes``);
    ``manifest``: the training dataset's ``manifest.json``; ``mlflow_run_id``/``tracking_uri``: where rank 0
    logs; ``crash``: test-only fault injection (``pipelines.training.faults``), None in production.
    """

    experiment: "ExperimentParams"
    target: str
    model_options: Mapping[str, Any]
    data_dir: str
    manifest: Mapping[str, Any] = field(default_factory=dict)
    mlflow_run_id: str | None = None
    tracking_uri: str | None = None
    crash: "CrashOnce | None" = None


def build_for_batch(job: TrainJob, y: torch.Tensor, x: torch.Tensor, *, initialise: bool = True) -> nn.Module:
    """The job's model for batches shaped like ``(y, x)``, on their device; ``initialise`` runs the
    data-dependent initialisation (ActNorm) on that batch, as a fresh fit must before DDP broadcasts rank 0's
    parameters (a resumed one loads them instead)."""
    from flowlib.models import build_model

    model = build_model(job.experiment.model.family, job.target, tuple(y.shape[1:]), tuple(x.shape[1:]),
                        **job.model_options).to(y.device)
    if initialise:
        with torch.no_grad():
            model.nll(y, x)  # ActNorm's data-dependent initialisation, in full precision
    return job.experiment.scaling.configure(model)


def last_logged_step(run_id: str, key: str = "train_nll") -> int:
    """The last step of ``key`` in MLflow run ``run_id`` (0 when none), from ``$MLFLOW_TRACKING_URI``."""
    from mlflow import MlflowClient

    return max((m.step for m in MlflowClient().get_metric_history(run_id, key)), default=0)


def _log_step(job: TrainJob, meter: TrainMeter, step: int, lr: float, logged_until: int = 0) -> None:
    """Rank 0's progress line and MLflow metrics at ``step``; MLflow only past ``logged_until``.

    A resumed fit replays the steps between its checkpoint and the crash, which the crashed attempt already
    logged; MLflow cannot delete metric rows, so they are not logged again (curves stay single-valued).
    """
    exp, last = job.experiment, meter.last
    rate = meter.window_rate()
    eta = (exp.train.steps - step) * exp.train.batch_size / max(rate, 1e-9)
    skipped = f" skipped {meter.nonfinite_total}" if meter.nonfinite_total else ""
    print(f"[{exp.name}] step {step}/{exp.train.steps} loss {last.loss:.4f} bpd {last.bpd:.4f} "
          f"grad_norm {last.grad_norm:.3g} samples/s {rate:.1f} ETA {format_eta(eta)}{skipped}", flush=True)
    if job.mlflow_run_id and step > logged_until:
        from pipelines import tracking

        tracking.log_metrics(job.mlflow_run_id, {
            "train_nll": last.loss, "train_bpd": last.bpd, "lr": lr, "grad_norm": last.grad_norm,
            "samples_per_s": rate, "nonfinite_skipped": meter.nonfinite_total,
            "nonfinite_consecutive": meter.nonfinite_run}, step=step)


def _select(job: TrainJob, selector: "Selector | None", model: nn.Module, step: int) -> None:
    """Rank 0 with ``train.select``: score the held-out samples at ``step``, keep the best, log ``select_bpd``."""
    if selector is None:
        return
    bpd = selector.update(model, step)
    print(f"[{job.experiment.name}] step {step}: held-out bpd {bpd:.4f} (best {selector.best['bpd']:.4f} at step "
          f"{selector.best['step']})", flush=True)
    if job.mlflow_run_id:
        from pipelines import tracking

        tracking.log_metrics(job.mlflow_run_id, {"select_bpd": bpd}, step=step)


def _report(checkpointer: Checkpointer, meter: TrainMeter, start: TrainState, step: int, epoch: int, *,
            final: bool, selector: "Selector | None" = None) -> None:
    """The metrics every rank reports at ``step`` and the checkpoint rank 0 attaches (``Checkpointer.report``)."""
    latest = meter.latest(start.latest)
    metrics = {"step": step, "epoch": epoch, "resumed_from_step": start.step, **latest,
               "nonfinite_skipped": meter.nonfinite_total, "first_step_unix": meter.first_step_unix or 0.0,
               "final": final}
    best = selector.best if selector is not None else start.best
    if best:
        metrics.update(selected_step=best["step"], select_bpd=best["bpd"])
    state = TrainState(step=step, epoch=epoch, nonfinite_total=meter.nonfinite_total,
                       nonfinite_run=meter.nonfinite_run, latest=latest, best=best,
                       best_model=selector.state if selector is not None else start.best_model)
    checkpointer.report(metrics, state, final=final)


def agree_on_error(error: str | None, world_size: int) -> str | None:
    """The first rank's error message (None when every rank has none), the same on every rank.

    A rank that stops alone would leave the others waiting in a collective; with the error agreed, every rank
    stops the same way. One ``all_gather_object`` under DDP; nothing to agree on with one rank.
    """
    if world_size == 1 or not (dist.is_available() and dist.is_initialized()):
        return error
    errors: list = [None] * world_size
    dist.all_gather_object(errors, error)
    return next((e for e in errors if e), None)


def fatal_result(exc: FatalTrainingError, step: int) -> dict:
    """What ``train_loop_per_worker`` returns instead of raising ``exc`` at ``step`` (see ``FatalTrainingError``)."""
    return {FATAL_KEY: str(exc), "error_type": type(exc).__name__, "step": step}


def raise_if_fatal(result, experiment: str):
    """``result`` (Ray's ``Result``) unchanged, or the ``FatalTrainingError`` its workers returned."""
    value = getattr(result, "return_value", None)
    if isinstance(value, Mapping) and value.get(FATAL_KEY):
        cls = {c.__name__: c for c in (NonFiniteError, WorkerConfigError)}.get(value.get("error_type"),
                                                                              FatalTrainingError)
        raise cls(f"{value[FATAL_KEY]} (not retried: a restart from the last checkpoint cannot fix it; the last "
                  f"good checkpoint stays in the run folder, no model was exported)")
    return result


def _set_up(job: TrainJob, state: TrainState | None, rank: int, world_size: int, device: torch.device):
    """The batch stream, first batch and model of this rank; the job's config errors as ``WorkerConfigError``,
    agreed by every rank."""
    import ray.train.torch

    exp = job.experiment
    error, out = None, None
    try:
        stream = batches(train_loader(exp, job.data_dir, rank=rank, world_size=world_size,
                                      epoch=state.epoch + 1 if state else 0, manifest=job.manifest))
        epoch, batch = next(stream)
        y0, x0 = _to_device(batch, device)
        model = build_for_batch(job, y0, x0, initialise=state is None).to(device)
        out = stream, epoch, batch, model, int(model.num_dims(y0))
    except CONFIG_ERRORS as exc:
        error = f"{exp.name}: rank {rank} cannot set up the job ({type(exc).__name__}: {exc})"
    error = agree_on_error(error, world_size)
    if error:
        raise WorkerConfigError(error)
    stream, epoch, batch, model, num_dims = out
    objective = NLLObjective(model)
    if world_size > 1:
        objective = ray.train.torch.prepare_model(objective, move_to_device=False)
    if exp.scaling.compile:
        from flowlib import compile_model

        objective = compile_model(objective)  # parameters and state_dict stay the model's; eager on failure
    return stream, epoch, batch, model, objective, num_dims


def train_loop_per_worker(config: dict) -> dict:
    """Ray Train entry point: one rank of the data-parallel fit of ``config["job"]`` (a ``TrainJob``).

    Returns ``{"step", "resumed_from_step"}``, or ``fatal_result`` for a ``FatalTrainingError`` (not retried).
    """
    import ray.train
    import ray.train.torch

    job: TrainJob = config["job"]
    exp, train = job.experiment, job.experiment.train
    ctx = ray.train.get_context()
    rank, world_size = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    if job.tracking_uri:
        os.environ["MLFLOW_TRACKING_URI"] = job.tracking_uri
    torch.set_num_threads(max(1, int(exp.scaling.cpus_per_worker)))

    # Ray hands every rank the latest committed checkpoint after a restart or a rerun.
    state = latest_state()
    start = state or TrainState()
    # Each rank gets its own stream, a pure function of (seed, rank, step), so a resumed run draws new crops.
    seed_everything(train.seed * 1_000_003 + rank * 7919 + start.step)
    if state and rank == 0 and state.rng is not None:
        set_rng_state(state.rng)
    # What an earlier attempt of this run already logged (a crash after the checkpoint replays those steps).
    logged_until = last_logged_step(job.mlflow_run_id) if (rank == 0 and job.mlflow_run_id and state) else 0

    step = start.step
    try:
        stream, epoch, batch, model, objective, num_dims = _set_up(job, state, rank, world_size, device)
        optimizer = torch.optim.Adam(model.parameters(), lr=train.lr, betas=tuple(train.betas))
        checkpointer = Checkpointer(model, optimizer, experiment=exp.name, rank=rank, world_size=world_size)
        if state:
            checkpointer.restore(state)
        meter = TrainMeter(exp.name, world_size=world_size, max_nonfinite=train.max_nonfinite,
                           nonfinite_total=start.nonfinite_total, nonfinite_run=start.nonfinite_run)
        selector = (Selector(holdout_loader(exp, job.data_dir, job.manifest), start.best, start.best_model)
                    if train.select and rank == 0 else None)

        while step < train.steps:
            if job.crash is not None:
                job.crash.maybe_crash(step, rank, world_size)
            meter.start()
            y, x = _to_device(batch, device)
            lr = lr_at(step, train.lr, train.warmup_steps, train.steps, train.lr_schedule)
            for group in optimizer.param_groups:
                group["lr"] = lr
            result = train_step(objective, optimizer, y, x, num_dims, train.grad_clip)
            step += 1
            meter.update(result, y.shape[0], step)  # the finiteness is agreed, so every rank raises alike
            if rank == 0 and (step % train.log_every == 0 or step == train.steps):
                _log_step(job, meter, step, lr, logged_until)
            if step < train.steps and step % train.checkpoint_every == 0:
                _select(job, selector, model, step)
                _report(checkpointer, meter, start, step, epoch, final=False, selector=selector)
            if step < train.steps:
                epoch, batch = next(stream)
    except FatalTrainingError as exc:
        if rank == 0:
            print(f"[{exp.name}] {exc}", flush=True)
        return fatal_result(exc, step)
    if selector is not None and (selector.best is None or selector.best["step"] != step):
        _select(job, selector, model, step)
    _report(checkpointer, meter, start, step, epoch, final=True, selector=selector)
    return {"step": step, "resumed_from_step": start.step}
