"""`alol data validate SRC...` and `alol data convert SRC... --out DIR`.

Sources are files (.jsonl/.json/.parquet), save_to_disk folders, hub dataset names or ``builtin``; relative
paths are taken from the working directory. Every invalid row is reported as file:line: field (exit 2),
or dropped and counted with --skip-invalid.
"""

from __future__ import annotations

import argparse
import json
import sys

from alol_ray.config import SPLITS, DataConfig, FieldsConfig, SourceConfig, load_config
from alol_ray.config_paths import resolve_path
from alol_ray.data.loaders import load_rows, summarize, write_rows
from alol_ray.errors import UserError

USES_RUN = False  # reads sources and writes --out; no run directory


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    for name, help_text in (
        ("validate", "check every row; print counts and reward statistics, or the errors (exit 2)"),
        ("convert", "write the canonical rows as Parquet (<out>/rows.parquet)"),
    ):
        sp = sub.add_parser(name, help=help_text, description=help_text)
        sp.add_argument("sources", nargs="*", metavar="SRC",
                        help="files (.jsonl/.json/.parquet), save_to_disk folders, hub dataset names, or 'builtin'; "
                        "append @SPLIT to give one source its split (e.g. sampled_dev.json@val)")
        sp.add_argument("--config", "-c", help="take the sources from this config's `data` section instead")
        sp.add_argument("--format", default="auto",
                        help="auto | rows | pairs | messages | chat_pairs | hh_pro | hh_rlhf | builtin")
        sp.add_argument("--split", default="train", help="split of rows that carry none (train | val | test)")
        sp.add_argument("--hf-split", default="train", help="split of a Hugging Face dataset to read")
        sp.add_argument("--field", action="append", default=[], metavar="NAME=SOURCE_FIELD",
                        help="map a canonical field to the source's field name, e.g. --field prompt=question")
        sp.add_argument("--skip-invalid", action="store_true", help="keep the good rows; report drops by reason")
        sp.add_argument("--clean-abrupt", action="store_true",
                        help="drop prompts with a reply that ends abruptly with ':' (the paper's HH cleaning)")
        sp.add_argument("--json", action="store_true", help="print the summary as JSON")
        if name == "convert":
            sp.add_argument("--out", required=True, help="output folder")


def _data_config(args: argparse.Namespace):
    if args.config:
        cfg = load_config(args.config).data
        if args.skip_invalid:
            cfg.skip_invalid = True
        return cfg
    if not args.sources:
        raise UserError("give at least one SRC, or --config")
    fields = FieldsConfig()
    for item in args.field:
        name, sep, value = item.partition("=")
        if not sep or not hasattr(fields, name):
            raise UserError(f"--field {item!r}: expected NAME=SOURCE_FIELD with NAME one of {sorted(vars(fields))}")
        setattr(fields, name, value)
    if args.split not in SPLITS:
        raise UserError(f"--split must be one of {', '.join(SPLITS)}, got {args.split!r}")
    sources = []
    for src in args.sources:
        path, _, split = src.rpartition("@") if "@" in src else (src, "", args.split)
        if split not in SPLITS:
            raise UserError(f"{src}: the split after '@' must be one of {', '.join(SPLITS)}, got {split!r}")
        fmt = "builtin" if path == "builtin" else args.format
        if path != "builtin":
            path = resolve_path(path, "data", src)
        sources.append(SourceConfig(path=path, format=fmt, split=split, hf_split=args.hf_split,
                                    fields=fields, clean_abrupt=args.clean_abrupt))
    return DataConfig(sources=sources, skip_invalid=args.skip_invalid)


def _print_summary(summary: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    print(f"{summary['prompts']:,} prompts, {summary['rows']:,} rows ({summary['records_read']:,} records read)")
    for split, counts in summary["splits"].items():
        print(f"  {split:>5}: {counts['prompts']:,} prompts, {counts['rows']:,} rows")
    per = ", ".join(f"{k}: {v:,}" for k, v in summary["responses_per_prompt"].items())
    print(f"  responses per prompt -> prompts: {per}")
    dropped = summary["dropped_invalid"]
    if dropped:
        total = sum(dropped.values())
        print(f"dropped {total:,} invalid rows: " + ", ".join(f"{v:,} {k}" for k, v in sorted(dropped.items())))
    for name, rows in summary["filtered"].items():
        print(f"filtered {rows:,} rows ({summary['filtered_prompts'].get(name, 0):,} prompts) by {name}")
    for col, s in summary["reward"].items():
        print(f"  {col}: mean {s['mean']:.4f}  std {s['std']:.4f}  min {s['min']:.4f}  "
              f"median {s['p50']:.4f}  max {s['max']:.4f}  (n={s['count']:,})")
    if "reward_by_rank" in summary:
        print("  mean reward by rank: " + ", ".join(f"{k}: {v:.4f}" for k, v in summary["reward_by_rank"].items()))


def run(args: argparse.Namespace, session=None) -> int:
    cfg = _data_config(args)
    frame, report = load_rows(cfg)
    summary = summarize(frame, report)
    if args.data_command == "convert":
        path = write_rows(frame, resolve_path(args.out, "output", "--out"), summary)
        print(f"wrote {len(frame):,} rows to {path}", file=sys.stderr)
    _print_summary(summary, args.json)
    return 0
