"""`cnf train` against real Ray clusters started here (pipelines/training/cluster.py, driver.fit).

- A successful run's output holds no traceback, also with a second Ray instance on the machine (the Train
  controller's AutoscalingCoordinator call and the PlacementGroupCleaner's State API lookup used to print one),
  nor the cleaner's once-a-second warning that the State API (no dashboard here) did not answer.
- A two-node cluster on loopback (a head and a second node, 1 CPU each, so one worker lands on each) loses
  its second node mid-run; the node rejoins and the run recovers from the last committed checkpoint into the
  same MLflow run, with a single-valued step history. Shards and Ray storage live on the loopback S3 server.

Every Ray process is started here, in its own process group with its own temp dir, and killed here by process
id: never `ray stop`, which stops every Ray instance on the machine.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
EXP = "drive_cnf"
TINY = ["model.levels=1", "model.steps=1", "model.hidden=8", "data.patch=16", "train.batch_size=2",
        "train.log_every=2", "train.lr=1e-3"]


def ray_env() -> dict:
    env = os.environ.copy()
    env.pop("RAY_ADDRESS", None)
    if (Path.home() / ".ray" / "auth_token").is_file() and "RAY_AUTH_MODE" not in env:
        env["RAY_AUTH_MODE"] = "token"  # `ray start` secures the cluster with this user's token
    return env


class RayProcess:
    """One `ray start --block` (a head or a node joining ``address``) in its own process group."""

    def __init__(self, tmp: Path, name: str, *, address: str | None = None, dashboard_port: int | None = None,
                 resources: dict | None = None):
        self.port = free_port() if address is None else None
        self.temp_dir = None
        self.address = address or f"127.0.0.1:{self.port}"
        self.dashboard_port = dashboard_port or free_port()
        cmd = [str(BIN / "ray"), "start", "--block", "--node-ip-address", "127.0.0.1", "--num-cpus", "1",
               "--num-gpus", "0", "--disable-usage-stats"]
        if address is None:
            # A short temp dir of its own: Ray's socket paths must stay under 107 bytes (pytest's do not).
            self.temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
            cmd += ["--head", "--port", str(self.port), "--include-dashboard=false",
                    "--dashboard-port", str(self.dashboard_port), "--temp-dir", self.temp_dir]
        else:
            cmd += ["--address", address]
        if resources:
            cmd += ["--resources", json.dumps(resources)]
        env = ray_env()
        # The Train controller's PlacementGroupCleaner asks the State API about the controller; without an
        # address it looks for "the" cluster on this machine (see pipelines.training.cluster.state_api_env).
        env["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{self.dashboard_port}"
        self.log = open(tmp / f"ray-{name}.log", "w")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        self.seen: set[int] = {self.proc.pid}

    def tree(self) -> list[int]:
        import psutil

        try:
            pids = [self.proc.pid, *(c.pid for c in psutil.Process(self.proc.pid).children(recursive=True))]
        except psutil.NoSuchProcess:
            pids = []
        self.seen.update(pids)
        return pids

    def kill(self) -> None:
        """SIGKILL the process group and every process this node ever had (workers may leave the group)."""
        import psutil

        self.tree()
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for pid in self.seen:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=30)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"
                                                  for p in self.seen):
            time.sleep(0.2)
        self.log.close()
        if self.temp_dir:
            shutil.rmtree(self.temp_dir, ignore_errors=True)

    def alive(self) -> list[int]:
        import psutil

        out = []
        for p in self.seen:
            try:
                if psutil.Process(p).status() != psutil.STATUS_ZOMBIE:
                    out.append(p)
            except psutil.NoSuchProcess:
                pass
        return out


def alive_nodes(address: str) -> int:
    proc = subprocess.run([str(BIN / "ray"), "status", "--address", address], capture_output=True, text=True,
                          env=ray_env(), timeout=120)
    text = proc.stdout
    if "Active:" not in text:
        return 0
    active = text.split("Active:", 1)[1].split("Pending:", 1)[0]
    return sum(1 for line in active.splitlines() if "node_" in line)


def wait_for_nodes(address: str, n: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if alive_nodes(address) >= n:
            return
        time.sleep(1)
    raise TimeoutError(f"the cluster at {address} did not reach {n} alive nodes in {timeout} s")


def cnf_train(tmp: Path, data: str, storage: str, *sets: str, address: str | None = None) -> subprocess.Popen:
    env = ray_env()
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp / 'mlflow.db'}"
    if address:
        env["RAY_ADDRESS"] = address
    cmd = [str(BIN / "cnf"), "train", EXP, "--params", str(ROOT / "params.yaml"), "--data", data,
           "--storage", storage, "--state-dir", str(tmp / "state"), "--model-out", str(tmp / "model.pt"),
           "--metrics-out", str(tmp / "metrics.json"), "--no-samples"]
    if not address:
        cmd += ["--num-cpus", "2"]
    for s in [*TINY, *sets]:
        cmd += ["--set", s]
    return subprocess.Popen(cmd, cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


@pytest.fixture(scope="module")
def demo_shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("shards") / "drive"
    subprocess.run([str(BIN / "cnf"), "fetch", "drive", "--source", "demo", "--out", str(out)], check=True,
                   capture_output=True)
    return out


@pytest.mark.slow
def test_a_successful_run_prints_no_traceback_even_beside_another_ray_instance(tmp_path, demo_shards):
    other = RayProcess(tmp_path, "other")  # someone else's cluster on this machine, as on a shared host
    try:
        wait_for_port(other.port, timeout=120, proc=other.proc)
        proc = cnf_train(tmp_path, str(demo_shards), str(tmp_path / "runs"), "train.steps=4",
                         "train.checkpoint_every=2")
        out, _ = proc.communicate(timeout=400)
    finally:
        other.kill()
    assert proc.returncode == 0, out[-5000:]
    assert f"[{EXP}] done: 4 steps" in out, out[-3000:]
    for sign in ("Traceback", "GetTimeoutError", "Failed to send resource request", "multiple active Ray",
                 "Failed to query Ray Train Controller"):
        assert sign not in out, out[max(0, out.find(sign) - 3000):out.find(sign) + 2000]
    assert not other.alive()


@pytest.mark.slow
def test_two_node_cluster_recovers_when_a_node_is_lost_and_rejoins(tmp_path, s3_server, s3_bucket):
    from mlflow import MlflowClient

    data, storage = f"s3://{s3_bucket}/shards/drive", f"s3://{s3_bucket}/runs"
    subprocess.run([str(BIN / "cnf"), "fetch", "drive", "--source", "demo", "--out", data], check=True,
                   capture_output=True, timeout=300)
    head = RayProcess(tmp_path, "head", resources={"head_slot": 1})
    nodes: list[RayProcess] = []
    train = None
    lines: list[str] = []
    try:
        wait_for_port(head.port, timeout=120, proc=head.proc)
        nodes.append(RayProcess(tmp_path, "node-1", address=head.address, dashboard_port=head.dashboard_port,
                                resources={"node_slot": 1}))
        wait_for_nodes(head.address, 2)
        checkpoint_every, steps = 4, 24
        train = cnf_train(tmp_path, data, storage, f"train.steps={steps}", f"train.checkpoint_every={checkpoint_every}",
                          "scaling.num_workers=2", "scaling.max_failures=3", address=head.address)
        committed = threading.Event()

        def drain():
            for line in train.stdout:
                lines.append(line)
                if " committed" in line and "checkpoint at step" in line:
                    committed.set()

        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
        assert committed.wait(timeout=300), "".join(lines)[-5000:]
        seen = max(int(l.split("checkpoint at step ")[1].split()[0]) for l in lines if " committed" in l)
        # The second node dies: its raylet's process group and every process it started.
        nodes[-1].kill()
        assert not nodes[-1].alive()
        # It comes back (what an autoscaler or a node restart does); the run waits for it and resumes.
        nodes.append(RayProcess(tmp_path, "node-2", address=head.address, dashboard_port=head.dashboard_port,
                                resources={"node_slot": 1}))
        train.wait(timeout=400)
        reader.join(timeout=30)
    finally:
        if train is not None and train.poll() is None:
            os.killpg(train.pid, signal.SIGKILL)
            train.wait(timeout=30)
        for node in reversed(nodes):
            node.kill()
        head.kill()
    log = "".join(lines)
    assert train.returncode == 0, log[-6000:]
    assert not head.alive() and not any(n.alive() for n in nodes)  # nothing of ours is left running
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    info = json.loads((tmp_path / "state" / "train_info.json").read_text())
    assert metrics["steps"] == steps and info["num_workers"] == 2, log[-4000:]
    # The worker group was restarted after the loss, from a checkpoint no older than the last one committed
    # before the kill: at most one checkpoint interval of training was lost.
    assert log.count("Started training worker group of size 2") >= 2, log[-6000:]
    assert seen <= info["resumed_from_step"] < steps and info["resumed_from_step"] % checkpoint_every == 0, \
        (seen, info, log[-4000:])
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [r.info.run_id for r in runs] == [info["mlflow_run_id"]]  # ONE MLflow run
    assert runs[0].info.status == "FINISHED"
    logged = [m.step for m in client.get_metric_history(info["mlflow_run_id"], "train_nll")]
    assert len(logged) == len(set(logged)) and steps in logged, sorted(logged)  # single-valued step history
