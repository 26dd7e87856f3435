"""`alol value --config C key=value...`: fit the value head and write the value table.

With no paths it runs the pipeline (rows -> pi_ref -> scored table -> value, skipping finished stages) and
writes <run>/value/. `--table` and `--ref` run the value stage alone on a given scored table (parquet with
prompt, split, reward) and pi_ref (HF folder or hub id) into `--out` (default: the run's value folder).
"""

from __future__ import annotations

import argparse
import json
import os

from alol_ray.cli import add_config_arguments
from alol_ray.config_paths import local_file, resolve_path
from alol_ray.errors import UserError
from alol_ray.hashing import fingerprint
from alol_ray.stage import run_stage

USES_RUN = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--table", help="scored table (parquet) to fit the value head on, instead of the run's")
    parser.add_argument("--ref", help="pi_ref (HF folder or hub id), instead of the run's reference policy")
    parser.add_argument("--out", help="with --table/--ref: the folder for the value table, the head and reports "
                        "(default: the run's value folder)")


def run(args: argparse.Namespace, session) -> int:
    # lazy: alol_ray.value.fit (torch, pandas) (alol_ray.commands.value imports without them)
    from alol_ray.scoring.reward import Reward
    from alol_ray.value.fit import FIT_REPORT, TABLE_FILE, build_value, identity

    cfg, pipeline = session.cfg, session.pipeline
    if bool(args.table) != bool(args.ref):
        raise UserError("--table and --ref go together (or give neither to run the pipeline)")
    if args.table:
        table, ref = local_file(args.table, "--table"), resolve_path(args.ref, "model", "--ref")
        out_dir = resolve_path(args.out, "output", "--out") if args.out else pipeline.paths.value
        reward = Reward(cfg.reward)  # a table from elsewhere: standardised components need params.mean/std
        fp = fingerprint("value-standalone-v2", identity(cfg, reference=ref, table=table, reward=reward))
        run_stage("value", out_dir, fp,
                  lambda out: {"fit": build_value(cfg, ref, table, out, reward=reward)["fit"]["mse/holdout"]})
        path = os.path.join(out_dir, TABLE_FILE)
    else:
        path = pipeline.value()
        out_dir = os.path.dirname(path)
    with open(os.path.join(out_dir, FIT_REPORT), encoding="utf-8") as fh:
        fit = json.load(fh)
    print(json.dumps({k: v for k, v in fit.items() if k != "epochs"}, indent=2))
    print(f"value table (scored table + value, advantage): {path}")
    return 0
