"""The Ray cluster a training run uses: ``$RAY_ADDRESS`` when set, otherwise a private local instance.

``init_ray`` joins the cluster at ``$RAY_ADDRESS`` ("auto", "host:port" or "ray://...") with token auth switched
on for addresses on this machine that have a token (``token_auth_for_local_cluster``), or starts a private
instance (``address="local"``, never someone else's cluster). ``worker_env`` is the environment the workers need
to reach the same services.
"""
from __future__ import annotations

import os
from pathlib import Path

# Environment a worker on a remote cluster needs to reach the same services (no secrets: configure those on
# the cluster itself).
FORWARD_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION")


class RayConnectError(RuntimeError):
    """``$RAY_ADDRESS`` names a cluster that ``ray.init`` could not join."""


def token_auth_for_local_cluster(address: str) -> None:
    """Set ``RAY_AUTH_MODE=token`` when ``address`` is a cluster on this machine and this user has a Ray token.

    ``ray start --head`` secures a cluster with the user's token (``~/.ray/auth_token``) by default, and
    ``ray.init(address="auto")`` turns token auth on by itself, but Ray 2.60 never does so for an explicit address
    such as ``127.0.0.1:6379`` (the same cluster then refuses the driver: "InvalidAuthToken"). For an address
    on this machine the local token is the right one and does not leave the host, so do what ``auto`` does;
    for a remote address the user's ``RAY_AUTH_MODE`` (or its absence) stands.
    """
    if os.environ.get("RAY_AUTH_MODE") is not None or address == "auto":
        return
    if not (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
            or (Path.home() / ".ray" / "auth_token").is_file()):
        return
    host = address.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
    local = {"localhost", "127.0.0.1", "::1", "0.0.0.0"}
    try:
        import psutil

        local |= {a.address.split("%")[0] for addrs in psutil.net_if_addrs().values() for a in addrs}
    except Exception:
        pass
    if host in local or host.startswith("127."):
        os.environ["RAY_AUTH_MODE"] = "token"


def init_ray(num_cpus_needed: float, num_cpus: int | None, use_gpu: bool):
    """Connect this process to Ray (see the module docstring) and return the ``ray`` module.

    A local instance gets ``num_cpus`` CPUs, by default what the workers need (``num_cpus_needed``) and at
    least every core; no GPUs unless ``use_gpu``.
    """
    # Workers must not chdir into the trial folder: every path we hand them is absolute anyway, but user
    # code that opens a relative path (e.g. params) would silently break.
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    # The Train controller polls the workers this often (Ray's default: 2 s; the trainer forwards the variable
    # to the controller). Every checkpoint waits for that poll to commit it (pipelines.training.checkpointing),
    # and the end of a fit is only seen on a poll, so a shorter interval shortens both; polling is cheap.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    # Train V2 patches the workers' print into its logger and, once anything has wrapped sys.stdout (MLflow
    # does), also tees it to stdout, so every progress line reached the driver twice. Plain prints reach the
    # driver once through Ray's log forwarding and still land in the worker's log file.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    address = os.environ.get("RAY_ADDRESS", "").strip()
    if address:
        token_auth_for_local_cluster(address)  # before Ray reads its configuration
    import ray

    if ray.is_initialized():
        return ray
    if address:
        # The driver only disconnects when it exits: the cluster stays up for the next stage.
        try:
            ray.init(address=address, log_to_driver=True, configure_logging=False)
        except Exception as exc:
            raise RayConnectError(
                f"could not join the Ray cluster at RAY_ADDRESS={address!r} ({type(exc).__name__}: {exc}); is it "
                "running (`ray status`)? A token-secured cluster also needs RAY_AUTH_MODE=token and its token "
                "(RAY_AUTH_TOKEN or ~/.ray/auth_token)") from exc
    else:
        # address="local" forces a private instance: a bare ray.init() silently joins any cluster that a
        # `ray start` on this machine left behind (another user's, with other resources and lifetime).
        cpus = num_cpus or max(int(num_cpus_needed + 0.999), os.cpu_count() or 1)
        ray.init(address="local", num_cpus=cpus, num_gpus=None if use_gpu else 0, include_dashboard=False,
                 log_to_driver=True, configure_logging=False)
    return ray


def worker_env(tracking_uri: str) -> dict[str, str]:
    """Environment variables for the Ray workers: ``FORWARD_ENV`` as set here, and the MLflow store to log to."""
    env = {k: os.environ[k] for k in FORWARD_ENV if os.environ.get(k)}
    env["MLFLOW_TRACKING_URI"] = tracking_uri
    env["RAY_CHDIR_TO_TRIAL_DIR"] = "0"
    return env
