"""`alol compare --config C --methods a_lol,a_lol_seq,nll,dpo --seeds 3`: the head-to-head report."""

from __future__ import annotations

import argparse

from alol_ray.cli import add_config_arguments
from alol_ray.config import load_config

USES_RUN = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--methods", help="comma-separated methods (compare.methods), e.g. a_lol,a_lol_seq,nll,dpo")
    parser.add_argument("--seeds", type=int, help="seeds per method (compare.seeds)")
    add_config_arguments(parser)


def load(args: argparse.Namespace):
    flags = [f"compare.methods=[{args.methods}]"] if args.methods else []
    flags += [f"compare.seeds={args.seeds}"] if args.seeds is not None else []
    return load_config(args.config, list(args.overrides or []) + flags)


def run(args: argparse.Namespace, session) -> int:
    # lazy: alol_ray.evaluation.compare (torch, transformers) (alol_ray.commands.compare imports without them)
    from alol_ray.evaluation.compare import run_compare

    report, table = run_compare(session.pipeline, command=session.command)
    print()
    print(table)
    print(f"\nreport: {report}")
    return 0
