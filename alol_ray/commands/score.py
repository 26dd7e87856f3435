"""`alol score`: score the run's rows with the reward components and pi_ref into the scored table.

    alol score --config configs/hh_score_example.yaml
    alol score --config configs/hh_score_example.yaml --no-reference     # rewards only (no pi_ref yet)

Scores are cached per row and scorer: a second run does no work, appended rows cost only themselves.
"""

from __future__ import annotations

import argparse

import pandas as pd

from alol_ray import columns as C
from alol_ray.cli import add_config_arguments
from alol_ray.scoring.reward import RAW_PREFIX

USES_RUN = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--no-reference", action="store_true",
                        help="score rewards only, without pi_ref's log-probs (same as scoring.reference=false)")


def run(args: argparse.Namespace, session) -> int:
    path = session.pipeline.scored(reference=False if args.no_reference else None)
    table = pd.read_parquet(path)
    reward_cols = [c for c in table.columns if c == C.REWARD or c.startswith((C.REWARD_PREFIX, RAW_PREFIX))]
    print(f"scored table: {path} ({len(table)} rows)")
    for col in reward_cols:
        values = table[col].dropna()
        if len(values):
            print(f"  {col:<28} mean {values.mean():9.4f}  std {values.std():9.4f}  rows {len(values)}")
    if C.REF_LOGP in table:
        print(f"  {C.REF_LOGP:<28} mean {table[C.REF_LOGP].mean():9.4f}  std {table[C.REF_LOGP].std():9.4f}")
    return 0
