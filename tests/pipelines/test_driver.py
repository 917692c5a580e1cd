"""The training driver's plain steps, without Ray: the dataset read once, model options, the stored run."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from pipelines.params import parse_params
from pipelines.tasks import get_task
from pipelines.training.driver import RunPaths, built_experiment, model_options, prepare_stored_run, read_dataset
from pipelines.training.resume import FINGERPRINT_FILE, RUN_ID_FILE

MANIFEST = {"dataset": "drive", "source": "demo",
            "splits": {"train": {"count": 4, "shards": [{"name": "train-000000.tar", "sha256": "ab" * 32}]}}}


def experiment(task="vessel", **model):
    raw = {"profile": "demo", "datasets": {"drive": {"source": "demo"}},
           "experiments": {"e": {"paper": "winkler2019", "task": task, "data": {"dataset": "drive"},
                                 "model": {"family": "cnf", "levels": 2, **model}}}}
    return parse_params(raw).experiment("e")


def paths(tmp_path: Path) -> RunPaths:
    return RunPaths(data_dir=str(tmp_path / "drive"), storage=str(tmp_path / "runs"),
                    state_dir=tmp_path / "runs" / "e", model_out=tmp_path / "m.pt", metrics_out=tmp_path / "m.json")


def test_read_dataset_reads_the_manifest_once_and_says_how_to_fetch_a_missing_one(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no dataset at .*drive.*cnf fetch <dataset> --source demo"):
        read_dataset(str(tmp_path / "drive"))
    (tmp_path / "drive").mkdir()
    text = json.dumps(MANIFEST)
    (tmp_path / "drive" / "manifest.json").write_text(text)
    dataset = read_dataset(str(tmp_path / "drive"))
    assert dataset.manifest == MANIFEST and dataset.manifest_sha256 == hashlib.sha256(text.encode()).hexdigest()


def test_model_options_take_the_tasks_number_of_classes_unless_set():
    assert model_options(experiment("parts"), get_task("parts")) == {"levels": 2, "num_classes": 3}
    assert model_options(experiment("parts", num_classes=5), get_task("parts"))["num_classes"] == 5
    assert model_options(experiment("vessel"), get_task("vessel")) == {"levels": 2}
    exp = experiment("parts")
    assert built_experiment(exp, model_options(exp, get_task("parts")))["model"] == {
        "family": "cnf", "levels": 2, "num_classes": 3}
    assert exp.model.num_classes is None  # the typed params are not mutated


def test_a_stored_run_is_kept_for_the_same_config_and_discarded_for_another(tmp_path, capsys):
    (tmp_path / "drive").mkdir()
    (tmp_path / "drive" / "manifest.json").write_text(json.dumps(MANIFEST))
    dataset, where = read_dataset(str(tmp_path / "drive")), paths(tmp_path)
    run_dir = Path(where.run_dir("e"))
    exp = built_experiment(experiment(), {"levels": 2})
    prepare_stored_run("e", exp, dataset, where)
    assert (where.state_dir / FINGERPRINT_FILE).is_file()
    (run_dir / "checkpoint_000000").mkdir(parents=True)
    (run_dir / "checkpoint_manager_snapshot.json").write_text(json.dumps(  # Ray committed it (test_resume.py)
        {"checkpoint_results": [{"checkpoint_dir_name": "checkpoint_000000", "metrics": {"step": 4}}],
         "latest_checkpoint_result": {"checkpoint_dir_name": "checkpoint_000000", "metrics": {"step": 4}}}))
    (where.state_dir / RUN_ID_FILE).write_text("0" * 32)

    prepare_stored_run("e", exp, dataset, where)  # same config, data and code: resumed
    assert (run_dir / "checkpoint_000000").is_dir() and (where.state_dir / RUN_ID_FILE).is_file()
    assert capsys.readouterr().out == ""

    changed = built_experiment(experiment(), {"levels": 3})
    prepare_stored_run("e", changed, dataset, where)
    assert not (run_dir / "checkpoint_000000").exists() and not (where.state_dir / RUN_ID_FILE).exists()
    assert "[e] configuration or dataset changed since the stored run: starting fresh" in capsys.readouterr().out
    (run_dir / "checkpoint_000000").mkdir(parents=True)
    (run_dir / "checkpoint_manager_snapshot.json").write_text(json.dumps(
        {"checkpoint_results": [{"checkpoint_dir_name": "checkpoint_000000", "metrics": {"step": 4}}]}))
    prepare_stored_run("e", changed, dataset, where)  # the new config is what the stored run now holds
    assert (run_dir / "checkpoint_000000").is_dir()
    prepare_stored_run("e", changed, dataset, where, fresh=True)
    assert not (run_dir / "checkpoint_000000").exists()
