"""Fault injection against the real CLI: every fault case of issue 16, each in its own temp folder.

    python benchmarks/fault_injection.py [--cases NAME ...] [--keep] [--no-cluster]

Each case runs real `cnf` subprocesses (train, fetch, evaluate, score, tables) on the demo DRIVE shards with a
tiny model (a few steps), injects one fault (bad params, divergence, corrupted or truncated shards, concurrent
writers, SIGKILL, SIGTERM, an unreadable checkpoint, an unreachable tracking store, an unwritable model path,
0/1 masks, missing evaluation results) and checks what the CLI did against what issue 16 asks for. The
``cleanup`` column lists what a case left behind: files that are not results (``*.tmp*``, ``.*.lock``,
``.scratch*``) and our processes still running (drivers, and Train workers or controllers on the Ray head).

By default one private Ray head (``ray start --head --block`` in its own process group, its own temp dir, a
free port) serves every training case through ``RAY_ADDRESS``, so a case costs its training, not a Ray
start-up; ``--no-cluster`` lets every run start its own local Ray. The head is stopped by process group at the
end, never with `ray stop`. Prints a markdown table: case | expected | observed | result | cleanup; exits 1
when a case fails.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import ray_head  # benchmarks/ray_head.py (the script's folder is on sys.path)
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
EXP = "drive_cnf"
TINY = ["model.levels=1", "model.steps=1", "model.hidden=8", "data.patch=16", "train.batch_size=2",
        "train.log_every=2", "train.lr=1e-3"]
LEFTOVER_PATTERNS = ("*.tmp*", ".*.lock", ".scratch*", "*.partial")


free_port = ray_head.free_port


# -------------------------------------------------------------------------------------------- environment


@dataclass
class Env:
    """What every case shares: the demo shards (read-only copies are made per case), the Ray head address."""

    work: Path
    shards: Path  # a pristine demo DRIVE shard folder
    address: str | None
    head: subprocess.Popen | None = None

    def base_env(self, tmp: Path) -> dict:
        env = os.environ.copy()
        env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp / 'mlflow.db'}"
        env.pop("RAY_ADDRESS", None)
        if self.address:
            env["RAY_ADDRESS"] = self.address
        return env


def start_head(temp_dir: str) -> tuple[subprocess.Popen, str]:
    dashboard = free_port()
    env = os.environ.copy()
    env.pop("RAY_ADDRESS", None)
    # The Train controller's PlacementGroupCleaner looks up the State API; point it at this head, not at
    # whatever other Ray instance runs on the machine (pipelines.training.cluster.state_api_env).
    env["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{dashboard}"
    return ray_head.start_head(2, temp_dir, env=env, extra_args=("--dashboard-port", str(dashboard)))


def tree(pid: int) -> list[int]:
    import psutil

    try:
        return [pid, *(c.pid for c in psutil.Process(pid).children(recursive=True))]
    except psutil.NoSuchProcess:
        return []


def kill_tree(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """``sig`` to ``proc``'s process group and every descendant (Ray workers leave the group)."""
    pids = tree(proc.pid)
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        pass


def train_actors_on_head(env: Env) -> list[str]:
    """Train workers and controllers still alive under our Ray head (none should outlive a case)."""
    import psutil

    if env.head is None:
        return []
    out = []
    for pid in tree(env.head.pid):
        try:
            name = " ".join(psutil.Process(pid).cmdline())[:60]
        except psutil.NoSuchProcess:
            continue
        if "RayTrainWorker" in name or "TrainController" in name:
            out.append(f"{pid}:{name.split()[0]}")
    return out


# ------------------------------------------------------------------------------------------------ commands


def cnf(args: list[str], tmp: Path, env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "cnf"), *args], cwd=tmp, env=env, capture_output=True, text=True,
                          timeout=timeout)


def train_args(tmp: Path, data: Path, *sets: str, address: str | None, model_out: Path | None = None,
               params: Path = ROOT / "params.yaml", tiny=TINY) -> list[str]:
    args = ["train", EXP, "--params", str(params), "--data", str(data), "--storage",
            str(tmp / "runs"), "--model-out", str(model_out or tmp / "models" / f"{EXP}.pt"),
            "--metrics-out", str(tmp / "metrics.json"), "--no-samples"]
    if not address:
        args += ["--num-cpus", "2"]
    for s in [*tiny, *sets]:
        args += ["--set", s]
    return args


