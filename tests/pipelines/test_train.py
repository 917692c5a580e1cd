"""`cnf train` through real Ray Train, MLflow and the real model/loader on the embedded demo data.

Each Ray start costs 10-30 s on a 2-core machine, so these are few, tiny and marked slow. The pieces of the
driver and the worker are tested on their own in test_driver.py, test_resume.py, test_cluster.py,
test_checkpointing.py, test_grids.py, test_faults.py and test_worker.py.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[2]
CNF = str(Path(sys.executable).parent / "cnf")
EXP = "drive_cnf"
TINY = ["model.levels=1", "model.steps=1", "model.hidden=8", "data.patch=16", "train.batch_size=2",
        "train.log_every=2", "train.lr=1e-3"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("shards") / "drive"
    subprocess.run([CNF, "fetch", "drive", "--source", "demo", "--out", str(out)], check=True, capture_output=True)
    return out


def cnf_train(tmp: Path, shards: Path, *sets: str, tracking: str | None = None, popen: bool = False,
              env_extra: dict | None = None, check: bool = True):
    env = os.environ.copy() | (env_extra or {})
    env["MLFLOW_TRACKING_URI"] = tracking or f"sqlite:///{tmp / 'mlflow.db'}"
    env.pop("RAY_ADDRESS", None)
    cmd = [CNF, "train", EXP, "--params", str(ROOT / "params.yaml"), "--data", str(shards),
           "--storage", str(tmp / "runs"), "--model-out", str(tmp / "models" / f"{EXP}.pt"),
           "--metrics-out", str(tmp / "metrics" / f"{EXP}.json"), "--num-cpus", "2"]
    for s in [*TINY, *sets]:
        cmd += ["--set", s]
    if popen:
        return subprocess.Popen(cmd, cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
    proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=400)
    if not check:
        return proc
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]
    metrics = json.loads((tmp / "metrics" / f"{EXP}.json").read_text())
    # The metrics file holds scalar numbers only (what `dvc metrics diff` compares); the bookkeeping (run id,
    # paths, timings) is the state folder's train_info.json.
    assert all(isinstance(v, (int, float)) or v is None for v in metrics.values()), metrics
    info = json.loads((tmp / "runs" / EXP / "train_info.json").read_text())
    return {**info, **metrics}, proc.stdout + proc.stderr


def client(tracking):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking)


@pytest.mark.slow
def test_two_worker_run_lowers_loss_and_tracks_to_a_real_mlflow_server_with_s3_artifacts(
        tmp_path, shards, s3_server, s3_bucket):
    from flowlib.checkpoint import load_model

    port = free_port()
    env = os.environ | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", f"s3://{s3_bucket}/mlartifacts"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for_port(port, timeout=90, proc=server)
        uri = f"http://127.0.0.1:{port}"
        metrics, log = cnf_train(tmp_path, shards, "train.steps=16", "train.checkpoint_every=8",
                                 "scaling.num_workers=2", tracking=uri)
        assert metrics["steps"] == 16 and metrics["resumed_from_step"] == 0 and metrics["num_workers"] == 2
        assert metrics["samples_per_s"] > 0 and metrics["startup_s"] > 0 and metrics["nonfinite_skipped"] == 0
        assert (tmp_path / "models" / f"{EXP}.pt").is_file()
        c = client(uri)
        run = c.get_run(metrics["mlflow_run_id"])
        assert run.info.status == "FINISHED" and "train_bpd" in run.data.metrics
        assert c.get_experiment(run.info.experiment_id).name == "winkler2019-cnf"
        assert run.data.params["train.steps"] == "16" and len(run.data.params["data_manifest_sha256"]) == 64
        history = [m.value for m in sorted(c.get_metric_history(run.info.run_id, "train_nll"), key=lambda m: m.step)]
        assert len(history) >= 4 and min(history[-2:]) < history[0], history
        assert "checkpoint/model.pt" in {a.path for a in c.list_artifacts(run.info.run_id, "checkpoint")}
        # What an auditor looks for: the source (git commit), the dataset input, system metrics, a registered
        # model in MLflow's format that flowlib loads back, and the model-training view of the experiment.
        assert run.data.tags["mlflow.source.name"] == "pipelines/stages/train.py"
        assert len(run.data.tags["mlflow.source.git.commit"]) == 40
        assert [d.dataset.name for d in run.inputs.dataset_inputs] == ["drive"]
        assert any(k.startswith("system/") for k in run.data.metrics), sorted(run.data.metrics)
        assert c.get_experiment(run.info.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
        assert metrics["registered_model"] == f"models:/{EXP}/1"
        os.environ["MLFLOW_TRACKING_URI"] = uri
        try:
            import torch

            model = load_model(metrics["registered_model"]).eval()
            x = torch.rand(1, *model.config["x_shape"])
            assert model.predict(x, n_samples=1)["prediction"].shape[-2:] == x.shape[-2:]
        finally:
            os.environ.pop("MLFLOW_TRACKING_URI")
        assert any(a.path.endswith(".png") for a in c.list_artifacts(run.info.run_id, "samples")), log[-3000:]
        # Artifacts went through the server into the S3 bucket, not to a local folder.
        import boto3

        keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=s3_bucket).get("Contents", [])]
        assert any(k.endswith("checkpoint/model.pt") for k in keys), keys
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    # The final checkpoint loads through the flowlib contract.
    load_model(str(tmp_path / "models" / f"{EXP}.pt"))


@pytest.mark.slow
def test_driver_sigkill_then_rerun_resumes_same_step_counter_and_mlflow_run(tmp_path, shards):
    sets = ("train.steps=400", "train.checkpoint_every=4")
    proc = cnf_train(tmp_path, shards, *sets, popen=True)
    run_dir = tmp_path / "runs" / EXP
    lines: list[str] = []
    committed = threading.Event()

    def drain():  # read the pipe continuously (a full pipe would stall the driver) and watch for the commit
        for line in proc.stdout:
            lines.append(line)
            if "checkpoint at step 4 committed" in line:
                committed.set()

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        # Wait for the commit (checkpoint registered, manager snapshot written), not merely the folder: a
        # persisted checkpoint the controller has not registered yet is not resumable.
        assert committed.wait(timeout=240), "".join(lines)[-5000:]
    finally:
        # The driver and everything it started, at once: Ray's workers run in their own process groups and,
        # were only the driver's group killed, would train on (and checkpoint) until they notice the raylet
        # is gone.
        import psutil

        tree = [proc.pid, *(c.pid for c in psutil.Process(proc.pid).children(recursive=True))]
        for pid in tree:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait(timeout=30)
    first_run_id = (run_dir / "mlflow_run_id").read_text().strip()
    # Log lines reach the driver late, so the killed run may have committed later checkpoints than the last
    # line read; every committed checkpoint was persisted first, so the persisted ones bound the resume step.
    seen = max(int(l.split("checkpoint at step ")[1].split()[0]) for l in lines if " committed" in l)
    import torch

    persisted = [seen]
    for path in run_dir.glob("checkpoint_*/train_state.pt"):
        try:
            persisted.append(torch.load(path, map_location="cpu", weights_only=False)["step"])
        except Exception:  # a copy the kill cut short: never committed, so never resumed from
            pass
    target = max(persisted) + 4
    metrics, _ = cnf_train(tmp_path, shards, f"train.steps={target}", "train.checkpoint_every=4")
    assert seen <= metrics["resumed_from_step"] <= max(persisted) and metrics["resumed_from_step"] % 4 == 0
    assert metrics["steps"] == target
    assert metrics["mlflow_run_id"] == first_run_id
    c = client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert c.get_run(first_run_id).info.status == "FINISHED"
    # One step counter across both processes: the rerun logged the steps after the resume into the same run.
    steps_logged = [m.step for m in c.get_metric_history(first_run_id, "train_nll")]
    logged = set(steps_logged)
    assert target in logged and seen in logged, sorted(logged)
    # The steps the rerun replayed (from its checkpoint up to the kill) were logged once, not twice.
    assert len(steps_logged) == len(logged), sorted(steps_logged)

    # Rerunning a finished run with the same config, data and code (`dvc repro` after, say, an evaluation-only
    # change) trains nothing and reports what the run ended with, instead of losing the final figures.
    again, _ = cnf_train(tmp_path, shards, f"train.steps={target}", "train.checkpoint_every=4")
    assert again["resumed_from_step"] == target and again["mlflow_run_id"] == first_run_id
    assert again["final_train_bpd"] == pytest.approx(metrics["final_train_bpd"])
    assert again["samples_per_s"] == pytest.approx(metrics["samples_per_s"])

    # A stored run past the requested steps is not the requested run: fewer steps start fresh, in a new MLflow
    # run, instead of exporting the longer run's model under params that say otherwise.
    lower, log = cnf_train(tmp_path, shards, f"train.steps={target - 4}", "train.checkpoint_every=4")
    assert f"trained {target} steps, more than train.steps={target - 4}: starting fresh" in log, log[-3000:]
    assert lower["resumed_from_step"] == 0 and lower["steps"] == target - 4
    assert lower["mlflow_run_id"] != first_run_id

    # Other shards (the same samples re-fetched two per tar) are other data: the stored run is stale, so the
    # rerun starts fresh, in a new MLflow run, instead of reporting a model these shards never trained.
    resharded = tmp_path / "resharded" / "drive"
    subprocess.run([CNF, "fetch", "drive", "--source", "demo", "--out", str(resharded), "--shard-size", "2"],
                   check=True, capture_output=True)
    fresh, log = cnf_train(tmp_path, resharded, "train.steps=4", "train.checkpoint_every=4")
    assert "dataset changed since the stored run: starting fresh" in log, log[-3000:]
    assert fresh["resumed_from_step"] == 0 and fresh["steps"] == 4 and fresh["mlflow_run_id"] != first_run_id


@pytest.mark.slow
def test_killed_worker_is_restarted_from_the_last_checkpoint(tmp_path, shards):
    from pipelines.training.faults import CRASH_ENV, MARKER_FILE

    # Test-only fault injection goes through the environment: params.yaml cannot ask for a crash.
    metrics, log = cnf_train(tmp_path, shards, "train.steps=10", "train.checkpoint_every=3",
                             "scaling.num_workers=2", "scaling.max_failures=2", env_extra={CRASH_ENV: "5"})
    assert (tmp_path / "runs" / EXP / MARKER_FILE).exists()
    assert "simulated worker crash at step 5" in log, log[-4000:]
    assert metrics["steps"] == 10 and metrics["resumed_from_step"] == 3, log[-4000:]


@pytest.mark.slow
def test_a_diverged_run_fails_at_once_and_keeps_the_last_good_model(tmp_path, shards):
    model = tmp_path / "models" / f"{EXP}.pt"
    model.parent.mkdir(parents=True)
    model.write_bytes(b"the last good model")
    proc = cnf_train(tmp_path, shards, "train.lr=1e6", "train.grad_clip=null", "train.steps=40",
                     "train.checkpoint_every=2", "train.max_nonfinite=3", "scaling.max_failures=2", check=False)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 1, log[-5000:]
    assert f"cnf train {EXP}: {EXP}: training diverged at step " in proc.stderr, log[-5000:]
    assert "(not retried" in proc.stderr and "[FailurePolicy] RETRY" not in log, log[-5000:]
    assert log.count("Attempting to start training worker group") == 1, log[-5000:]  # one attempt, no restart
    assert model.read_bytes() == b"the last good model" and not (tmp_path / "metrics" / f"{EXP}.json").exists()
    run_id = (tmp_path / "runs" / EXP / "mlflow_run_id").read_text().strip()
    assert client(f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(run_id).info.status == "FAILED"


def test_a_misspelt_model_key_is_refused_before_ray_starts(tmp_path, monkeypatch, capsys):
    import ray

    from pipelines.stages.cli import main

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["experiments"][EXP]["model"]["encdoer"] = "vgg"
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw))

    def no_ray(*args, **kwargs):
        raise AssertionError("cnf train started Ray with invalid params")

    monkeypatch.setattr(ray, "init", no_ray)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    t0 = time.monotonic()
    code = main(["train", EXP, "--params", str(params), "--data", str(tmp_path / "drive"),
                 "--storage", str(tmp_path / "runs"), "--model-out", str(tmp_path / "model.pt"),
                 "--metrics-out", str(tmp_path / "metrics.json")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"experiments.{EXP}.model.encdoer: unknown key for family 'cnf'; allowed keys: family, levels, steps, " \
           "hidden, encoder," in err
    assert time.monotonic() - t0 < 10
    assert not any(tmp_path.glob("runs")) and not (tmp_path / "mlflow.db").exists()  # nothing was started


@pytest.mark.slow
def test_training_twice_gives_bit_identical_weights_and_the_same_metrics_and_evaluation(tmp_path, shards):
    """Reproducibility (issue 14): the same experiment trained twice in fresh, separate folders and stores gives
    the same weights bit for bit, the same scientific metrics (timings excepted) and the same evaluation."""
    import torch

    from pipelines.training.driver import TIMING_KEYS

    runs = []
    for name in ("a", "b"):
        tmp = tmp_path / name
        tmp.mkdir()
        metrics, _ = cnf_train(tmp, shards, "train.steps=6", "train.checkpoint_every=3")
        proc = subprocess.run(
            [CNF, "evaluate", EXP, "--params", str(ROOT / "params.yaml"), "--data-root", str(shards.parent),
             "--model", str(tmp / "models" / f"{EXP}.pt"), "--train-info", str(tmp / "runs" / EXP / "train_info.json"),
             "--sweeps", str(tmp / "no-sweeps"), "--out", str(tmp / "eval.json"), "--info-out",
             str(tmp / "eval_info.json"), "--plots-out", str(tmp / "eval_pr.json"), "--set", "eval.n_samples=2",
             *[a for s in TINY for a in ("--set", s)]],
            cwd=tmp, env=os.environ | {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}"},
            capture_output=True, text=True, timeout=400)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        runs.append((metrics, torch.load(tmp / "models" / f"{EXP}.pt", map_location="cpu", weights_only=False),
                     {"metrics": json.loads((tmp / "eval.json").read_text()),
                      "info": json.loads((tmp / "eval_info.json").read_text()),
                      "pr": json.loads((tmp / "eval_pr.json").read_text())}))
    (m1, c1, e1), (m2, c2, e2) = runs
    science = json.loads((tmp_path / "a" / "metrics" / f"{EXP}.json").read_text()).keys() - set(TIMING_KEYS)
    assert {k: m1[k] for k in science} == {k: m2[k] for k in science}
    assert c1["state_dict"].keys() == c2["state_dict"].keys()
    for key, value in c1["state_dict"].items():
        assert torch.equal(value, c2["state_dict"][key]), key
    assert e1["info"]["mlflow_run_id"] != e2["info"]["mlflow_run_id"]  # two stores, two runs
    assert e1["metrics"] == e2["metrics"] and e1["info"]["splits"] == e2["info"]["splits"] and e1["pr"] == e2["pr"]


@pytest.mark.slow
def test_train_seeds_runs_each_seed_as_its_own_run_beside_the_experiment(tmp_path, shards):
    """train.seeds: 2 -> run 0 is the experiment (models/<exp>.pt), run 1 trains with seed + 1 into
    models/<exp>.seeds/seed1.pt with its own Ray run folder, MLflow run and bookkeeping."""
    import torch

    from flowlib.checkpoint import load_checkpoint

    metrics, _ = cnf_train(tmp_path, shards, "train.steps=4", "train.checkpoint_every=4", "train.seeds=2")
    seeds = tmp_path / "models" / f"{EXP}.seeds"
    assert sorted(p.name for p in seeds.iterdir()) == ["seed1.info.json", "seed1.json", "seed1.pt"]
    info0 = json.loads((tmp_path / "runs" / EXP / "train_info.json").read_text())
    info1 = json.loads((seeds / "seed1.info.json").read_text())
    assert info1["experiment"] == f"{EXP}-seed1" and info1["mlflow_run_id"] != info0["mlflow_run_id"]
    assert json.loads((seeds / "seed1.json").read_text())["steps"] == 4 and metrics["steps"] == 4
    assert (tmp_path / "runs" / f"{EXP}-seed1").is_dir()
    a, b = load_checkpoint(tmp_path / "models" / f"{EXP}.pt"), load_checkpoint(seeds / "seed1.pt")
    assert b["experiment"] == f"{EXP}-seed1"
    assert any(not torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    from mlflow import MlflowClient

    run = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(info1["mlflow_run_id"])
    assert run.data.params["train.seed"] == "1" and run.info.status == "FINISHED"


@pytest.mark.slow
def test_sigterm_stops_training_with_exit_130_and_the_mlflow_run_killed(tmp_path, shards):
    """`kill` (and DVC's cancellation) mid-run: exit 130, MLflow KILLED, no abort dump, no Ray process left;
    ray.init replaced the handler with sys.exit(1) (FAILED) and absl's (exit -6) until it was restored."""
    import psutil

    proc = cnf_train(tmp_path, shards, "train.steps=400", "train.checkpoint_every=4", popen=True)
    lines: list[str] = []
    committed = threading.Event()

    def drain():
        for line in proc.stdout:
            lines.append(line)
            if "checkpoint at step 4 committed" in line:
                committed.set()

    threading.Thread(target=drain, daemon=True).start()
    try:
        assert committed.wait(timeout=240), "".join(lines)[-5000:]
        children = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 130, "".join(lines)[-5000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    time.sleep(2)
    out = "".join(lines)
    assert "interrupted" in out and "SIGTERM received" not in out, out[-3000:]
    run_id = (tmp_path / "runs" / EXP / "mlflow_run_id").read_text().strip()
    assert client(f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(run_id).info.status == "KILLED"
    left = [p for p in children if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert not left, [psutil.Process(p).cmdline()[:3] for p in left]


@pytest.mark.slow
def test_model_selection_exports_the_checkpoint_with_the_lowest_held_out_bits_per_dim(tmp_path, shards):
    """train.select with data.holdout: every checkpoint (and the end) scores the held-out images; the exported
    model is the best of them, recorded in the metrics and in MLflow, and equal to that step's weights."""
    import torch

    from flowlib.checkpoint import load_checkpoint

    metrics, out = cnf_train(tmp_path, shards, "train.steps=6", "train.checkpoint_every=2", "train.select=true",
                             "data.holdout=2", "train.lr=0.05")
    history = {m.step: m.value for m in client(f"sqlite:///{tmp_path / 'mlflow.db'}")
               .get_metric_history(metrics["mlflow_run_id"], "select_bpd")}
    assert sorted(history) == [2, 4, 6]
    best_step = min(history, key=lambda s: (history[s], s))
    assert metrics["selected_step"] == best_step and metrics["select_bpd"] == pytest.approx(history[best_step])
    exported = load_checkpoint(tmp_path / "models" / f"{EXP}.pt")
    assert exported["step"] == best_step and exported["select_bpd"] == pytest.approx(history[best_step])
    assert "held-out bpd" in out
