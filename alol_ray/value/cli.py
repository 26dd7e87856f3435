"""`alol value --config C key=value...`: fit the value head and write value/advantage into the scored table.

With no paths it runs the pipeline (rows -> pi_ref -> scored table -> value, skipping finished stages).
`--table` and `--ref` run the value stage alone on a given scored table (parquet with prompt, split,
reward) and pi_ref (HF folder or hub id); `--out` then says where the head and reports go.
"""

from __future__ import annotations

import argparse
import json
import os


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from alol_ray.cli import add_config_arguments

    add_config_arguments(parser)
    parser.add_argument("--table", help="scored table (parquet) to add value/advantage to, instead of the run's")
    parser.add_argument("--ref", help="pi_ref (HF folder or hub id), instead of the run's reference policy")
    parser.add_argument("--out", help="with --table/--ref: folder for the head and reports "
                        "(default: the run's value folder)")
    parser.add_argument("--out-table", help="with --table/--ref: write the table here instead of replacing it")


def run(args: argparse.Namespace) -> int:
    from alol_ray.config import load_config
    from alol_ray.errors import UserError
    from alol_ray.runs import RunPaths
    from alol_ray.value.fit import FIT_REPORT

    cfg = load_config(args.config, args.overrides)
    if bool(args.table) != bool(args.ref):
        raise UserError("--table and --ref go together (or give neither to run the pipeline)")
    if args.table:
        from alol_ray.value.fit import build_value

        if not os.path.exists(args.table):
            raise UserError(f"--table: file not found: {args.table}")
        out_dir = args.out or RunPaths.from_config(cfg).value
        build_value(cfg, args.ref, args.table, out_dir, out_table=args.out_table)
        table = args.out_table or args.table
    else:
        from alol_ray import pipeline

        table = pipeline.ensure_value(cfg)
        out_dir = RunPaths.from_config(cfg).value
    with open(os.path.join(out_dir, FIT_REPORT), encoding="utf-8") as fh:
        fit = json.load(fh)
    print(json.dumps({k: v for k, v in fit.items() if k != "epochs"}, indent=2))
    print(f"scored table with value/advantage: {table}")
    return 0
