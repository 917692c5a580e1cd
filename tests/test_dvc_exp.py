"""`dvc exp run -S ...` on a tiny profile in a temporary git repository, read back with `dvc exp show --json`.

How DVC users run variants (README "Experiments with dvc exp"): the experiment runs in a temporary copy of the
repository (`--temp`, as `--queue` + `dvc queue start` do), so this also checks where MLflow's store lands then:
in the repository's own `mlflow.db`, not in the copy that DVC throws away.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.test_pipeline_e2e import BIN, copy_project, pipeline_env, run

pytestmark = pytest.mark.slow

EXP = "drive_cnf"


def tiny_params(params: dict) -> dict:
    """The repository's params.yaml cut down to one tiny DRIVE experiment (the SR sets stay declared: the graph
    names them)."""
    params = json.loads(json.dumps(params))
    exp = params["experiments"][EXP]
    exp["model"].update({"levels": 1, "steps": 1, "hidden": 8})
    exp["data"]["patch"] = 16
    exp["train"].update({"steps": 2, "checkpoint_every": 2, "log_every": 1, "batch_size": 2})
    params["experiments"] = {EXP: exp}
    keep = {"drive", "set5", "set14", "bsd100"}
    params["datasets"] = {k: v for k, v in params["datasets"].items() if k in keep}
    params["sweeps"] = {k: v for k, v in params["sweeps"].items() if k == EXP}
    params["scores"] = {k: v for k, v in params["scores"].items() if v["dataset"] in keep}
    return params


@pytest.fixture
def repo(tmp_path) -> Path:
    repo = copy_project(tmp_path / "project", tiny_params)
    env = pipeline_env(tmp_path)
    run(["git", "init", "-q", "-b", "main"], repo, env)
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-qm", "tiny profile"], repo, env)
    return repo


def test_dvc_exp_run_with_a_changed_param_is_shown_and_tracked_in_the_repositorys_store(repo, tmp_path):
    env = pipeline_env(tmp_path)
    dvc = str(BIN / "dvc")
    run([dvc, "exp", "run", "--temp", "-n", "steps3", "-S", f"experiments.{EXP}.train.steps=3", f"train@{EXP}"],
        repo, env, timeout=900)

    shown = json.loads(run([dvc, "exp", "show", "--json"], repo, env).stdout)
    exps = [e for rev in shown for e in (rev.get("experiments") or [])]
    names = {r.get("name"): r for e in exps for r in e.get("revs", [])}
    assert "steps3" in names, json.dumps(shown)[:3000]
    data = names["steps3"]["data"]
    params = data["params"]["params.yaml"]["data"]
    assert params["experiments"][EXP]["train"]["steps"] == 3
    metrics = data["metrics"][f"metrics/train/{EXP}.json"]["data"]
    assert metrics["steps"] == 3 and metrics["final_train_bpd"] > 0
    assert all(isinstance(v, (int, float)) or v is None for v in metrics.values()), metrics

    # The run went to the repository's mlflow.db (the temporary copy is gone), with the variant's params.
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("winkler2019-cnf")
    assert experiment is not None, list((repo).iterdir())
    (found,) = client.search_runs([experiment.experiment_id], "params.`train.steps` = '3'")
    assert found.info.status == "FINISHED" and found.data.tags["mlflow.source.name"] == "pipelines/stages/train.py"
    assert experiment.artifact_location == (repo / "mlruns").as_uri()
    assert not (repo / ".dvc" / "tmp" / "exps").exists() or not any((repo / ".dvc" / "tmp" / "exps").glob("*/mlflow.db"))
    # The workspace itself is untouched by a --temp experiment.
    assert not (repo / f"metrics/train/{EXP}.json").exists()


def test_two_queued_experiments_run_in_parallel_without_touching_each_others_state(repo, tmp_path):
    """`dvc exp run --queue` twice and `dvc queue start -j 2`: both run at once, each in its own copy with its own
    Ray instance and Ray storage (runs/ stays per copy), both tracked in the repository's one mlflow.db, each
    with its own params and a single-valued step history."""
    import time

    env = pipeline_env(tmp_path)
    dvc = str(BIN / "dvc")
    for name, steps in (("q3", 3), ("q4", 4)):
        run([dvc, "exp", "run", "--queue", "-n", name, "-S", f"experiments.{EXP}.train.steps={steps}",
             f"train@{EXP}"], repo, env)
    run([dvc, "queue", "start", "-j", "2"], repo, env)
    deadline = time.monotonic() + 1200
    status = ""
    while time.monotonic() < deadline:
        status = run([dvc, "queue", "status"], repo, env).stdout
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(5)
    assert "Failed" not in status and status.count("Success") == 2, status + "".join(
        run([dvc, "queue", "logs", n], repo, env, check=False).stdout[-3000:] for n in ("q3", "q4"))

    shown = json.loads(run([dvc, "exp", "show", "--json"], repo, env).stdout)
    revs = {r.get("name"): r for rev in shown for e in (rev.get("experiments") or []) for r in e.get("revs", [])}
    for name, steps in (("q3", 3), ("q4", 4)):
        data = revs[name]["data"]
        assert data["params"]["params.yaml"]["data"]["experiments"][EXP]["train"]["steps"] == steps
        assert data["metrics"][f"metrics/train/{EXP}.json"]["data"]["steps"] == steps

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("winkler2019-cnf")
    for steps in (3, 4):
        (found,) = client.search_runs([experiment.experiment_id], f"params.`train.steps` = '{steps}'")
        assert found.info.status == "FINISHED"
        history = [m.step for m in client.get_metric_history(found.info.run_id, "train_nll")]
        assert history and len(history) == len(set(history)), history
