"""`alol serve-rewards`: the run's reward as an autoscaled Ray Serve deployment (HTTP + Python handle).

    alol serve-rewards --config configs/builtin.yaml                       # local Ray, serves until Ctrl-C
    alol serve-rewards --config configs/hh_pythia1b.yaml serve.num_gpus=0.5 serve.max_replicas=4
    ray job submit --runtime-env cluster/runtime_env.yaml -- alol serve-rewards --config ... --detach

    curl -s -X POST http://127.0.0.1:8000/rewards -d '{"prompt": "...", "response": "..."}'

With --detach the command returns once the deployment is up and leaves it running on the cluster
(stop it with `serve shutdown` or `alol serve-rewards --shutdown`); without it, Ctrl-C stops the service.
"""

from __future__ import annotations

import argparse

from alol_ray.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from alol_ray.cli import add_config_arguments

    add_config_arguments(parser)
    parser.add_argument("--detach", action="store_true",
                        help="return once the deployment is running and leave it on the cluster")
    parser.add_argument("--status-every", type=float, default=30.0, metavar="S",
                        help="print the replica count every S seconds while serving (0 = never)")
    parser.add_argument("--shutdown", action="store_true", help="delete the reward application and exit")


def run(args: argparse.Namespace) -> int:
    import os
    import time

    from ray import serve

    from alol_ray.config import load_config
    from alol_ray.ray_utils import init_ray
    from alol_ray.scoring import serve as reward_serve

    cfg = load_config(args.config, args.overrides)
    sc = cfg.serve
    if args.detach and not (cfg.ray.address or os.environ.get("RAY_ADDRESS")):
        raise UserError("--detach leaves the service on a running cluster, but none is named: run it as a "
                        "`ray job submit` entrypoint, or set RAY_ADDRESS / ray.address (a local Ray would stop "
                        "with this command)")
    if args.shutdown:
        init_ray(cfg.ray)
        serve.delete(sc.app_name)
        print(f"deleted Serve application '{sc.app_name}'")
        return 0
    reward_serve.start(cfg)
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
