"""Test-only fault injection: set through the environment, one rank exits once."""
from __future__ import annotations

import subprocess
import sys

import pytest

from pipelines.training.faults import CRASH_ENV, MARKER_FILE, CrashOnce, crash_from_environment


def test_the_crash_comes_from_the_environment_only(tmp_path, monkeypatch):
    monkeypatch.delenv(CRASH_ENV, raising=False)
    assert crash_from_environment(tmp_path) is None
    monkeypatch.setenv(CRASH_ENV, "5")
    assert crash_from_environment(tmp_path) == CrashOnce(step=5, marker=str(tmp_path / MARKER_FILE))
    monkeypatch.setenv(CRASH_ENV, "soon")
    with pytest.raises(ValueError, match=f"{CRASH_ENV}: expected a step number, got 'soon'"):
        crash_from_environment(tmp_path)


def test_one_rank_exits_once(tmp_path):
    crash = CrashOnce(step=2, marker=str(tmp_path / MARKER_FILE))
    crash.maybe_crash(1, rank=1, world_size=2)  # another step
    crash.maybe_crash(2, rank=0, world_size=2)  # rank 0 survives when there are two
    assert not (tmp_path / MARKER_FILE).exists()
    code = f"from pipelines.training.faults import CrashOnce; CrashOnce(2, {str(crash.marker)!r}).maybe_crash(2, 1, 2)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "simulated worker crash at step 2" in proc.stdout
    assert (tmp_path / MARKER_FILE).exists()
    crash.maybe_crash(2, rank=1, world_size=2)  # the restarted group trains on
