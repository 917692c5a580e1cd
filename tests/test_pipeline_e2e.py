"""End to end: `dvc repro` of a tiny profile in a temporary git repository, then `dvc push` to an S3 remote on a
loopback S3 server and `dvc pull` into a second clone.

This is the test that says the project works as a whole: every stage of dvc.yaml runs through the real `cnf`
command, Ray Train, MLflow and DVC, on the embedded demo data.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slow

# The smallest set of experiments that still exercises every stage kind: a Winkler CNF on a binary target with
# its factored baseline (DRIVE table, sweep, PR figures), and a c-Glow model on a continuous target.
TINY_EXPERIMENTS = ["drive_cnf", "drive_factored", "denoise_cglow"]


def run(cmd: list[str], cwd: Path, env: dict, timeout: float = 900, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed with {proc.returncode}\n--- stdout ---\n{proc.stdout[-6000:]}"
            f"\n--- stderr ---\n{proc.stderr[-6000:]}"
        )
    return proc


def project_files() -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.split("\n")
    # Results of a local `dvc repro` (untracked until a user commits them) are not part of the project.
    generated = ("dvc.lock", "metrics/", "info/", "plots/", "models/", "tables/", "figures/", "runs/", "data/", "mlflow.db")
    return [f for f in out if f and (ROOT / f).is_file() and not f.startswith(generated)]


def copy_project(repo: Path, cut_params) -> Path:
    """The project's files copied to ``repo`` (a new folder), its params.yaml replaced by ``cut_params`` of it."""
    for rel in project_files():
        dst = repo / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, dst)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    (repo / "params.yaml").write_text(yaml.safe_dump(cut_params(params), sort_keys=False))
    return repo


def tiny_params(params: dict) -> dict:
    """The repository's own params.yaml cut down to TINY_EXPERIMENTS with a handful of steps."""
    params = json.loads(json.dumps(params))
    experiments = params["experiments"]
    missing = [e for e in TINY_EXPERIMENTS if e not in experiments]
    assert not missing, f"params.yaml lacks experiments {missing}"
    params["experiments"] = {name: experiments[name] for name in TINY_EXPERIMENTS}
    # Evaluation stages also depend on the SR benchmark sets (see dvc.yaml), so those are always fetched.
    used = {"set5", "set14", "bsd100"}
    for name in TINY_EXPERIMENTS:
        used |= {experiments[name]["data"]["dataset"], experiments[name]["data"]["eval_dataset"]}
    params["datasets"] = {k: v for k, v in params["datasets"].items() if k in used}
    for exp in params["experiments"].values():
        exp["train"]["steps"] = 6
        exp["train"]["checkpoint_every"] = 3
        exp["eval"]["n_samples"] = 2
    params["sweeps"] = {k: v for k, v in params["sweeps"].items() if k in TINY_EXPERIMENTS}
    params["scores"] = {k: v for k, v in params["scores"].items() if v["dataset"] in params["datasets"]}
    return params


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """A fresh git repository holding the project's files, with the tiny profile as its params.yaml."""
    repo = copy_project(tmp_path_factory.mktemp("e2e") / "project", tiny_params)
    env = os.environ | {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                        "GIT_COMMITTER_EMAIL": "t@t"}
    run(["git", "init", "-q", "-b", "main"], repo, env)
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-qm", "tiny profile"], repo, env)
    return repo


def pipeline_env(tmp: Path) -> dict:
    env = os.environ.copy()
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.pop("MLFLOW_TRACKING_URI", None)
    env["DVC_SITE_CACHE_DIR"] = str(tmp / "dvc-site-cache")
    env.update({"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"})
    return env


def test_dvc_repro_builds_every_table_then_is_a_noop(repo, tmp_path, s3_server, s3_bucket):
    env = pipeline_env(tmp_path)
    dvc = str(BIN / "dvc")
    run([dvc, "repro"], repo, env, timeout=1500)

    tables = sorted(p.name for p in (repo / "tables").iterdir())
    for name in [f"winkler_table{i}" for i in (1, 2, 3)] + [f"cglow_table{i}" for i in range(1, 6)]:
        for ext in ("md", "csv", "tex"):
            assert f"{name}.{ext}" in tables, f"tables/{name}.{ext} missing; have {tables}"

    # Every computed cell must be traceable to an MLflow run that exists in the project's store.
    import mlflow
    import pandas as pd

    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    computed = 0
    for csv in (repo / "tables").glob("*.csv"):
        df = pd.read_csv(csv)
        if "source" not in df.columns:
            continue
        ours = df[df["source"].astype(str).str.startswith("computed")]
        for run_id in ours.get("mlflow_run_id", pd.Series(dtype=str)).dropna():
            client.get_run(str(run_id))  # raises if the run does not exist
            computed += 1
    assert computed >= len(TINY_EXPERIMENTS), "computed table rows without MLflow run ids"

    status = run([dvc, "status"], repo, env)
    assert "changed" not in status.stdout and "modified" not in status.stdout, status.stdout

    start = time.monotonic()
    again = run([dvc, "repro"], repo, env)
    noop_s = time.monotonic() - start
    assert "didn't change, skipping" in again.stdout or "up to date" in again.stdout.lower(), again.stdout
    assert "Running stage" not in again.stdout, again.stdout
    print(f"no-op dvc repro: {noop_s:.1f}s")


    # Share the results through an S3 remote and get them back in another clone.
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-qm", "pipeline results"], repo, env)
    run([dvc, "remote", "add", "-d", "store", f"s3://{s3_bucket}/dvc"], repo, env)
    run([dvc, "remote", "modify", "store", "endpointurl", s3_server], repo, env)
    run([dvc, "push"], repo, env)
    run(["git", "commit", "-qam", "remote"], repo, env)

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)], tmp_path, env)
    run([dvc, "pull"], clone, env)
    status = run([dvc, "status"], clone, env)
    assert "changed" not in status.stdout and "deleted" not in status.stdout, status.stdout
    for table in (repo / "tables").glob("*.csv"):
        assert (clone / "tables" / table.name).read_bytes() == table.read_bytes()

    # One experiment changed, a swept one: only its own stages and the tables re-run, not the other evaluations.
    import re

    params = yaml.safe_load((repo / "params.yaml").read_text())
    assert "drive_cnf" in params["sweeps"]
    params["experiments"]["drive_cnf"]["train"]["steps"] = 5
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    changed = run([dvc, "repro"], repo, env, timeout=900)
    assert set(re.findall(r"Running stage '([^']+)'", changed.stdout)) == {
        "train@drive_cnf", "sweep@drive_cnf", "evaluate@drive_cnf", "tables"}, changed.stdout
