"""`pipelines.tracking` against a real MLflow SQLite store in a temporary folder (no server, no Ray)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import torch

from pipelines import tracking

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def store(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(ROOT)  # a git checkout: the source tags have a commit to name
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def test_experiments_open_in_the_model_training_view_and_artifacts_stay_in_the_project(store, tmp_path):
    run_id = tracking.open_run("winkler2019-cnf", "drive_cnf")
    exp = store.get_experiment(store.get_run(run_id).info.experiment_id)
    assert exp.tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"
    assert exp.artifact_location == (tmp_path / "mlruns").as_uri()
    # An experiment created elsewhere without the tag gets it when a stage next uses it.
    other = store.create_experiment("lu2020-cglow")
    tracking.open_run("lu2020-cglow", "x")
    assert store.get_experiment(other).tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"


def test_source_tags_name_the_commit_and_entry_point(store, monkeypatch):
    monkeypatch.setenv("DVC_EXP_NAME", "lusty-bass")
    tags = tracking.source_tags("pipelines/stages/train.py")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    assert tags["mlflow.source.git.commit"] == head
    assert tags["mlflow.source.name"] == "pipelines/stages/train.py" and tags["mlflow.source.type"] == "LOCAL"
    assert tags["dvc.exp_name"] == "lusty-bass"


def test_the_training_dataset_is_a_run_input_with_the_manifest_digest(store):
    run_id = tracking.open_run("winkler2019-cnf", "drive_cnf")
    tracking.log_dataset(run_id, "drive", "/data/shards/drive", "ab" * 32, profile={"splits": {"train": 20}})
    (inp,) = store.get_run(run_id).inputs.dataset_inputs
    assert (inp.dataset.name, inp.dataset.digest, inp.dataset.source_type) == ("drive", "ab" * 18, "local")
    assert '"/data/shards/drive"' in inp.dataset.source
    assert {t.key: t.value for t in inp.tags} == {"mlflow.data.context": "train"}


def test_stage_runs_are_nested_under_the_training_run_and_linked_back(store):
    train = tracking.open_run("winkler2019-cnf", "drive_cnf")
    reported, child = tracking.open_stage_run("winkler2019-cnf", "drive_cnf", "evaluate", train)
    assert reported == train and child != train
    assert store.get_run(child).data.tags["mlflow.parentRunId"] == train
    assert store.get_run(child).data.tags["cnf.stage"] == "evaluate"
    assert store.get_run(train).data.tags["cnf.evaluate_run_id"] == child
    # The training run is gone (a fresh mlflow.db): the stage run stands alone and is what the row names.
    with pytest.warns(UserWarning, match="not nested"):
        reported, child = tracking.open_stage_run("winkler2019-cnf", "drive_cnf", "sweep", "0" * 32)
    assert reported == child and "mlflow.parentRunId" not in store.get_run(child).data.tags


def test_closing_run_sets_the_status_of_every_way_out(store):
    statuses = []
    for error in (None, RuntimeError("disk full"), KeyboardInterrupt()):
        run_id = tracking.open_run("winkler2019-cnf", "r")
        try:
            with tracking.closing_run(run_id):
                if error is not None:
                    raise error
        except (RuntimeError, KeyboardInterrupt):
            pass
        statuses.append(store.get_run(run_id).info.status)
    assert statuses == ["FINISHED", "FAILED", "KILLED"]


def test_sigterm_is_an_interrupt_inside_terminate_as_interrupt():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
        with tracking.terminate_as_interrupt():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_malformed_store_fails_in_one_line_naming_the_file(tmp_path, monkeypatch):
    db = tmp_path / "mlflow.db"
    db.write_bytes(b"this is not sqlite" * 100)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    with pytest.raises(tracking.TrackingError) as err:
        tracking.open_run("winkler2019-cnf", "r")
    assert str(db) in str(err.value) and "\n" not in str(err.value)


def test_an_unreachable_server_fails_in_seconds_naming_the_uri(monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    uri = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    start = time.monotonic()
    with pytest.raises(tracking.TrackingError, match=f"{uri}.*unreachable"):
        tracking.open_run("winkler2019-cnf", "r")
    assert time.monotonic() - start < tracking.CONNECT_TIMEOUT_S + 2


def test_cnf_prints_one_line_for_an_unusable_store(tmp_path, monkeypatch, capsys):
    import pipelines.stages.score as score
    from pipelines.stages.cli import main

    db = tmp_path / "mlflow.db"
    db.write_bytes(b"garbage" * 100)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    monkeypatch.setattr(score, "run", lambda args: tracking.open_run("winkler2019-cnf", "r") and 0)
    assert main(["score", "vessel", "--data", str(tmp_path), "--split", "test", "--method", "second_observer"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("cnf score: MLflow store") and str(db) in err and "\n" not in err


def test_the_store_of_a_dvc_queue_workspace_is_the_repositorys(tmp_path):
    repo = tmp_path / "repo"
    workspace = repo / ".dvc" / "tmp" / "exps" / "tmpab12"
    workspace.mkdir(parents=True)
    (workspace / "dvc.yaml").write_text("stages: {}\n")
    (repo / "dvc.yaml").write_text("stages: {}\n")
    assert tracking.project_root(workspace) == repo
    assert tracking.project_root(repo) == repo


def test_a_registered_model_loads_through_flowlib_and_predicts(store, tmp_path):
    import mlflow

    from flowlib import build_model, save_checkpoint
    from flowlib.checkpoint import load_model

    torch.manual_seed(0)
    model = build_model("cnf", "binary", y_shape=(1, 8, 8), x_shape=(3, 8, 8), levels=1, steps=1, hidden=4,
                        encoder="vgg", dequantization="binary")
    ckpt = save_checkpoint(tmp_path / "model.pt", model)
    run_id = tracking.open_run("winkler2019-cnf", "drive_cnf")
    uri = tracking.log_flowlib_model(run_id, ckpt, "drive_cnf")
    assert uri == "models:/drive_cnf/1"
    assert tracking.log_flowlib_model(run_id, ckpt, "drive_cnf") == "models:/drive_cnf/2"
    assert store.get_run(run_id).data.tags["cnf.registered_model"] == "models:/drive_cnf/2"

    loaded = load_model(uri).eval()
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)
    x = torch.rand(2, 3, 8, 8)
    assert loaded.predict(x, n_samples=1)["prediction"].shape == (2, 1, 8, 8)
    # The same version through MLflow's own loader: the pyfunc predicts any batch size.
    pyfunc = mlflow.pyfunc.load_model(uri)
    assert pyfunc.predict(x.numpy()[:1]).shape == (1, 1, 8, 8)
    assert pyfunc.predict(x.numpy()).shape == (2, 1, 8, 8)


def test_system_metrics_are_logged_while_the_block_runs(store):
    run_id = tracking.open_run("winkler2019-cnf", "r")
    with tracking.system_metrics(run_id, sampling_interval=0.2):
        time.sleep(1.0)
    assert any(k.startswith("system/cpu") for k in store.get_run(run_id).data.metrics)


def _first_use(uri: str) -> None:
    from mlflow import MlflowClient

    from pipelines import tracking

    tracking.check_store(uri)
    client = MlflowClient(tracking_uri=uri)
    client.search_experiments()
    client.create_experiment(f"e{os.getpid()}")


def test_processes_creating_one_sqlite_store_at_once_do_not_race_on_its_schema(tmp_path):
    """Two queued `dvc exp run`s start together on one new mlflow.db: without the lock around its creation most
    of them die on "table ... already exists" (measured: 3 or 4 of 4 processes)."""
    import multiprocessing

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    procs = [multiprocessing.get_context("spawn").Process(target=_first_use, args=(uri,)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
    assert [p.exitcode for p in procs] == [0] * 4
    from mlflow import MlflowClient

    assert len(MlflowClient(tracking_uri=uri).search_experiments()) == 5  # Default + one per process


_KILLED_WRITER = """
import os, signal, sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("PRAGMA journal_mode=DELETE")
db.execute("CREATE TABLE t (v TEXT)")
db.execute("INSERT INTO t VALUES ('kept')")
db.execute("PRAGMA cache_size=1")  # spill changed pages into the file mid-transaction: the journal goes hot
db.execute("BEGIN IMMEDIATE")
db.executemany("INSERT INTO t VALUES (?)", [("x" * 500,)] * 400)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_store_whose_writer_was_killed_mid_transaction_is_rolled_back_not_called_unreadable(tmp_path, monkeypatch):
    """A driver SIGKILLed while MLflow wrote leaves a hot journal; the store is fine once it is rolled back (CI
    saw the resume test fail on it: a read-only check cannot roll back and called the store unreadable)."""
    import sqlite3
    import sys

    from mlflow import MlflowClient

    path = tmp_path / "mlflow.db"
    uri = f"sqlite:///{path}"
    monkeypatch.setattr(tracking, "_checked", set())
    tracking.check_store(uri)  # creates the MLflow schema
    MlflowClient(tracking_uri=uri).create_experiment("before-the-kill")
    proc = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(path)])
    assert proc.returncode == -signal.SIGKILL
    assert (tmp_path / "mlflow.db-journal").stat().st_size > 0  # the hot journal this test is about
    with pytest.raises(sqlite3.OperationalError, match="readonly"):  # what the old read-only check saw
        sqlite3.connect(f"file:{path}?mode=ro", uri=True).execute("PRAGMA quick_check").fetchall()

    monkeypatch.setattr(tracking, "_checked", set())  # a new process
    tracking.check_store(uri)
    db = sqlite3.connect(path)
    assert db.execute("SELECT v FROM t").fetchall() == [("kept",)]  # the half-done transaction is gone
    db.close()
    assert MlflowClient(tracking_uri=uri).get_experiment_by_name("before-the-kill") is not None


def test_a_file_that_is_not_sqlite_is_refused_with_its_path(tmp_path, monkeypatch):
    path = tmp_path / "mlflow.db"
    path.write_bytes(b"not a database at all, just text" * 4)
    monkeypatch.setattr(tracking, "_checked", set())
    with pytest.raises(tracking.TrackingError, match="unreadable.*move it aside"):
        tracking.check_store(f"sqlite:///{path}")
