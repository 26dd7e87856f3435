"""`alol compare --config C --methods a_lol,a_lol_seq,nll,dpo --seeds 3`: the head-to-head report."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from alol_ray.cli import add_config_arguments

    parser.add_argument("--methods", help="comma-separated methods (compare.methods), e.g. a_lol,a_lol_seq,nll,dpo")
    parser.add_argument("--seeds", type=int, help="seeds per method (compare.seeds)")
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from alol_ray.config import load_config
    from evaluation.compare import run_compare, with_methods

    cfg = with_methods(load_config(args.config, args.overrides), args.methods, args.seeds)
    report, table = run_compare(cfg)
    print()
    print(table)
    print(f"\nreport: {report}")
    return 0
