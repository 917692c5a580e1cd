"""Whether a stored run may be resumed: fingerprints of config, data and code, the decision, discarding a run."""
from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pytest

from pipelines.params import parse_params
from pipelines.training.resume import (FINGERPRINT_FILE, RUN_ID_FILE, TRAINING_CODE, Fingerprints, code_fingerprint,
                                       config_fingerprint, data_fingerprint, decide_resume, discard_run, read_run_id,
                                       write_run_id)

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
