"""The per-worker training loop run by Ray Train: build, (resume), step, log, checkpoint.

``train_loop_per_worker(config)`` runs on every Ray worker. ``config`` is a plain dict made by the driver
(``pipelines.stages.train``): ``experiment`` (``ExperimentParams.to_dict()``), ``data_dir`` (shards of the training
dataset), ``target`` (from ``pipelines.tasks``), ``mlflow_run_id`` and ``tracking_uri`` (rank 0 logs there),
``state_dir`` (a local folder for the test-only failure marker).

The pieces below it (``train_step``, ``NLLObjective``, ``batches``) are plain torch and are unit-tested outside
Ray; DDP gradient averaging is what makes N workers on N shards equal one worker on the union batch.
"""
from __future__ import annotations

import math
import os
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from pipelines.io import format_eta

LN2 = math.log(2.0)
STATE_FILE = "train_state.pt"  # optimizer, step, RNG, counters (inside each Ray checkpoint folder)
MODEL_FILE = "model.pt"  # flowlib checkpoint (save_checkpoint), loadable by flowlib.checkpoint.load_model


class NonFiniteError(RuntimeError):
    """Too many consecutive steps had a non-finite loss or gradient norm."""


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
               num_dims: int, grad_clip: float | None = None, amp_dtype: torch.dtype | None = None) -> StepResult:
    """One Adam step on the mean NLL; a non-finite loss or gradient norm on any rank skips the step everywhere.

    Backward always runs, even on a NaN loss, so every DDP rank joins the gradient all-reduce; whether to step
    is then agreed with an all-reduce of a finiteness flag, so ranks never diverge.
    """
    optimizer.zero_grad(set_to_none=True)
    if amp_dtype is not None:
        with torch.autocast(device_type=y.device.type, dtype=amp_dtype):
            nll = objective(y, x)
    else:
        nll = objective(y, x)
    loss = nll.float().mean()
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


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def lr_at(step: int, lr: float, warmup_steps: int) -> float:
    """Linear warm-up to ``lr`` over ``warmup_steps`` (Glow's schedule), constant after."""
    return lr * min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else lr


