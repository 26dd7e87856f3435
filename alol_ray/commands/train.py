"""`alol train`: train a policy with one method on the run's data (Ray Train).

    alol train --config configs/builtin.yaml --algo a_lol --seed 0 train.steps=300
    alol train --algo nll --reference                 # train pi_ref (reference.train section)
    alol train --algo a_lol --table my_scored.parquet --init runs/x/train/reference-s0/best
    alol train --algo a_lol --stop-at-step 50         # stop after step 50's checkpoint; rerun to go on

Missing prerequisites are built first (rows, base policy, pi_ref, scored table, value table when the
method needs advantages); finished stages are skipped and an interrupted training run resumes.
"""

from __future__ import annotations

import argparse

from alol_ray.cli import add_config_arguments
from alol_ray.config import load_config
from alol_ray.config_paths import local_file, resolve_path
from alol_ray.errors import ConfigError
from alol_ray.registry import get_method, method_names

USES_RUN = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--algo", help=f"training method (train.algo): {', '.join(method_names())}")
    parser.add_argument("--seed", type=int, help="training seed (train.seed)")
    parser.add_argument("--reference", action="store_true",
                        help="train the reference policy pi_ref with the reference.train section")
    parser.add_argument("--table", help="scored table (parquet) to train on instead of the pipeline's")
    parser.add_argument("--init", help="starting policy (HF folder or hub id) instead of train.init_from")
    parser.add_argument("--stop-at-step", type=int, default=0, metavar="N",
                        help="end after the checkpoint at step N without finishing the run; a rerun continues")
    add_config_arguments(parser)


def load(args: argparse.Namespace):
    """The config with --algo / --seed applied to the section they train (the flags win); --table and --init
    resolved and checked here, before the run is touched."""
    section = "reference.train" if args.reference else "train"
    flags = [f"{section}.algo={args.algo}"] if args.algo else []
    flags += [f"{section}.seed={args.seed}"] if args.seed is not None else []
    if args.stop_at_step < 0:
        raise ConfigError(f"--stop-at-step must be >= 0, got {args.stop_at_step}")
    if args.reference and (args.table or args.init):
        raise ConfigError("--reference trains on the run's rows from the base policy; --table/--init do not apply")
    args.table = local_file(args.table, "--table") if args.table else None
    args.init = resolve_path(args.init, "model", "--init") if args.init else None
    return load_config(args.config, list(args.overrides or []) + flags)


def run(args: argparse.Namespace, session) -> int:
    cfg = session.cfg
    if args.reference:
        if cfg.reference.path:
            print(f"reference.path is set ({cfg.reference.path}): pi_ref is given, nothing to train")
            return 0
        print(f"pi_ref: {session.pipeline.reference()}")
        return 0
    try:
        method = get_method(cfg.train.algo)
    except ValueError as err:
        raise ConfigError(f"train.algo: {err}") from None
    if method.online and args.table:
        raise ConfigError(f"--table does not apply to {method.name}: it trains on its own rollouts")
    best = session.pipeline.train(table=args.table, init=args.init, stop_at_step=args.stop_at_step)
    print(f"best checkpoint ({cfg.train.algo}, seed {cfg.train.seed}): {best}")
    return 0
