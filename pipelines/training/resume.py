"""Whether a stored training run may be resumed, and discarding it when not.

A run lives in ``<storage>/<experiment>/`` (Ray's checkpoints) and ``<state-dir>/`` (``mlflow_run_id``,
``config_sha256``). Resuming is only sound for the model, data, optimiser and code that produced the stored
checkpoints: more steps may continue a finished run, but a changed config (a DVC rerun after editing
params.yaml), dataset or training code must start over, or the stage would report a model that the current
code and data never produced. Three fingerprints decide it:

- ``config_fingerprint``: the experiment without what cannot change the checkpoints (evaluation, sweep,
  scaling, labels, and the step counts and logging intervals of ``train``), plus the data fingerprint;
- ``data_fingerprint``: the manifest's dataset and splits (every shard's sha256 and count), not where the
  release was fetched from;
- ``code_fingerprint``: the ``*.py`` files of ``TRAINING_CODE``.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from pipelines.io import write_text

RUN_ID_FILE = "mlflow_run_id"
FINGERPRINT_FILE = "config_sha256"  # what the checkpoints in <storage>/<experiment> were trained with
# The code that decides what a checkpoint holds: the models, the training batches (loader, tasks and the data
# modules they read with) and the loop that steps and checkpoints; not logging, not the driver. Packages, so a
# module added there is covered. A change here makes a stored run stale, like a changed config or dataset.
TRAINING_CODE = ("flowlib", "pipelines/data", "pipelines/tasks", "pipelines/training/worker.py",
                 "pipelines/training/checkpointing.py")
# Experiment sections and train keys that do not change what the checkpoints hold.
NOT_IN_CHECKPOINT = ("eval", "sweep", "scaling", "description", "table")
TRAIN_NOT_IN_CHECKPOINT = ("steps", "checkpoint_every", "log_every", "max_nonfinite")


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
    key["train"] = {k: v for k, v in experiment["train"].items() if k not in TRAIN_NOT_IN_CHECKPOINT}
    key["data"] = {**experiment["data"], "content_sha256": data_sha}
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
                  resume_any_code: bool = False) -> ResumeDecision:
    """Resume the stored run only when it was trained with ``current``'s config, data and (unless
    ``resume_any_code``) code; ``fresh`` always starts over. Nothing stored: nothing to discard."""
    if fresh:
        return ResumeDecision(True)
    if stored is None:
        return ResumeDecision(False)
    if stored.config != current.config:
        return ResumeDecision(True, "configuration or dataset changed since the stored run: starting fresh")
    if stored.code != current.code and not resume_any_code:
        return ResumeDecision(True, f"training code ({', '.join(TRAINING_CODE)}) changed since the stored run: "
                                    "starting fresh (--resume-any-code continues it instead)")
    return ResumeDecision(False)


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