def _to_device(batch: dict, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    return batch["y"].to(device, non_blocking=True).float(), batch["x"].to(device, non_blocking=True).float()


def _atomic_torch_save(obj: Any, path: Path) -> None:
    from pipelines.io import atomic_write

    with atomic_write(path) as f:
        torch.save(obj, f)


def _wait_until_committed() -> None:
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


def train_loader(exp: Mapping, data_dir: str, *, rank: int = 0, world_size: int = 1, epoch: int = 0):
    """The endless training batches of rank ``rank`` of ``world_size`` for ``exp`` (``to_dict()`` form), from
    ``epoch`` on.

    The one place the experiment's data section becomes loader options; benchmarks/loader_throughput.py
    measures this same loader.
    """
    from pipelines.data.loader import loader_options, make_loader

    train = exp["train"]
    return make_loader(data_dir, exp["data"]["train_split"], exp["task"], batch_size=train["batch_size"] // world_size,
                       train=True, rank=rank, world_size=world_size, seed=train["seed"], epoch=epoch, endless=True,
                       **loader_options(exp["data"], train=True))


def train_loop_per_worker(config: dict) -> dict:
    """Ray Train entry point: one rank of the data-parallel fit of ``config["experiment"]``."""
    import ray.train
    import ray.train.torch

    from flowlib.checkpoint import save_checkpoint
    from flowlib.models import build_model
    exp = config["experiment"]
    train, data, scaling, model_cfg = exp["train"], exp["data"], exp["scaling"], dict(exp["model"])
    ctx = ray.train.get_context()
    rank, world_size = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    local_batch = train["batch_size"] // world_size
    total_steps = train["steps"]
    if config.get("tracking_uri"):
        os.environ["MLFLOW_TRACKING_URI"] = config["tracking_uri"]
    run_id = config.get("mlflow_run_id") if rank == 0 else None
    torch.set_num_threads(max(1, int(scaling.get("cpus_per_worker") or 1)))

    # --- resume state (Ray hands every rank the latest reported checkpoint after a restart or a rerun)
    checkpoint = ray.train.get_checkpoint()
    state = None
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=False)
    start_step = state["step"] if state else 0
    start_epoch = state["epoch"] + 1 if state else 0
    # Each rank gets its own stream, a pure function of (seed, rank, step), so a resumed run draws new crops.
    seed_everything(train["seed"] * 1_000_003 + rank * 7919 + start_step)
    if state and rank == 0 and state.get("rng") is not None:
        set_rng_state(state["rng"])

    stream = batches(train_loader(exp, config["data_dir"], rank=rank, world_size=world_size, epoch=start_epoch))
    epoch, first = next(stream)
    y0, x0 = _to_device(first, device)
    family = model_cfg.pop("family")
    model = build_model(family, config["target"], tuple(y0.shape[1:]), tuple(x0.shape[1:]), **model_cfg).to(device)
    num_dims = int(model.num_dims(y0))
    if state:
        model.load_state_dict(state["model"])
    else:
        # Data-dependent initialisation (ActNorm) on the bare model, before DDP broadcasts rank 0's parameters.
        with torch.no_grad():
            model.nll(y0, x0)
    objective = NLLObjective(model)
    if world_size > 1:
        objective = ray.train.torch.prepare_model(objective, move_to_device=False)
    optimizer = torch.optim.Adam(model.parameters(), lr=train["lr"], betas=tuple(train["betas"]))
    if state:
        optimizer.load_state_dict(state["optimizer"])
    amp_dtype = torch.bfloat16 if (scaling.get("mixed_precision") and device.type == "cuda") else None

    nonfinite_total = state["nonfinite_total"] if state else 0
    nonfinite_run = 0
    last: StepResult | None = None
    t_first = None
    first_step_unix = None
    t_window, n_window = time.perf_counter(), 0
    samples_done = 0
    fail_step = train.get("fail_at_step")
    marker = Path(config["state_dir"]) / "fail_at_step.done" if config.get("state_dir") else None

    def report(step: int, final: bool) -> None:
        """Barrier: every rank reports; rank 0 attaches the checkpoint (model, optimizer, step, RNG, counters).

        A non-final report then waits until the controller has committed it (see ``_wait_until_committed``), so
        a crash anywhere after this call resumes from ``step``: at most one checkpoint interval is lost.
        """
        elapsed = time.perf_counter() - (t_first or time.perf_counter())
        if last is not None:
            latest = {"train_nll": last.loss, "train_bpd": last.bpd,
                      "samples_per_s": samples_done * world_size / elapsed if elapsed > 0 else 0.0}
        else:
            # Nothing trained in this process (a rerun of a finished run): report what the run ended with.
            latest = (state or {}).get("latest") or {"train_nll": float("nan"), "train_bpd": float("nan"),
                                                     "samples_per_s": 0.0}
        metrics = {"step": step, "epoch": epoch, "resumed_from_step": start_step, **latest,
                   "nonfinite_skipped": nonfinite_total, "first_step_unix": first_step_unix or 0.0, "final": final}
        if rank != 0:
            ray.train.report(metrics)
            if not final:
                _wait_until_committed()
            return
        with tempfile.TemporaryDirectory() as tmp:
            bare = model
            save_checkpoint(Path(tmp) / MODEL_FILE, bare, step=step, experiment=exp["name"])
            _atomic_torch_save({"model": bare.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                                "epoch": epoch, "rng": rng_state(), "nonfinite_total": nonfinite_total,
                                "world_size": world_size, "latest": latest}, Path(tmp) / STATE_FILE)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        if not final:
            t_commit = time.perf_counter()
            _wait_until_committed()
            print(f"[{exp['name']}] checkpoint at step {step} committed "
                  f"({time.perf_counter() - t_commit:.2f} s)", flush=True)

    step = start_step
    batch = first
    while step < total_steps:
        if fail_step is not None and step == fail_step and rank == min(1, world_size - 1) and marker is not None \
                and not marker.exists():
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(f"rank {rank} exited at step {step}\n")
            print(f"[test] rank {rank}: simulated worker crash at step {step} (train.fail_at_step)", flush=True)
            os._exit(1)
        if t_first is None:
            t_first = time.perf_counter()
            first_step_unix = time.time()
        y, x = _to_device(batch, device)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, train["lr"], train["warmup_steps"])
        last = train_step(objective, optimizer, y, x, num_dims, train["grad_clip"], amp_dtype)
        step += 1
        samples_done += y.shape[0]
        n_window += y.shape[0]
        if last.finite:
            nonfinite_run = 0
        else:
            nonfinite_run += 1
            nonfinite_total += 1
            if nonfinite_run >= train["max_nonfinite"]:
                raise NonFiniteError(
                    f"{exp['name']}: {nonfinite_run} consecutive steps with a non-finite loss or gradient norm "
                    f"(last at step {step}, loss={last.loss}, grad_norm={last.grad_norm}); lower train.lr, "
                    f"set train.grad_clip, or raise train.max_nonfinite")
        if rank == 0 and (step % train["log_every"] == 0 or step == total_steps):
            now = time.perf_counter()
            rate = n_window * world_size / max(now - t_window, 1e-9)
            t_window, n_window = now, 0
            eta = (total_steps - step) * local_batch * world_size / max(rate, 1e-9)
            print(f"[{exp['name']}] step {step}/{total_steps} loss {last.loss:.4f} bpd {last.bpd:.4f} "
                  f"grad_norm {last.grad_norm:.3g} samples/s {rate:.1f} ETA {format_eta(eta)}"
                  f"{f' skipped {nonfinite_total}' if nonfinite_total else ''}", flush=True)
            if run_id:
                from pipelines import tracking

                tracking.log_metrics(run_id, {"train_nll": last.loss, "train_bpd": last.bpd,
                                              "lr": optimizer.param_groups[0]["lr"], "grad_norm": last.grad_norm,
                                              "samples_per_s": rate, "nonfinite_skipped": nonfinite_total,
                                              "nonfinite_consecutive": nonfinite_run}, step=step)
        if step < total_steps and step % train["checkpoint_every"] == 0:
            report(step, final=False)
        if step < total_steps:
            epoch, batch = next(stream)
    report(step, final=True)
    return {"step": step, "resumed_from_step": start_step}
