"""Starting or joining Ray the same way from every stage.

Which cluster: ``ray.address`` in the config, else the ``RAY_ADDRESS`` variable; none (or ``local``)
starts a private local Ray. Users have RAY_ADDRESS in several forms; each is understood or refused in one
line before anything runs:

- ``auto``: the cluster started with ``ray start`` on this machine;
- ``host:port`` (the GCS, port 6379 by default) or ``ray://host:port`` (Ray Client);
- ``http://host:8265``: the dashboard address that ``ray job submit`` uses (cluster/README.md exports it).
  A stage cannot join a cluster through it: that is an error that says what to set instead.
"""

from __future__ import annotations

import os
from typing import Optional

from alol_ray import ray_compat
from alol_ray.errors import ConfigError
from alol_ray.locations import endpoint_problem


def _given_address(ray_cfg=None) -> Optional[str]:
    return (ray_cfg.address if ray_cfg is not None else None) or os.environ.get("RAY_ADDRESS") or None


def cluster_address(ray_cfg=None) -> Optional[str]:
    """The address to join, or None for a private local Ray; ConfigError for one no stage can use."""
    address = _given_address(ray_cfg)
    if address in (None, "", "local"):
        return None
    if address.startswith(("http://", "https://")):
        raise ConfigError(
            f"RAY_ADDRESS={address} is a dashboard (job submission) address; a stage cannot join a cluster through "
            "it. Run the stage with `ray job submit --address ... -- alol ...`, set RAY_ADDRESS=auto (a cluster "
            "on this machine) or <head-ip>:6379, or unset RAY_ADDRESS for a local Ray")
    return address


ADDRESS_TIMEOUT_S = 5.0  # a cluster whose GCS does not accept a connection by then is reported, not retried


def check_address(ray_cfg=None) -> Optional[str]:
    """``cluster_address``, and for a ``host:port`` or ``ray://host:port`` address, that something accepts
    connections there within seconds: Ray itself retries an address where nothing listens for minutes."""
    address = cluster_address(ray_cfg)
    if address is None or address == "auto":
        return address
    where = "ray.address" if ray_cfg is not None and ray_cfg.address else "RAY_ADDRESS"
    host, sep, port = address.split("://", 1)[-1].rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"{where}={address} is not host:port (e.g. 10.0.0.1:6379), ray://host:10001 or auto")
    problem = endpoint_problem(host.strip("[]"), int(port), timeout=ADDRESS_TIMEOUT_S)
    if problem:
        raise ConfigError(f"{where}={address}: nothing answers there ({problem}): start the cluster with "
                          "`ray start --head`, fix the address, or unset it for a local Ray")
    return address


# Ray starts its worker processes at niceness 15, below the driver. In a local Ray the workers are the job (Train
# workers, scorers, generators): at 15 they starve whenever another process on the machine is busy -- on a shared
# 2-core machine with one busy loop per core a Train worker got ~7% of a core -- while a plain training script next
# to it runs at 0. The raylet reads this variable when it starts; a value the user set wins.
WORKER_NICENESS_ENV = "RAY_worker_niceness"
LOCAL_WORKER_NICENESS = "0"
# Ray Train 2.60 starts a PreemptionWatcher actor beside every Train job: a worker process of its own that asks the
# GCS every 5 s whether a node of the job is being drained (spot preemption). A local Ray is one machine that is
# never drained, and the watcher's start-up (importing Ray Train, ~0.8 CPU s) lands on the first training steps:
# 82 of the 628 CPU ms per step of a 10-step bench run (bench/step_profile.py --ray). Read by the Train controller,
# which inherits the raylet's environment; a value the user set wins.
PREEMPTION_WATCHER_ENV = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"
LOCAL_RAY_ENV = {WORKER_NICENESS_ENV: LOCAL_WORKER_NICENESS, PREEMPTION_WATCHER_ENV: "0"}


def local_ray_environment() -> None:
    """The environment the local Ray started next runs with, where the user has not set it: workers at the
    driver's priority, and no Ray Train preemption watcher."""
    for name, value in LOCAL_RAY_ENV.items():
        os.environ.setdefault(name, value)


def init_ray(ray_cfg=None, **overrides):
    """Join the cluster (``cluster_address``) or start a local Ray. Idempotent within a process.

    Given a config, also sets the Ray Train controller's poll interval for the Train jobs this process
    starts (``ray.train_poll_s``; see ``ray_compat.TRAIN_POLL_ENV``).
    """
    # lazy: ray (the CLI starts without it)
    import ray

    if ray_cfg is not None:
        ray_compat.set_train_poll_interval(ray_cfg.train_poll_s)
    if ray.is_initialized():
        return ray
    address = overrides.pop("address", None) or check_address(ray_cfg)
    kwargs = {"ignore_reinit_error": True, "log_to_driver": True}
    if address:
        try:
            ray.init(address=address, **kwargs, **overrides)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = "ray.address" if ray_cfg is not None and ray_cfg.address else "RAY_ADDRESS"
            raise ConfigError(f"cannot join the Ray cluster at {where}={address}: {str(exc).splitlines()[0]} "
                              "(start it with `ray start --head`, fix the address, or unset it for a local Ray)") from None
        return ray
    ray_compat.reap_orphaned_sessions()  # what a killed driver's local Ray left running
    local_ray_environment()
    num_cpus = overrides.pop("num_cpus", None) or (ray_cfg.num_cpus if ray_cfg else None)
    env_vars = {"PYTHONPATH": os.pathsep.join(p for p in (os.getcwd(), os.environ.get("PYTHONPATH")) if p)}
    overrides.setdefault("runtime_env", {"worker_process_setup_hook": "alol_ray.ray_compat.quiet_local_ray",
                                         "env_vars": env_vars})
    ray.init(
        address="local",  # never join a cluster someone else started with `ray start` by accident
        num_cpus=num_cpus,
        include_dashboard=False,  # a local run needs no dashboard; clusters bind it to 127.0.0.1
        **kwargs,
        **overrides,
    )
    ray_compat.record_local_session()
    return ray


def is_local_ray(ray_cfg=None) -> bool:
    """Whether init_ray starts (or started) a local Ray of this machine's fixed size: no autoscaler adds
    resources."""
    return cluster_address(ray_cfg) is None
