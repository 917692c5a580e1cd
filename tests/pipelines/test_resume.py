"""Whether a stored run may be resumed: fingerprints of config, data and code, the decision, discarding a run."""
from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pytest

from pipelines.params import parse_params
from pipelines.training.resume import (FINGERPRINT_FILE, RUN_ID_FILE, SNAPSHOT_FILE, TRAINING_CODE, Fingerprints,
                                       StoredCheckpoints, code_fingerprint, config_fingerprint, data_fingerprint,
                                       decide_resume, discard_run, hold_run, read_run_id,
                                       remove_incomplete_checkpoints, stored_checkpoints, write_run_id)

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = {"dataset": "drive", "source": "demo", "format": "cnf-shards/2",
            "splits": {"train": {"count": 4, "shards": [{"name": "train-000000.tar", "sha256": "ab" * 32}]}}}


def experiment(**sections):
    raw = {"profile": "demo", "datasets": {"drive": {"source": "demo"}},
           "experiments": {"e": {"paper": "winkler2019", "task": "vessel", "data": {"dataset": "drive"},
                                 "model": {"family": "cnf", "levels": 2}, "train": {"steps": 10}}}}
    for name, values in sections.items():
        raw["experiments"]["e"].setdefault(name, {}).update(values)
    return parse_params(raw).experiment("e").to_dict()


def test_data_fingerprint_sees_shard_content_not_where_it_was_fetched_from():
    moved = copy.deepcopy(MANIFEST)
    moved["source"] = "s3://elsewhere/drive.zip"
    assert data_fingerprint(moved) == data_fingerprint(MANIFEST)
    moved["splits"]["train"]["count"] += 1
    assert data_fingerprint(moved) != data_fingerprint(MANIFEST)


def test_config_fingerprint_changes_with_what_shapes_the_checkpoints_only():
    data = data_fingerprint(MANIFEST)
    base = config_fingerprint(experiment(), data)
    assert config_fingerprint(experiment(), data) == base
    # more steps continue a run; logging, evaluation and scaling do not change what a checkpoint holds
    for same in (dict(train={"steps": 500, "log_every": 1, "checkpoint_every": 7, "max_nonfinite": 3}),
                 dict(eval={"n_samples": 2}), dict(sweep={"temperatures": [0.5]}), dict(scaling={"use_gpu": True})):
        assert config_fingerprint(experiment(**same), data) == base, same
    for other in (dict(train={"lr": 1e-4}), dict(model={"levels": 3}), dict(data={"patch": 32}),
                  dict(train={"seed": 1})):
        assert config_fingerprint(experiment(**other), data) != base, other
    assert config_fingerprint(experiment(), data_fingerprint({**MANIFEST, "dataset": "other"})) != base
    # under a cosine schedule the steps set every step's rate: more steps are another run
    cosine = config_fingerprint(experiment(train={"lr_schedule": "cosine"}), data)
    assert cosine != base
    assert config_fingerprint(experiment(train={"lr_schedule": "cosine", "steps": 500}), data) != cosine
    assert config_fingerprint(experiment(train={"lr_schedule": "cosine", "log_every": 1}), data) == cosine


def test_resume_decision():
    current = Fingerprints(config="c", code="k")
    assert decide_resume(None, current) == decide_resume(current, current)  # nothing stored, or the same
    assert not decide_resume(current, current).fresh and decide_resume(current, current).reason is None
    assert decide_resume(current, current, fresh=True).fresh
    changed = decide_resume(Fingerprints("other", "k"), current)
    assert changed.fresh and "configuration or dataset changed" in changed.reason
    code = decide_resume(Fingerprints("c", "old"), current)
    assert code.fresh and "training code" in code.reason and "--resume-any-code" in code.reason
    assert not decide_resume(Fingerprints("c", "old"), current, resume_any_code=True).fresh
    assert decide_resume(Fingerprints("other", "k"), current, resume_any_code=True).fresh  # config still counts


def test_fingerprints_round_trip_and_an_old_file_matches_no_code(tmp_path):
    assert Fingerprints.read(tmp_path) is None
    Fingerprints("c", "k").write(tmp_path)
    assert Fingerprints.read(tmp_path) == Fingerprints("c", "k")
    (tmp_path / FINGERPRINT_FILE).write_text("c\n")  # written before the code fingerprint existed
    assert decide_resume(Fingerprints.read(tmp_path), Fingerprints("c", "k")).fresh


def test_code_fingerprint_covers_the_training_packages(tmp_path):
    code = tmp_path / "code"
    for rel in TRAINING_CODE:
        src, dst = ROOT / rel, code / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, dst)
    assert code_fingerprint(code) == code_fingerprint(ROOT) == code_fingerprint()
    # a module added to a listed package counts, like an edit
    (code / "pipelines" / "tasks" / "new_task.py").write_text("X = 1\n")
    assert code_fingerprint(code) != code_fingerprint(ROOT)
    (code / "pipelines" / "tasks" / "new_task.py").unlink()
    (code / "flowlib" / "coupling.py").write_text((code / "flowlib" / "coupling.py").read_text() + "\n# edit\n")
    assert code_fingerprint(code) != code_fingerprint(ROOT)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        code_fingerprint(tmp_path / "nowhere")


def test_training_code_lists_the_modules_that_decide_what_a_checkpoint_holds():
    for module in ("flowlib/models.py", "pipelines/data/loader.py", "pipelines/data/imaging.py",
                   "pipelines/tasks/vessel.py", "pipelines/training/worker.py", "pipelines/training/checkpointing.py"):
        assert (ROOT / module).is_file(), module
        assert any(module == rel or module.startswith(rel + "/") for rel in TRAINING_CODE), module
    assert not any(rel.startswith("pipelines/training/driver") for rel in TRAINING_CODE)  # logging, not training


