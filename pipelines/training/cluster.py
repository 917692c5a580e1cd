"""The Ray cluster a training run uses: ``$RAY_ADDRESS`` when set, otherwise a private local instance.

``init_ray`` joins the cluster at ``$RAY_ADDRESS`` ("auto", "host:port" or "ray://...") with token auth switched
on for addresses on this machine that have a token (``token_auth_for_local_cluster``), or starts a private
instance (``address="local"``, never someone else's cluster), then starts the cluster-wide actor that Ray Train's
controller otherwise creates on first use with a too-short timeout (``start_autoscaling_coordinator``).
``worker_env`` is the environment the workers need to reach the same services.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

# Environment a worker on a remote cluster needs to reach the same services (no secrets: configure those on
# the cluster itself).
FORWARD_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION")


# How long the cluster may take to start Ray's AutoscalingCoordinator actor (a new worker process that imports
# Ray Data): generous, since a loaded 2-core machine needs 5-15 s, but bounded so a broken cluster fails the run.
COORDINATOR_START_TIMEOUT_S = 180


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
        start_autoscaling_coordinator(ray)
        return ray
    with keeping_sigterm_handler():
        _connect(ray, address, num_cpus_needed, num_cpus, use_gpu)
    start_autoscaling_coordinator(ray)
    return ray


@contextlib.contextmanager
def keeping_sigterm_handler():
    """Restore the caller's Python SIGTERM handler after ``ray.init``, which replaces it: with ``sys.exit(1)``
    (a local instance; ``sys.exit(15)`` when joining a cluster) and, below Python, with absl's failure handler,
    which aborts the process (exit -6). `cnf train` turns SIGTERM into ``KeyboardInterrupt`` so that the MLflow
    run is closed KILLED (``pipelines.tracking.terminate_as_interrupt``); a local Ray instance is still torn
    down by ``ray.shutdown`` at exit. Nothing is restored when no Python handler was installed."""
    import signal
    import threading

    main = threading.current_thread() is threading.main_thread()
    before = signal.getsignal(signal.SIGTERM) if main else None
    try:
        yield
    finally:
        if main and callable(before):
            signal.signal(signal.SIGTERM, before)


def _connect(ray, address: str, num_cpus_needed: float, num_cpus: int | None, use_gpu: bool) -> None:
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
        port = _free_port()
        ray.init(address="local", num_cpus=cpus, num_gpus=None if use_gpu else 0, include_dashboard=False,
                 dashboard_port=port, runtime_env={"env_vars": state_api_env(port),
                                                   "worker_process_setup_hook": quiet_placement_group_cleaner},
                 log_to_driver=True, configure_logging=False)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def state_api_env(dashboard_port: int) -> dict[str, str]:
    """The environment that points Ray's State API clients in this job's actors at this instance's dashboard port.

    Ray Train's ``PlacementGroupCleaner`` actor asks the State API (served by the dashboard) every second whether
    the controller is alive, with no address: Ray then looks for "the" cluster on this machine
    (``services.canonicalize_bootstrap_address_or_die``): ``/tmp/ray/ray_current_cluster`` (the last
    `ray start`, possibly another user's cluster) or, failing that, every running GCS process. With a second
    Ray instance on the machine its monitor thread died with ``ConnectionError: Found multiple active Ray
    instances`` (a traceback in the driver's output) or asked the other cluster about our controller.
    ``RAY_API_SERVER_ADDRESS`` is the first thing that lookup reads. Without the dashboard (not installed with
    ``ray[train]``) nothing answers there, which the cleaner reports as a warning and retries (silenced by
    ``quiet_placement_group_cleaner``); with it, this is where it serves.
    """
    return {"RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{dashboard_port}"}


# The logger of Ray Train's PlacementGroupCleaner actor (ray/train/v2/_internal/execution/controller/).
CLEANER_LOGGER = "ray.train.v2._internal.execution.controller.placement_group_cleaner"


def quiet_placement_group_cleaner() -> None:
    """``worker_process_setup_hook`` of the private local instance: its PlacementGroupCleaner logs errors only.

    The cleaner (a detached actor Ray Train starts beside every controller) asks the State API once a second
    whether the controller is alive, to remove the run's placement group should the controller die without
    doing so. The State API is served by the dashboard, which a private instance does not run
    (``include_dashboard=False``; ``ray[train]`` does not install it), so every query failed with the warning
    "Failed to query Ray Train Controller actor state ... Continuing to monitor": about one line a second in
    every training log, burying the progress lines. Its job does not exist here: the private instance, placement
    groups and all, is shut down with the driver (``release_ray``). A joined cluster (``$RAY_ADDRESS``) keeps
    Ray's logging as it is.
    """
    import logging

    logging.getLogger(CLEANER_LOGGER).setLevel(logging.ERROR)


def start_autoscaling_coordinator(ray) -> None:
    """Start Ray's ``AutoscalingCoordinator`` actor (when this Ray has one) and wait until it serves calls.

    Ray Train 2.60's controller registers the run's resources with this detached, named actor as its first act
    and again when it shuts down, each time waiting ``AUTOSCALING_REQUESTS_GET_TIMEOUT_S`` = 5 s
    (``ray/train/v2/_internal/execution/scaling_policy/autoscaling_coordinator_client.py``). The first call also
    creates the actor: a new worker process that imports Ray Data and lists the nodes, which on a busy 2-core
    machine takes longer than 5 s. The controller then logged "Failed to send resource request" with a
    ``GetTimeoutError: Get timed out: some object(s) not ready`` traceback (harmless, but it
    reads like a failure). Created here first, with the options the controller uses (same name and namespace,
    ``get_if_exists``, on this node, where the controller is placed too), the controller finds it running and
    its calls return at once. Idempotent: a running coordinator is reused.
    """
    try:
        from ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator import (
            get_or_create_autoscaling_coordinator,
        )
    except ImportError:  # another Ray version: nothing to start (its controller does not use one, or has moved)
        return
    coordinator = get_or_create_autoscaling_coordinator()
    try:
        ray.get(coordinator.__ray_ready__.remote(), timeout=COORDINATOR_START_TIMEOUT_S)
    except Exception as exc:
        raise RayConnectError(f"Ray's AutoscalingCoordinator actor did not start within "
                              f"{COORDINATOR_START_TIMEOUT_S} s ({type(exc).__name__}: {exc}); is the cluster "
                              "overloaded or out of memory (`ray status`)?") from exc


def release_ray(ray) -> None:
    """Disconnect from Ray once a fit is over; a private local instance (``init_ray`` without ``$RAY_ADDRESS``)
    is shut down with it, a joined cluster stays up.

    By then the Train controller has shut its worker group down and stopped its helpers. Left to the interpreter's
    exit hook, the private instance (raylet, GCS, idle workers, log forwarding) would keep running, and printing
    its late log lines, through the export that follows (MLflow model logging, sample grids) on the same cores.
    """
    if ray.is_initialized():
        ray.shutdown()


def worker_env(tracking_uri: str) -> dict[str, str]:
    """Environment variables for the Ray workers: ``FORWARD_ENV`` as set here, and the MLflow store to log to."""
    env = {k: os.environ[k] for k in FORWARD_ENV if os.environ.get(k)}
    env["MLFLOW_TRACKING_URI"] = tracking_uri
    env["RAY_CHDIR_TO_TRIAL_DIR"] = "0"
    return env