def train(env: Env, tmp: Path, *sets: str, data: Path | None = None, extra_env: dict | None = None,
          model_out: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return cnf(train_args(tmp, data or env.shards, *sets, address=env.address, model_out=model_out), tmp,
               env.base_env(tmp) | (extra_env or {}), timeout)


def train_popen(env: Env, tmp: Path, *sets: str) -> subprocess.Popen:
    return subprocess.Popen([str(BIN / "cnf"), *train_args(tmp, env.shards, *sets, address=env.address)], cwd=tmp,
                            env=env.base_env(tmp), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def watch(proc: subprocess.Popen, needle: str, timeout: float) -> tuple[bool, list[str]]:
    """Read ``proc``'s output on a thread until ``needle`` appears (True) or ``timeout`` passes."""
    lines: list[str] = []
    seen = threading.Event()

    def drain():
        for line in proc.stdout:
            lines.append(line)
            if needle in line:
                seen.set()

    threading.Thread(target=drain, daemon=True).start()
    return seen.wait(timeout), lines


def run_status(tmp: Path, run_id: str | None = None) -> str:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}")
    if run_id is None:
        run_id = (tmp / "runs" / EXP / "mlflow_run_id").read_text().strip()
    return client.get_run(run_id).info.status


def metric_steps(tmp: Path, run_id: str, key: str = "train_nll") -> list[int]:
    from mlflow import MlflowClient

    return [m.step for m in MlflowClient(tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}").get_metric_history(run_id, key)]


def last_line(text: str) -> str:
    lines = [l for l in text.strip().splitlines() if l.strip()]
    return (lines[-1] if lines else "").strip()[:200]


# ------------------------------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    name: str
    expected: str
    run: Callable[[Env, Path], tuple[bool, str]]


def case_lr_inf(env, tmp):
    p = train(env, tmp, "train.lr=inf", "train.steps=2")
    ok = p.returncode == 2 and "train.lr" in p.stderr and not (tmp / "runs").exists()
    return ok, f"exit {p.returncode}: {last_line(p.stderr)}"


def case_negative_default_lr(env, tmp):
    import yaml

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["defaults"]["train"]["lr"] = -1e-3
    params = tmp / "params.yaml"
    params.write_text(yaml.safe_dump(raw, sort_keys=False))
    tiny = [s for s in TINY if not s.startswith("train.lr=")]  # an lr override would hide the bad default
    p = cnf(train_args(tmp, env.shards, "train.steps=2", address=env.address, params=params, tiny=tiny), tmp,
            env.base_env(tmp))
    ok = p.returncode == 2 and ".train.lr" in p.stderr and "-0.001" in p.stderr
    return ok, f"exit {p.returncode}: {last_line(p.stderr)}"


def case_diverged(env, tmp):
    model = tmp / "models" / f"{EXP}.pt"
    model.parent.mkdir(parents=True)
    model.write_bytes(b"the last good model")
    p = train(env, tmp, "train.lr=1e6", "train.grad_clip=null", "train.steps=40", "train.checkpoint_every=2",
              "train.max_nonfinite=3", "scaling.max_failures=2")
    status = run_status(tmp)
    kept = model.read_bytes() == b"the last good model"
    ok = p.returncode != 0 and status == "FAILED" and kept and "diverged" in p.stderr
    return ok, f"exit {p.returncode}, MLflow {status}, old model kept: {kept}; {last_line(p.stderr)}"


def case_lower_steps(env, tmp):
    first = train(env, tmp, "train.steps=4", "train.checkpoint_every=2")
    if first.returncode:
        return False, f"first run exit {first.returncode}: {last_line(first.stderr)}"
    run1 = (tmp / "runs" / EXP / "mlflow_run_id").read_text().strip()
    second = train(env, tmp, "train.steps=2", "train.checkpoint_every=2")
    run2 = (tmp / "runs" / EXP / "mlflow_run_id").read_text().strip()
    info = json.loads((tmp / "runs" / EXP / "train_info.json").read_text())
    log = second.stdout + second.stderr
    ok = second.returncode == 0 and "starting fresh" in log and info["resumed_from_step"] == 0 \
        and info["steps"] == 2 and run1 != run2
    return ok, (f"exit {second.returncode}, resumed_from_step {info['resumed_from_step']}, steps {info['steps']}, "
                f"new MLflow run: {run1 != run2}")


def _rewrite_member(tar_path: Path, suffix: str, payload: bytes | None) -> str:
    """Rewrite ``tar_path`` with the first member ending in ``suffix`` replaced by ``payload``; returns its name."""
    with tarfile.open(tar_path) as tar:
        members = [(m, tar.extractfile(m).read() if m.isfile() else None) for m in tar.getmembers()]
    target = next(m.name for m, _ in members if m.name.endswith(suffix))
    out = tar_path.with_suffix(".rewrite")
    with tarfile.open(out, "w") as tar:
        for m, data in members:
            if m.name == target:
                data = payload
                m.size = len(data)
            tar.addfile(m, __import__("io").BytesIO(data) if data is not None else None)
    out.replace(tar_path)
    return target


def case_corrupted_member(env, tmp):
    data = tmp / "drive"
    shutil.copytree(env.shards, data)
    shard = data / "train-000000.tar"
    member = _rewrite_member(shard, "target.png", b"\x89PNG not really")
    key = member.split(".", 1)[0]
    p = train(env, tmp, "train.steps=4", "train.checkpoint_every=2", "scaling.max_failures=0", data=data)
    log = p.stdout + p.stderr
    named = shard.name in log and repr(key) in log
    ok = p.returncode != 0 and named
    found = next((l for l in reversed(p.stderr.splitlines()) if shard.name in l), last_line(p.stderr))
    return ok, f"exit {p.returncode}, names {shard.name} and {key!r}: {named}; {found.strip()[:160]}"


def case_truncated_shard(env, tmp):
    data = tmp / "drive"
    p = cnf(["fetch", "drive", "--source", "demo", "--out", str(data)], tmp, env.base_env(tmp))
    shard = data / "train-000000.tar"
    size = shard.stat().st_size
    with open(shard, "r+b") as f:
        f.truncate(size // 2)
    p = cnf(["fetch", "drive", "--source", "demo", "--out", str(data)], tmp, env.base_env(tmp))
    manifest = json.loads((data / "manifest.json").read_text())
    import hashlib

    sha = hashlib.sha256(shard.read_bytes()).hexdigest()
    expected = next(s["sha256"] for s in manifest["splits"]["train"]["shards"] if s["name"] == shard.name)
    ok = p.returncode == 0 and shard.stat().st_size == size and sha == expected
    return ok, (f"re-fetch exit {p.returncode}, shard rebuilt ({shard.stat().st_size} of {size} bytes, "
                f"sha ok: {sha == expected})")


def case_concurrent_fetch(env, tmp):
    data = tmp / "drive"
    cmd = [str(BIN / "cnf"), "fetch", "drive", "--source", "demo", "--out", str(data)]
    procs = [subprocess.Popen(cmd, cwd=tmp, env=env.base_env(tmp), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    codes = [p.returncode for p in procs]
    verify = subprocess.run([sys.executable, "-c", "import sys; from pipelines.data import shards; "
                             "print(sum(1 for _ in shards.iter_samples(sys.argv[1], 'train')))", str(data)],
                            cwd=ROOT, capture_output=True, text=True)
    waited = any("lock" in o.lower() or "wait" in o.lower() for o in outs)
    ok = codes == [0, 0] and verify.stdout.strip() == "4"
    readable = verify.stdout.strip() or verify.stderr[-80:]
    return ok, f"exits {codes}, DEST readable ({readable} train samples), lock message: {waited}"


def case_concurrent_train(env, tmp):
    first = train_popen(env, tmp, "train.steps=400", "train.checkpoint_every=50")
    try:
        started, lines = watch(first, "MLflow run", 300)
        second = train(env, tmp, "train.steps=400", "train.checkpoint_every=50", timeout=300)
    finally:
        kill_tree(first)
    ok = started and second.returncode != 0 and ("lock" in second.stderr.lower() or "running" in second.stderr.lower())
    return ok, f"second exit {second.returncode}: {last_line(second.stderr)}"


def case_sigkill_resume(env, tmp):
    proc = train_popen(env, tmp, "train.steps=400", "train.checkpoint_every=4")
    try:
        committed, lines = watch(proc, "checkpoint at step 4 committed", 400)
    finally:
        kill_tree(proc)
    if not committed:
        return False, "no checkpoint committed before the kill: " + "".join(lines)[-160:]
    run_id = (tmp / "runs" / EXP / "mlflow_run_id").read_text().strip()
    import torch

    persisted = [4]
    for path in (tmp / "runs" / EXP).glob("checkpoint_*/train_state.pt"):
        try:
            persisted.append(torch.load(path, map_location="cpu", weights_only=False)["step"])
        except Exception:
            pass
    target = max(persisted) + 4
    p = train(env, tmp, f"train.steps={target}", "train.checkpoint_every=4")
    info = json.loads((tmp / "runs" / EXP / "train_info.json").read_text()) if p.returncode == 0 else {}
    steps = metric_steps(tmp, run_id)
    single = len(steps) == len(set(steps))
    ok = p.returncode == 0 and info.get("mlflow_run_id") == run_id and single and target in steps
    return ok, (f"rerun exit {p.returncode}, resumed from {info.get('resumed_from_step')}, same MLflow run: "
                f"{info.get('mlflow_run_id') == run_id}, {len(steps)} logged steps, single-valued: {single}")


def case_garbage_checkpoint(env, tmp):
    model = tmp / "garbage.pt"
    model.write_bytes(b"not a checkpoint at all")
    p = cnf(["evaluate", EXP, "--params", str(ROOT / "params.yaml"), "--model", str(model), "--data-root",
             str(env.shards.parent), "--out", str(tmp / "eval.json")], tmp, env.base_env(tmp))
    ok = p.returncode != 0 and str(model) in p.stderr and not (tmp / "eval.json").exists()
    return ok, f"exit {p.returncode}: {last_line(p.stderr)}"


def case_unreachable_tracking(env, tmp):
    uri = f"http://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    p = train(env, tmp, "train.steps=2", extra_env={"MLFLOW_TRACKING_URI": uri}, timeout=300)
    took = time.monotonic() - t0
    ok = p.returncode != 0 and uri in p.stderr and took < 60
    return ok, f"exit {p.returncode} after {took:.0f} s: {last_line(p.stderr)}"


def case_unwritable_model_out(env, tmp):
    blocker = tmp / "not-a-folder"
    blocker.write_text("a file where --model-out's folder should be")  # root ignores chmod; a file does not
    p = train(env, tmp, "train.steps=2", "train.checkpoint_every=2", model_out=blocker / "model.pt")
    status = run_status(tmp)
    ok = p.returncode != 0 and status == "FAILED" and "not-a-folder" in p.stderr
    return ok, f"exit {p.returncode}, MLflow {status}: {last_line(p.stderr)}"


def case_sigterm(env, tmp):
    proc = train_popen(env, tmp, "train.steps=400", "train.checkpoint_every=4")
    started, lines = watch(proc, "checkpoint at step 4 committed", 400)
    if started:
        os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        pass
    code = proc.poll()
    kill_tree(proc)
    status = run_status(tmp) if (tmp / "runs" / EXP / "mlflow_run_id").exists() else "no run"
    ok = started and code == 130 and status == "KILLED"
    return ok, f"exit {code}, MLflow {status}"


def case_binary_masks(env, tmp):
    import numpy as np
    from PIL import Image

    sys.path.insert(0, str(ROOT))
    from pipelines.data import shards

    f = {}
    for encoding, scale in (("01", 1), ("0255", 255)):
        folder = tmp / encoding
        folder.mkdir()
        for s in shards.iter_samples(str(env.shards), "test"):
            mask = np.asarray(s["target2.png"]) > 0
            Image.fromarray((mask * scale).astype(np.uint8)).save(folder / f"{s['__key__']}_manual2.png")
        p = cnf(["score", "vessel", "--data", str(env.shards), "--split", "test", "--pred", str(folder)], tmp,
                env.base_env(tmp))
        f[encoding] = json.loads(last_line(p.stdout))["f1"] if p.returncode == 0 else f"exit {p.returncode}"
    ok = f["01"] == f["0255"] and isinstance(f["01"], float)
    return ok, f"F 0/1 = {f['01']}, F 0/255 = {f['0255']}"


def case_missing_eval_json(env, tmp):
    (tmp / "metrics").mkdir()
    (tmp / "info").mkdir()
    p = cnf(["tables", "--params", str(ROOT / "params.yaml"), "--metrics", str(tmp / "metrics"), "--info",
             str(tmp / "info"), "--out", str(tmp / "tables"), "--figures", str(tmp / "figures")], tmp,
            env.base_env(tmp))
    ok = p.returncode != 0 and "eval/drive_cnf.json" in p.stderr and not any((tmp / "tables").glob("*"))
    return ok, f"exit {p.returncode}: {last_line(p.stderr)[:150]}"


CASES = [
    Case("params: train.lr=inf", "exit 2 naming the key, nothing started", case_lr_inf),
    Case("params: defaults.train.lr < 0", "exit 2 naming the key and value", case_negative_default_lr),
    Case("diverged run (lr 1e6)", "nonzero exit, MLflow FAILED, old model kept", case_diverged),
    Case("lower train.steps than stored", "trains fresh, new MLflow run", case_lower_steps),
    Case("corrupted shard member", "error names shard and key", case_corrupted_member),
    Case("truncated shard", "re-fetch rebuilds it", case_truncated_shard),
    Case("concurrent fetch, one DEST", "serialised by DEST's lock, DEST valid", case_concurrent_fetch),
    Case("concurrent train, one experiment", "second refuses", case_concurrent_train),
    Case("SIGKILL, then rerun", "resumes, one MLflow run, single-valued history", case_sigkill_resume),
    Case("garbage .pt", "error names the path", case_garbage_checkpoint),
    Case("unreachable MLFLOW_TRACKING_URI", "fails fast naming the URI", case_unreachable_tracking),
    Case("unwritable --model-out", "nonzero exit, MLflow FAILED", case_unwritable_model_out),
    Case("SIGTERM", "exit 130, MLflow KILLED", case_sigterm),
    Case("0/1 vs 0/255 masks", "identical F", case_binary_masks),
    Case("missing eval JSON for tables", "error names the missing file", case_missing_eval_json),
]


def lock_held(path: Path) -> bool:
    import fcntl

    with open(path, "rb") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
        return False


def leftovers(env: Env, tmp: Path, before: set[int]) -> str:
    import psutil

    files = []
    for path in sorted({p for pattern in LEFTOVER_PATTERNS for p in tmp.rglob(pattern)}):
        name = str(path.relative_to(tmp))
        if path.name.endswith(".lock") and path.is_file():
            name += " (held!)" if lock_held(path) else " (unheld lock file)"
        files.append(name)
    ours = [p for p in psutil.pids() if p not in before]
    procs = []
    for pid in ours:
        try:
            proc = psutil.Process(pid)
            if proc.status() != psutil.STATUS_ZOMBIE and str(tmp) in " ".join(proc.cmdline()):
                procs.append(f"{pid}:{Path(proc.cmdline()[0]).name}")
        except (psutil.NoSuchProcess, psutil.AccessDenied, IndexError):
            pass
    actors = train_actors_on_head(env)
    parts = ([f"files {files}"] if files else []) + ([f"processes {procs}"] if procs else []) + \
            ([f"Train actors {actors}"] if actors else [])
    return "; ".join(parts) or "none"


def main() -> int:
    import psutil

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", help="substrings of case names to run (default: all)")
    parser.add_argument("--keep", action="store_true", help="keep the temp folders")
    parser.add_argument("--no-cluster", dest="cluster", action="store_false",
                        help="every training run starts its own local Ray instead of joining one private head")
    args = parser.parse_args()
    cases = [c for c in CASES if not args.cases or any(s in c.name for s in args.cases)]
    work = Path(tempfile.mkdtemp(prefix="cnf-faults-"))
    ray_tmp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths must stay < 108 bytes
    head = address = None
    rows = []
    try:
        shards = work / "shards" / "drive"
        subprocess.run([str(BIN / "cnf"), "fetch", "drive", "--source", "demo", "--out", str(shards)], check=True,
                       capture_output=True)
        if args.cluster:
            head, address = start_head(ray_tmp)
        env = Env(work=work, shards=shards, address=address, head=head)
        for i, case in enumerate(cases):
            tmp = work / f"case{i:02d}"
            tmp.mkdir()
            before = set(psutil.pids())
            t0 = time.monotonic()
            try:
                ok, observed = case.run(env, tmp)
            except Exception as exc:  # a case that crashes is a failed case, not a failed suite
                ok, observed = False, f"{type(exc).__name__}: {exc}"[:200]
            time.sleep(1)
            cleanup = leftovers(env, tmp, before)
            rows.append((case.name, case.expected, f"{observed} ({time.monotonic() - t0:.0f} s)",
                         "pass" if ok else "fail", cleanup))
            print(f"[{'pass' if ok else 'FAIL'}] {case.name}: {observed}", file=sys.stderr, flush=True)
    finally:
        if head is not None:
            kill_tree(head)
        shutil.rmtree(ray_tmp, ignore_errors=True)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    cell = lambda s: str(s).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    print("| case | expected | observed | result | cleanup |")
    print("|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(cell(c) for c in row) + " |")
    if args.keep:
        print(f"\ncase folders kept in {work}")
    return 0 if all(r[3] == "pass" for r in rows) else 1


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
