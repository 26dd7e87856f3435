"""`alol serve-rewards`: the run's reward as an autoscaled Ray Serve deployment (HTTP + Python handle).

    alol serve-rewards --config configs/builtin.yaml                       # local Ray, serves until Ctrl-C
    alol serve-rewards --config configs/hh_pythia1b.yaml serve.num_gpus=0.5 serve.max_replicas=4
    ray job submit --runtime-env cluster/runtime_env.yaml -- alol serve-rewards --config ... --detach
    alol serve-rewards --shutdown                                          # on the cluster RAY_ADDRESS names

    curl -s -X POST http://127.0.0.1:8000/rewards -d '{"prompt": "...", "response": "..."}'

With --detach the command returns once the deployment is up and leaves it running on the cluster
(stop it with `alol serve-rewards --shutdown`); without it, Ctrl-C stops the service.
"""

from __future__ import annotations

import argparse
import time

from alol_ray.cli import add_config_arguments
from alol_ray.errors import UserError
from alol_ray.ray_utils import cluster_address, init_ray
from alol_ray.runs import RunPaths

USES_RUN = True
LOCKS_RUN = False  # reads the run's scoring statistics at most; several services may run at once


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--detach", action="store_true",
                        help="return once the deployment is running and leave it on the cluster")
    parser.add_argument("--status-every", type=float, default=30.0, metavar="S",
                        help="print the replica count every S seconds while serving (0 = never)")
    parser.add_argument("--shutdown", action="store_true", help="delete the reward application and exit")


def run(args: argparse.Namespace, session) -> int:
    # lazy: ray, alol_ray.scoring.serve, alol_ray.scoring.table (ray, pandas): the CLI starts without them
    from ray import serve  # Serve itself is only needed to serve

    from alol_ray.scoring import serve as reward_serve
    from alol_ray.scoring.table import reward_stats

    cfg = session.cfg
    sc = cfg.serve
    if (args.detach or args.shutdown) and cluster_address(cfg.ray) is None:
        what = "--detach leaves the service on" if args.detach else "--shutdown deletes the service from"
        raise UserError(f"{what} a running cluster, but none is named: set RAY_ADDRESS (e.g. auto, or "
                        "<head-ip>:6379) or ray.address, or run it as a `ray job submit` entrypoint")
    if args.shutdown:
        init_ray(cfg.ray)
        if sc.app_name not in serve.status().applications:
            print(f"no Serve application '{sc.app_name}' is running on this cluster: nothing to delete")
            return 0
        serve.delete(sc.app_name)
        print(f"deleted Serve application '{sc.app_name}'")
        return 0
    reward_serve.start(cfg, stats=reward_stats(cfg.reward, RunPaths.from_config(cfg).scored))
    names = ", ".join(c.name for c in cfg.reward.components)
    print(f"serving rewards [{names}] at {reward_serve.url(cfg)} (app '{sc.app_name}', "
          f"replicas {sc.min_replicas}..{sc.max_replicas}, target {sc.target_ongoing_requests} ongoing/replica)",
          flush=True)
    print(f"""  curl -s -X POST {reward_serve.url(cfg)} -d '{{"prompt": "...", "response": "..."}}'""", flush=True)
    if args.detach:
        return 0
    try:
        last = None
        while True:
            time.sleep(max(args.status_every, 1.0) if args.status_every > 0 else 3600)
            if args.status_every > 0:
                states = reward_serve.replica_states(sc.app_name)
                if states != last:
                    print(f"replicas: {states}", flush=True)
                    last = states
    except KeyboardInterrupt:
        serve.delete(sc.app_name)
        print("stopped", flush=True)
    return 0
