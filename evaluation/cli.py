"""`alol eval`: generate on a split, score, print the metric table (see evaluation.eval_job).

    alol eval --config configs/builtin.yaml --model runs/builtin/train/a_lol-s0/best --method a_lol --seed 0
    alol eval --max-prompts 50                         # the run's reference policy on the test split
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from alol_ray.cli import add_config_arguments

    add_config_arguments(parser)
    parser.add_argument("--model", help="policy folder (HF format) or hub id; default: the run's reference policy")
    parser.add_argument("--split", help="split of the run's prompts (default: eval.split, 'test')")
    parser.add_argument("--max-prompts", type=int, help="evaluate the first N prompts (by prompt_id)")
    parser.add_argument("--method", help="method name for the output files (default: 'reference', or 'model' "
                        "with --model)")
    parser.add_argument("--seed", type=int, help="seed for the output files (default: train.seed)")
    parser.add_argument("--out", help="per-example parquet (default: <run>/eval/<method>-s<seed>.parquet); "
                        "the summary JSON goes next to it")


def run(args: argparse.Namespace) -> int:
    from alol_ray.config import load_config
    from evaluation.eval_job import run_eval

    cfg = load_config(args.config, args.overrides)
    result = run_eval(cfg, model=args.model, split=args.split, max_prompts=args.max_prompts, method=args.method,
                      seed=args.seed, out=args.out)
    print(result.table)
    print(f"per-example results: {result.examples_path}")
    print(f"summary: {result.summary_path}")
    return 0
