"""A private Ray head on loopback for the benchmarks: started with `ray start --head --block` in its own process
group and stopped through that group (``ray stop`` would stop every Ray instance on the machine)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_head(num_cpus: int, temp_dir: str, *, env: dict | None = None,
               extra_args: tuple[str, ...] = ()) -> tuple[subprocess.Popen, str]:
    """``(process, "127.0.0.1:<port>")`` of a head with ``num_cpus`` CPUs and no GPU, once it listens."""
    port = free_port()
    proc = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(port),
         "--num-cpus", str(num_cpus), "--num-gpus", "0", "--include-dashboard=false", "--disable-usage-stats",
         "--temp-dir", temp_dir, *extra_args],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"`ray start --head` exited with status {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc, f"127.0.0.1:{port}"
        time.sleep(0.5)
    stop_head(proc)
    raise RuntimeError(f"Ray head did not listen on 127.0.0.1:{port} within 120 s")


def stop_head(proc: subprocess.Popen) -> None:
    """SIGTERM to the head's process group, SIGKILL after 30 s."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
