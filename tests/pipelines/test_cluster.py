"""Connecting to Ray, without starting it: token auth for clusters on this machine, the workers' environment."""
from __future__ import annotations

import os

from pipelines.training.cluster import FORWARD_ENV, token_auth_for_local_cluster, worker_env


def test_token_auth_is_enabled_for_an_explicit_address_on_this_machine_only(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    for var in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(var, raising=False)
    token_auth_for_local_cluster("127.0.0.1:6379")
    assert "RAY_AUTH_MODE" not in os.environ  # no token: nothing to send
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("x" * 32)
    token_auth_for_local_cluster("203.0.113.9:6379")  # TEST-NET-3: never this machine
    assert "RAY_AUTH_MODE" not in os.environ  # the local token must not go to another host
    token_auth_for_local_cluster("127.0.0.1:6379")
    assert os.environ["RAY_AUTH_MODE"] == "token"
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    token_auth_for_local_cluster("localhost:6379")
    assert os.environ["RAY_AUTH_MODE"] == "disabled"  # an explicit choice stands


def test_workers_get_the_services_environment_and_the_tracking_store(monkeypatch):
    for var in FORWARD_ENV:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    env = worker_env("sqlite:////tmp/x.db")
    assert env == {"AWS_ENDPOINT_URL": "http://127.0.0.1:9000", "MLFLOW_TRACKING_URI": "sqlite:////tmp/x.db",
                   "RAY_CHDIR_TO_TRIAL_DIR": "0"}  # no secrets forwarded


def test_the_callers_sigterm_handler_survives_ray_init():
    """ray.init replaces SIGTERM's handler with sys.exit(1) (and absl's aborting one below Python): `cnf train`'s
    handler, which closes the MLflow run as KILLED, must be the one in force afterwards."""
    import signal

    from pipelines.training.cluster import keeping_sigterm_handler

    def ours(signum, frame):
        raise KeyboardInterrupt("signal SIGTERM")

    before = signal.signal(signal.SIGTERM, ours)
    try:
        with keeping_sigterm_handler():
            signal.signal(signal.SIGTERM, lambda s, f: (_ for _ in ()).throw(SystemExit(1)))  # what ray.init does
        assert signal.getsignal(signal.SIGTERM) is ours
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        with keeping_sigterm_handler():  # no Python handler before: Ray's stays
            signal.signal(signal.SIGTERM, ours)
        assert signal.getsignal(signal.SIGTERM) is ours
    finally:
        signal.signal(signal.SIGTERM, before)
