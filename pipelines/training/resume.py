"""Whether a stored training run may be resumed, and discarding it when not.

A run lives in ``<storage>/<experiment>/`` (Ray's checkpoints) and ``<state-dir>/`` (``mlflow_run_id``,
``config_sha256``). Resuming is only sound for the model, data, optimiser and code that produced the stored
checkpoints: more steps may continue a finished run, but a changed config (a DVC rerun after editing
params.yaml), dataset or training code must start over, or the stage would report a model that the current
code and data never produced. Three fingerprints decide it:

- ``config_fingerprint``: the experiment without what cannot change the checkpoints (evaluation, sweep,
  scaling, labels, the step counts and logging intervals of ``train``, the loader's cache size), plus the data
  fingerprint;
- ``data_fingerprint``: the manifest's dataset and splits (every shard's sha256 and count), not where the
  release was fetched from;
- ``code_fingerprint``: the ``*.py`` files of ``TRAINING_CODE``.

A stored run that has trained more steps than ``train.steps`` asks for is not the requested run either (its
model has more steps than params.yaml and dvc.lock say): it starts fresh. What Ray has committed is read from
its checkpoint manager snapshot (``stored_checkpoints``); checkpoint folders it never committed (a crash or a
full disk mid-copy) are removed before a resume (``remove_incomplete_checkpoints``). ``hold_run`` keeps a
second ``cnf train`` of the same run out while one trains.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

from pipelines.io import write_text

RUN_ID_FILE = "mlflow_run_id"
SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"  # Ray Train V2's record of the checkpoints it committed
CHECKPOINT_PREFIX = "checkpoint_"  # Ray's checkpoint folders in <storage>/<experiment>
FINGERPRINT_FILE = "config_sha256"  # what the checkpoints in <storage>/<experiment> were trained with
# The code that decides what a checkpoint holds: the models, the training batches (loader, tasks and the data
# modules they read with) and the loop that steps and checkpoints; not logging, not the driver. Packages, so a
# module added there is covered. A change here makes a stored run stale, like a changed config or dataset.
TRAINING_CODE = ("flowlib", "pipelines/data", "pipelines/tasks", "pipelines/training/worker.py",
                 "pipelines/training/checkpointing.py")
# Experiment sections and train keys that do not change what the checkpoints hold.
NOT_IN_CHECKPOINT = ("eval", "sweep", "scaling", "description", "table")
TRAIN_NOT_IN_CHECKPOINT = ("steps", "checkpoint_every", "log_every", "max_nonfinite")
DATA_NOT_IN_CHECKPOINT = ("cache_mb",)  # the loader's decoded-sample cache: same batches with or without


def _sha256_json(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def code_fingerprint(root: Path | None = None, paths: tuple[str, ...] = TRAINING_CODE) -> str:
    """sha256 over the ``*.py`` files of ``paths`` (files or packages, relative to ``root``), names included.

    ``root`` defaults to the folder holding the installed ``flowlib`` and ``pipelines`` packages. A listed path
    that does not exist raises ``FileNotFoundError``: skipping it would let a move go unnoticed.
    """
    root = Path(root) if root is not None else Path(__file__).resolve().parents[2]
    digest = hashlib.sha256()
    for rel in paths:
        base = root / rel
        if not base.exists():
            raise FileNotFoundError(f"code_fingerprint: {base} does not exist (TRAINING_CODE in {__name__})")
        files = [base] if base.is_file() else sorted(base.rglob("*.py"))
        for path in files:
            digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def data_fingerprint(manifest: Mapping[str, Any]) -> str:
    """sha256 of what the shards hold: the manifest's ``dataset`` and ``splits`` (shard hashes and counts).

    The same archive fetched from another path or bucket is the same data.
    """
    return _sha256_json({"dataset": manifest.get("dataset"), "splits": manifest.get("splits")})


def config_fingerprint(experiment: Mapping[str, Any], data_sha: str) -> str:
    """sha256 of the parts of ``experiment`` (``ExperimentParams.to_dict()`` form, ``model`` as built) that
    shape the checkpoints, with the data fingerprint ``data_sha``."""
    key = {k: v for k, v in experiment.items() if k not in NOT_IN_CHECKPOINT}
    train = experiment["train"]
    # train.steps extends a run, except under a decaying schedule, whose rate at every step depends on it
    # (a cosine run resumed with more steps would jump back up from its decayed rate).
    kept = ("steps",) if train.get("lr_schedule", "constant") != "constant" else ()
    key["train"] = {k: v for k, v in train.items() if k not in TRAIN_NOT_IN_CHECKPOINT or k in kept}
    key["data"] = {**{k: v for k, v in experiment["data"].items() if k not in DATA_NOT_IN_CHECKPOINT},
                   "content_sha256": data_sha}
    return _sha256_json(key)


@dataclass(frozen=True)
class Fingerprints:
    """What a run was trained with: ``config`` (config and data) and ``code``."""

    config: str
    code: str

    @classmethod
    def read(cls, state_dir: Path) -> "Fingerprints | None":
        """The fingerprints stored in ``state_dir``; None when there are none (a first run). A file of an older
        format (config line only) reads with an empty ``code``, which matches no code."""
        try:
            lines = (Path(state_dir) / FINGERPRINT_FILE).read_text().split()
        except FileNotFoundError:
            return None
        return cls(config=lines[0] if lines else "", code=lines[1] if len(lines) > 1 else "")

    def write(self, state_dir: Path) -> None:
        write_text(Path(state_dir) / FINGERPRINT_FILE, f"{self.config}\n{self.code}\n")


@dataclass(frozen=True)
class ResumeDecision:
    """``fresh``: discard the stored run first; ``reason``: why, for the log (None when nothing to say)."""

    fresh: bool
    reason: str | None = None


def decide_resume(stored: Fingerprints | None, current: Fingerprints, *, fresh: bool = False,
                  resume_any_code: bool = False, stored_step: int | None = None,
                  steps: int | None = None) -> ResumeDecision:
    """Resume the stored run only when it was trained with ``current``'s config, data and (unless
    ``resume_any_code``) code, for at most ``steps`` steps (``stored_step``: its latest committed checkpoint's);
    ``fresh`` always starts over. Nothing stored: nothing to discard."""
    if fresh:
        return ResumeDecision(True)
    if stored is None:
        return ResumeDecision(False)
    if stored.config != current.config:
        return ResumeDecision(True, "configuration or dataset changed since the stored run: starting fresh")
    if stored.code != current.code and not resume_any_code:
        return ResumeDecision(True, f"training code ({', '.join(TRAINING_CODE)}) changed since the stored run: "
                                    "starting fresh (--resume-any-code continues it instead)")
    if stored_step is not None and steps is not None and stored_step > steps:
        return ResumeDecision(True, f"the stored run has trained {stored_step} steps, more than train.steps={steps}: "
                                    f"starting fresh (its model is not a {steps}-step model)")
    return ResumeDecision(False)


@dataclass(frozen=True)
class StoredCheckpoints:
    """What Ray has committed in a run folder: the checkpoint folder names and the latest one's ``step``
    (None when nothing was committed)."""

    committed: tuple[str, ...] = ()
    latest_step: int | None = None


def _snapshot(run_dir: str) -> dict | None:
    from pipelines.data import storage

    uri = storage.join(run_dir, SNAPSHOT_FILE)
    if not storage.exists(uri):
        return None
    try:
        snapshot = json.loads(storage.get_bytes(uri))
    except ValueError as exc:
        raise ValueError(f"{uri}: not Ray Train's checkpoint snapshot (not JSON: {exc}); "
                         "cnf train --fresh discards the stored run") from None
    if not isinstance(snapshot, dict):
        raise ValueError(f"{uri}: not Ray Train's checkpoint snapshot (expected a JSON object); "
                         "cnf train --fresh discards the stored run")
    return snapshot


def stored_checkpoints(run_dir: str) -> StoredCheckpoints:
    """The checkpoints Ray committed in ``run_dir`` (local or ``s3://``), from its checkpoint manager snapshot."""
    snapshot = _snapshot(run_dir)
    if snapshot is None:
        return StoredCheckpoints()
    names = tuple(r.get("checkpoint_dir_name") for r in snapshot.get("checkpoint_results") or ()
                  if isinstance(r, dict) and r.get("checkpoint_dir_name"))
    latest = snapshot.get("latest_checkpoint_result") or {}
    step = (latest.get("metrics") or {}).get("step") if isinstance(latest, dict) else None
    return StoredCheckpoints(committed=names, latest_step=int(step) if isinstance(step, (int, float)) else None)


def remove_incomplete_checkpoints(run_dir: str) -> list[str]:
    """Delete the checkpoint folders of ``run_dir`` that Ray never committed; returns their names.

    Such a folder is what a crash, a kill or a full disk leaves while a checkpoint is being copied in (often
    empty): Ray never resumes from it and never deletes it. Call only while no fit uses ``run_dir``
    (``hold_run``).
    """
    from pipelines.data import storage

    committed = set(stored_checkpoints(run_dir).committed)
    if storage.is_s3(run_dir):
        prefix = run_dir.rstrip("/")
        names = storage.list_sizes(prefix, recursive=True)
        stale = sorted({n.split("/", 1)[0] for n in names if "/" in n and n.startswith(CHECKPOINT_PREFIX)}
                       - committed)
        storage.delete_many(storage.join(prefix, n) for n in names if n.split("/", 1)[0] in stale)
        return stale
    folder = Path(run_dir)
    if not folder.is_dir():
        return []
    stale = sorted(p.name for p in folder.iterdir()
                   if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX) and p.name not in committed)
    for name in stale:
        shutil.rmtree(folder / name)
    return stale


@contextlib.contextmanager
def hold_run(state_dir: Path) -> Iterator[None]:
    """Hold the run whose state lives in ``state_dir`` for the block: a second ``cnf train`` of the same run
    (same state folder) is refused with ``pipelines.data.storage.LockError`` naming the holder's pid.

    An ``fcntl`` lock on ``.<state_dir name>.lock`` beside ``state_dir`` (``pipelines.data.storage.lock``), so
    discarding the run never deletes it, and a killed holder releases it with its last file descriptor.
    """
    from pipelines.data import storage

    with storage.lock(str(state_dir), wait=False):
        yield


def discard_run(run_dir: str, state_dir: Path, extra_files: tuple[str, ...] = ()) -> None:
    """Delete the stored run: Ray's folder ``run_dir`` (local path or ``s3://`` prefix) and, in ``state_dir``,
    the MLflow run id and ``extra_files``, so the next fit starts at step 0 in a new MLflow run."""
    from pipelines.data import storage

    if storage.is_s3(run_dir):
        prefix = run_dir.rstrip("/")
        storage.delete_many(storage.join(prefix, name) for name in storage.list_sizes(prefix, recursive=True))
    elif Path(run_dir).exists():
        shutil.rmtree(run_dir)
    for name in (RUN_ID_FILE, *extra_files):
        (Path(state_dir) / name).unlink(missing_ok=True)


def read_run_id(state_dir: Path) -> str | None:
    """The MLflow run id a previous attempt recorded in ``state_dir``, if any."""
    try:
        text = (Path(state_dir) / RUN_ID_FILE).read_text().strip()
    except FileNotFoundError:
        return None
    return text or None


def write_run_id(state_dir: Path, run_id: str) -> None:
    write_text(Path(state_dir) / RUN_ID_FILE, run_id + "\n")
