"""Training checkpoints: what one holds (``TrainState``), writing and reading it, and reporting it to Ray.

A checkpoint folder holds ``model.pt`` (a flowlib checkpoint, ``flowlib.checkpoint.load_model`` rebuilds the
model from it) and ``train_state.pt`` (weights, optimizer, step, epoch, RNG, counters, the latest train
metrics). ``Checkpointer.report`` is the barrier of every rank: each reports its metrics, rank 0 attaches the
folder, and a non-final report waits until the Ray Train controller has committed it, so a crash anywhere
after it resumes from that step.
"""
from __future__ import annotations

import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

STATE_FILE = "train_state.pt"  # optimizer, step, RNG, counters (inside each Ray checkpoint folder)
MODEL_FILE = "model.pt"  # flowlib checkpoint (save_checkpoint), loadable by flowlib.checkpoint.load_model
# With train.select: the checkpoint with the lowest held-out bits/dim so far (a flowlib checkpoint too, with its
# `step` and `select_bpd`); the driver exports it instead of MODEL_FILE.
BEST_FILE = "best_model.pt"


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


@dataclass
class TrainState:
    """Where a fit stands, besides the weights: ``step`` trained, ``epoch`` of the last batch, the non-finite
    steps skipped so far (``nonfinite_run``: consecutively, up to ``step``, so a restart does not reset the
    divergence limit), rank 0's RNG state, and ``latest`` train metrics (``train_nll``, ``train_bpd``,
    ``samples_per_s``) so a rerun of a finished run reports what it ended with."""

    step: int = 0
    epoch: int = 0
    nonfinite_total: int = 0
    nonfinite_run: int = 0
    rng: dict | None = None
    latest: dict | None = None
    model: dict | None = field(default=None, repr=False)  # state dicts, when read from a checkpoint
    optimizer: dict | None = field(default=None, repr=False)
    best: dict | None = None  # train.select: {"step", "bpd"} of the best checkpoint so far
    best_model: dict | None = field(default=None, repr=False)  # and its state dict


STATE_KEYS = ("model", "optimizer", "step", "epoch")  # what every train_state.pt holds


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable or lacks what it must hold; the message names the file."""


def read_state(folder: str | Path) -> TrainState:
    """The ``TrainState`` (with model and optimizer state dicts) in checkpoint folder ``folder``.

    A missing, truncated or foreign ``train_state.pt`` raises ``CheckpointError`` naming the file.
    """
    path = Path(folder) / STATE_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: no train state in this checkpoint folder (expected {STATE_FILE} beside "
                              f"{MODEL_FILE}, written by Checkpointer.write)")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises RuntimeError, EOFError, UnpicklingError... for a damaged file
        raise CheckpointError(f"{path}: not a readable train state ({type(exc).__name__}: {exc}); expected a "
                              f"torch file written by Checkpointer.write ({path.stat().st_size} bytes: truncated "
                              "or overwritten?)") from exc
    missing = [k for k in STATE_KEYS if not isinstance(raw, dict) or k not in raw]
    if missing:
        raise CheckpointError(f"{path}: not a train state: lacks {', '.join(missing)} (expected a dict with "
                              f"{', '.join(STATE_KEYS)}, written by Checkpointer.write)")
    best, best_model = raw.get("best"), None
    if best:
        best_path = Path(folder) / BEST_FILE
        try:
            best_model = torch.load(best_path, map_location="cpu", weights_only=False)["state_dict"]
        except Exception as exc:  # noqa: BLE001 - missing, truncated or foreign: say which file
            raise CheckpointError(f"{best_path}: the train state records a best checkpoint (step {best.get('step')}) "
                                  f"but its weights do not read ({type(exc).__name__}: {exc})") from exc
    return TrainState(step=raw["step"], epoch=raw["epoch"], nonfinite_total=raw.get("nonfinite_total", 0),
                      nonfinite_run=raw.get("nonfinite_run", 0), rng=raw.get("rng"), latest=raw.get("latest"),
                      model=raw["model"], optimizer=raw["optimizer"], best=best, best_model=best_model)


def latest_state() -> TrainState | None:
    """The state of the checkpoint Ray hands this worker (after a restart or a rerun), None on a fresh start."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        return read_state(folder)


