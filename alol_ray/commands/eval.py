"""`alol eval`: generate on a split, score, print the metric table (see evaluation.eval_job).

    alol eval --config configs/builtin.yaml --model runs/builtin/train/a_lol-s0/best --method a_lol --seed 0
    alol eval --max-prompts 50                         # the run's reference policy on the test split
"""

from __future__ import annotations

import argparse
import os

from alol_ray.cli import add_config_arguments
from alol_ray.config import resolve_path
from alol_ray.errors import UserError

USES_RUN = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--model", help="policy folder (HF format) or hub id; default: the run's reference policy")
    parser.add_argument("--split", help="split of the run's prompts (default: eval.split, 'test')")
    parser.add_argument("--max-prompts", type=int, help="evaluate the first N prompts (by prompt_id)")
    parser.add_argument("--method", help="method name for the output folder (default: 'reference', or 'model' "
                        "with --model)")
    parser.add_argument("--seed", type=int, help="seed for the output folder (default: train.seed)")
    parser.add_argument("--out", help="output folder (default: <run>/eval/<method>-s<seed>/): examples.parquet and "
                        "summary.json")


def run(args: argparse.Namespace, session) -> int:
    # lazy: evaluation.eval_job (pandas, pyarrow) (alol_ray.commands.eval imports without them)
    from evaluation.eval_job import EXAMPLES_FILE, REFERENCE_METHOD, SUMMARY_FILE

    cfg = session.cfg
    if args.max_prompts is not None and args.max_prompts < 1:
        raise UserError(f"--max-prompts must be >= 1, got {args.max_prompts}")
    if args.split is not None and args.split not in ("train", "val", "test"):
        raise UserError(f"--split must be train, val or test, got '{args.split}'")
    model = resolve_path(args.model, "model", "--model") if args.model else None
    method = args.method or (REFERENCE_METHOD if model is None else "model")
    seed = cfg.train.seed if args.seed is None else args.seed
    out = resolve_path(args.out, "output", "--out") if args.out else None
    folder = session.pipeline.evaluate(method, seed, model, split=args.split, max_prompts=args.max_prompts, out=out)
    print(f"per-example results: {os.path.join(folder, EXAMPLES_FILE)}")
    print(f"summary: {os.path.join(folder, SUMMARY_FILE)}")
    return 0
