"""`alol train`: train a policy with an offline method on the scored table (Ray Train).

    alol train --config configs/builtin.yaml --algo a_lol --seed 0 train.steps=300
    alol train --algo nll --reference                 # train pi_ref (reference.train section)
    alol train --algo a_lol --table my_scored.parquet --init runs/x/ref

Missing prerequisites are built first (rows, base policy, pi_ref, scored table, value/advantages when
the method needs them); finished stages are skipped and an interrupted training run resumes.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from alol_ray.cli import add_config_arguments

    parser.add_argument("--algo", help="training method (train.algo): nll, wbc, r_gold, r_lol, a_lol, "
                                       "a_lol_ref_free, a_lol_seq, a_lol_kl, and registered baselines")
    parser.add_argument("--seed", type=int, help="training seed (train.seed)")
    parser.add_argument("--reference", action="store_true",
                        help="train the reference policy pi_ref with the reference.train section, export to <run>/ref")
    parser.add_argument("--table", help="scored table (parquet) to train on instead of the pipeline's")
    parser.add_argument("--init", help="starting policy (HF folder or hub id) instead of train.init_from")
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    import os

    from alol_ray import pipeline
    from alol_ray.config import load_config
    from alol_ray.errors import ConfigError

    section = "reference.train" if args.reference else "train"
    overrides = list(args.overrides or [])
    if args.algo:
        overrides.append(f"{section}.algo={args.algo}")
    if args.seed is not None:
        overrides.append(f"{section}.seed={args.seed}")
    cfg = load_config(args.config, overrides)
    if args.table and not os.path.exists(args.table):
        raise ConfigError(f"--table {args.table}: file not found")

    if args.reference:
        if args.table or args.init:
            raise ConfigError("--reference trains on the run's rows from the base policy; --table/--init do not apply")
        if cfg.reference.path:
            print(f"reference.path is set ({cfg.reference.path}): pi_ref is given, nothing to train")
            return 0
        path = pipeline.ensure_reference(cfg)
        print(f"pi_ref: {path}")
        return 0

    if cfg.train.algo == "ppo":  # the online baseline: its own Ray Train job (baselines/ppo.py)
        if args.table:
            raise ConfigError("--table does not apply to ppo: it trains on its own rollouts")
        print(f"best checkpoint (ppo, seed {cfg.train.seed}): {pipeline.ensure_ppo(cfg, init=args.init)}")
        return 0
    from alol_ray.train.methods import get_method

    try:
        get_method(cfg.train.algo)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    best = pipeline.ensure_train(cfg, table=args.table, init=args.init)
    print(f"best checkpoint ({cfg.train.algo}, seed {cfg.train.seed}): {best}")
    return 0
