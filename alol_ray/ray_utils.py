"""Starting or joining Ray the same way from every stage."""

from __future__ import annotations

import os


TRAIN_POLL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"  # Ray Train v2: the controller's worker-poll interval


def init_ray(ray_cfg=None, **overrides):
    """Join RAY_ADDRESS / `ray.address` if given ("auto" = the cluster on this machine), else start a local Ray.

    Idempotent: a second call in the same process returns the running instance. Given a config, also sets
    the Ray Train controller's poll interval for the Train jobs this process starts (``ray.train_poll_s``);
    every stage that starts a Train job calls it with one first.
    """
    import ray

    if ray_cfg is not None:
        # Read from this process's environment when a Train job starts; Ray passes it on to the controller.
        os.environ[TRAIN_POLL_ENV] = str(ray_cfg.train_poll_s)
    if ray.is_initialized():
        return ray
    address = overrides.pop("address", None) or _address(ray_cfg)
    kwargs = {"ignore_reinit_error": True, "log_to_driver": True}
    if address:
        ray.init(address=address, **kwargs, **overrides)
    else:
        num_cpus = overrides.pop("num_cpus", None) or (ray_cfg.num_cpus if ray_cfg else None)
        overrides.setdefault("runtime_env", {"worker_process_setup_hook": "alol_ray.ray_utils.quiet_ray_internals"})
        ray.init(
            address="local",  # never join a cluster someone else started with `ray start` by accident
            num_cpus=num_cpus,
            include_dashboard=False,  # a local run needs no dashboard; clusters bind it to 127.0.0.1
            **kwargs,
            **overrides,
        )
    return ray


def _address(ray_cfg=None):
    """The cluster to join: ``ray.address``, else RAY_ADDRESS; None (or "local") starts a local Ray."""
    return (ray_cfg.address if ray_cfg else None) or os.environ.get("RAY_ADDRESS")


def is_local_ray(ray_cfg=None) -> bool:
    """Whether init_ray starts (or started) a local Ray of this machine's fixed size, i.e. no cluster address
    is given: no autoscaler will add resources."""
    return _address(ray_cfg) in (None, "", "local")


# Ray-internal loggers that flood a local run's console: Train's placement-group cleaner warns every few
# seconds that the State API is unavailable (it is served by the dashboard, which a local run does not start).
NOISY_LOGGERS = ("ray.train.v2._internal.execution.controller.placement_group_cleaner",)


def quiet_ray_internals() -> None:
    """worker_process_setup_hook of the local Ray instance: raise the noisy loggers to ERROR."""
    import logging

    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