def _ray_report(metrics: dict, folder: str | None) -> None:
    import ray.train

    checkpoint = ray.train.Checkpoint.from_directory(folder) if folder else None
    ray.train.report(metrics, checkpoint=checkpoint)


def wait_until_committed() -> None:
    """Block until the Ray Train controller has registered this rank's latest ``ray.train.report``.

    In Train V2 a report only reaches the worker's one-slot result queue; the controller drains the queues when
    it polls (every ``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S``, 2 s by default) and registers a checkpoint once it
    holds the report of *every* rank. A rank that dies before that poll takes its queued report with it, the
    checkpoint that rank 0 already persisted is never registered, and ``FailureConfig`` restarts the group from
    the checkpoint before (or from scratch). Waiting here turns the report into a commit; it costs at most one
    poll interval per checkpoint.
    """
    import ray.train

    wait = getattr(ray.train, "get_all_reported_checkpoints", None)
    if wait is None:  # Train V1 (RAY_TRAIN_V2_ENABLED=0): reports are handled synchronously by the session
        return
    wait(consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED)


class Checkpointer:
    """Saves and restores one rank's ``model`` and ``optimizer``, and reports checkpoints to Ray.

    ``report(metrics, folder_or_None)`` and ``commit()`` default to Ray Train's (``ray.train.report`` and
    ``wait_until_committed``); tests pass their own.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, *, experiment: str, rank: int = 0,
                 world_size: int = 1, report: Callable[[dict, str | None], None] = _ray_report,
                 commit: Callable[[], None] = wait_until_committed):
        self.model, self.optimizer = model, optimizer
        self.experiment, self.rank, self.world_size = experiment, rank, world_size
        self._report, self._commit = report, commit

    def write(self, folder: str | Path, state: TrainState) -> None:
        """Write ``model.pt`` and ``train_state.pt`` (with this process's RNG state) into ``folder``."""
        from flowlib.checkpoint import save_checkpoint
        from pipelines.io import atomic_write

        folder = Path(folder)
        save_checkpoint(folder / MODEL_FILE, self.model, step=state.step, experiment=self.experiment)
        if state.best is not None and state.best_model is not None:
            import copy

            best = copy.deepcopy(self.model)
            best.load_state_dict(state.best_model)
            save_checkpoint(folder / BEST_FILE, best, step=state.best["step"], select_bpd=state.best["bpd"],
                            experiment=self.experiment)
        payload = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "step": state.step,
                   "epoch": state.epoch, "rng": rng_state(), "nonfinite_total": state.nonfinite_total,
                   "nonfinite_run": state.nonfinite_run,
                   "world_size": self.world_size, "latest": state.latest, "best": state.best}
        with atomic_write(folder / STATE_FILE) as f:
            torch.save(payload, f)

    def restore(self, state: TrainState) -> None:
        """Load ``state``'s weights and optimizer state (as read by ``read_state``) into this rank's objects."""
        if state.model is None or state.optimizer is None:
            raise ValueError(f"{self.experiment}: the train state of step {state.step} holds no weights or "
                             "optimizer state (read it with read_state)")
        try:
            self.model.load_state_dict(state.model)
            self.optimizer.load_state_dict(state.optimizer)
        except (RuntimeError, ValueError, KeyError) as exc:
            raise CheckpointError(f"{self.experiment}: the checkpoint of step {state.step} does not fit the model "
                                  f"this job builds ({type(exc).__name__}: {exc})") from exc

    def report(self, metrics: dict, state: TrainState, *, final: bool) -> None:
        """Every rank reports ``metrics``; rank 0 attaches a checkpoint of ``state``. A non-final report then
        waits until it is committed, so at most one checkpoint interval is lost to a crash."""
        if self.rank != 0:
            self._report(metrics, None)
            if not final:
                self._commit()
            return
        with tempfile.TemporaryDirectory() as tmp:
            self.write(tmp, state)
            self._report(metrics, tmp)
        if not final:
            t_commit = time.perf_counter()
            self._commit()
            print(f"[{self.experiment}] checkpoint at step {state.step} committed "
                  f"({time.perf_counter() - t_commit:.2f} s)", flush=True)

