"""Test-only fault injection: one worker of a fit exits once at a chosen step.

The worker-restart test needs a rank to die mid-run; production code must not be able to ask for that, so it
is not a params.yaml key. ``cnf train`` reads ``$CNF_TEST_CRASH_AT_STEP`` (``crash_from_environment``) and
hands the driver a ``CrashOnce``; the marker file makes the restarted worker group train on.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CRASH_ENV = "CNF_TEST_CRASH_AT_STEP"
MARKER_FILE = "test_crash.done"  # in the run's state folder


@dataclass(frozen=True)
class CrashOnce:
    """Rank ``min(1, world_size - 1)`` exits (``os._exit(1)``) before training step ``step``, once: the
    first crash writes ``marker``, which later attempts see."""

    step: int
    marker: str

    def maybe_crash(self, step: int, rank: int, world_size: int) -> None:
        if step != self.step or rank != min(1, world_size - 1):
            return
        marker = Path(self.marker)
        if marker.exists():
            return
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(f"rank {rank} exited at step {step}\n")
        print(f"[test] rank {rank}: simulated worker crash at step {step} (${CRASH_ENV})", flush=True)
        os._exit(1)


def crash_from_environment(state_dir: Path) -> CrashOnce | None:
    """The crash ``$CNF_TEST_CRASH_AT_STEP`` asks for (marker in ``state_dir``), or None when it is unset."""
    text = os.environ.get(CRASH_ENV, "").strip()
    if not text:
        return None
    try:
        step = int(text)
    except ValueError:
        raise ValueError(f"${CRASH_ENV}: expected a step number, got {text!r}") from None
    if step < 0:
        raise ValueError(f"${CRASH_ENV}: expected a step number >= 0, got {step}")
    return CrashOnce(step=step, marker=str(Path(state_dir) / MARKER_FILE))