def _stored_run(run_dir: Path, state_dir: Path) -> None:
    (run_dir / "checkpoint_000001").mkdir(parents=True)
    (run_dir / "checkpoint_000001" / "train_state.pt").write_bytes(b"x")
    state_dir.mkdir(parents=True, exist_ok=True)
    write_run_id(state_dir, "0" * 32)
    (state_dir / "marker.done").write_text("")
    (state_dir / "notes.txt").write_text("keep")


def test_discard_run_on_a_local_folder(tmp_path):
    run_dir, state_dir = tmp_path / "runs" / "e", tmp_path / "state"
    _stored_run(run_dir, state_dir)
    assert read_run_id(state_dir) == "0" * 32
    discard_run(str(run_dir), state_dir, extra_files=("marker.done",))
    assert not run_dir.exists() and read_run_id(state_dir) is None
    assert not (state_dir / "marker.done").exists() and (state_dir / "notes.txt").read_text() == "keep"
    discard_run(str(run_dir), state_dir)  # nothing left: not an error
    # the state folder may be the run folder itself (the default): everything goes
    _stored_run(run_dir, run_dir)
    discard_run(str(run_dir), run_dir)
    assert not run_dir.exists()


def test_discard_run_on_s3(tmp_path, s3_bucket):
    from pipelines.data import storage

    prefix = f"s3://{s3_bucket}/runs/e"
    for name in ("checkpoint_000001/train_state.pt", "checkpoint_000001/model.pt", "checkpoint_manager.json"):
        storage.put_bytes(b"x", f"{prefix}/{name}")
    storage.put_bytes(b"keep", f"s3://{s3_bucket}/runs/e2/checkpoint_manager.json")  # another run
    (tmp_path / RUN_ID_FILE).write_text("1" * 32)
    discard_run(prefix, tmp_path)
    assert storage.list_sizes(prefix, recursive=True) == {}
    assert storage.list_sizes(f"s3://{s3_bucket}/runs/e2", recursive=True) == {"checkpoint_manager.json": 4}
    assert read_run_id(tmp_path) is None


def snapshot(run_dir: Path, *steps_and_names) -> None:
    """Ray Train 2.60's checkpoint manager snapshot (the fields we read) for checkpoints ``(step, name)``."""
    import json

    results = [{"version": 0, "checkpoint_dir_name": name, "metrics": {"step": step, "final": False}}
               for step, name in steps_and_names]
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / SNAPSHOT_FILE).write_text(json.dumps({
        "ray_version": "2.60.0", "checkpoint_results": results, "latest_checkpoint_result": results[-1],
        "pending_training_results": [], "current_report_index": len(results) + 1}))


def test_a_stored_run_past_the_requested_steps_starts_fresh(tmp_path):
    current = Fingerprints("c", "k")
    assert stored_checkpoints(tmp_path / "none") == StoredCheckpoints()
    snapshot(tmp_path, (4, "checkpoint_a"), (8, "checkpoint_b"))
    stored = stored_checkpoints(tmp_path)
    assert stored == StoredCheckpoints(committed=("checkpoint_a", "checkpoint_b"), latest_step=8)
    decision = decide_resume(current, current, stored_step=stored.latest_step, steps=5)
    assert decision.fresh and "trained 8 steps, more than train.steps=5: starting fresh" in decision.reason
    for steps in (8, 12):  # the same run finished, or continued for more steps
        assert not decide_resume(current, current, stored_step=8, steps=steps).fresh
    assert not decide_resume(current, current, stored_step=None, steps=5).fresh  # nothing committed yet
    (tmp_path / SNAPSHOT_FILE).write_text("{truncated")
    with pytest.raises(ValueError, match=f"{tmp_path / SNAPSHOT_FILE}: not Ray Train's checkpoint snapshot"):
        stored_checkpoints(str(tmp_path))


def test_checkpoint_folders_ray_never_committed_are_removed(tmp_path):
    run = tmp_path / "run"
    snapshot(run, (4, "checkpoint_a"), (8, "checkpoint_b"))
    for name in ("checkpoint_a", "checkpoint_b", "checkpoint_c", "checkpoint_d"):
        (run / name).mkdir()
    (run / "checkpoint_a" / "model.pt").write_bytes(b"x")
    (run / "checkpoint_c" / "model.pt").write_bytes(b"")  # a full disk cut this copy short
    (run / "other").mkdir()
    assert remove_incomplete_checkpoints(str(run)) == ["checkpoint_c", "checkpoint_d"]
    assert sorted(p.name for p in run.iterdir()) == sorted(["checkpoint_a", "checkpoint_b", "other", SNAPSHOT_FILE])
    assert remove_incomplete_checkpoints(str(run)) == []
    (run / SNAPSHOT_FILE).unlink()  # killed before the first commit: nothing is resumable
    assert remove_incomplete_checkpoints(str(run)) == ["checkpoint_a", "checkpoint_b"]
    assert remove_incomplete_checkpoints(str(tmp_path / "missing")) == []


def test_a_second_holder_of_a_run_is_refused_naming_the_first(tmp_path):
    import subprocess
    import sys

    from pipelines.data.storage import LockError

    state = tmp_path / "runs" / "e"
    code = ("import sys, time; from pathlib import Path; from pipelines.training.resume import hold_run\n"
            "with hold_run(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(60)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(state)], stdout=subprocess.PIPE, text=True,
                              cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LockError, match=rf"another process holds .*\.e\.lock \(pid {holder.pid} on "):
            with hold_run(state):
                pass
    finally:
        holder.kill()
        holder.wait()
    with hold_run(state):  # released with the holder's last descriptor, even by SIGKILL
        pass
