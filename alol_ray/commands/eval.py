"""`alol eval`: generate on a split, score, print the metric table (see alol_ray.evaluation.eval_job).

    alol eval --config configs/builtin.yaml --model runs/builtin/train/a_lol-s0/best --method a_lol --seed 0
    alol eval --max-prompts 50                         # the run's reference policy on the test split
    alol eval --config configs/builtin.yaml --prompts my_prompts.jsonl    # every trained policy on a prompt file

``--prompts FILE`` judges the policies the run already has (every finished ``train/<method>-s<seed>/`` and
pi_ref; nothing is trained) on the distinct prompts of FILE, read like a data source (json, jsonl or
parquet, any data format; records need only a prompt), with the same eval job, win rate against pi_ref's
replies and report as ``alol compare``: ``<run>/prompts/<file stem>-<sha256[:10]>/`` (one eval folder per
policy, report.md, report/methods.csv). The same file content reuses finished evaluations; an edited file
gets a new folder. It says which format it read the file in, and warns when prompts of the file are among the
run's train or val prompts (by text, from the run's rows when they were built).

``--config`` takes a run folder too (``alol eval --config runs/hh_tiny_cpu --prompts FILE``): the config the run
saved (``config.yaml``, absolute paths), whose data paths hold wherever the command is typed. A config file whose
paths do not resolve from the working directory says where the run's own config is.
"""

from __future__ import annotations

import argparse
import logging
import os

from alol_ray import columns as C
from alol_ray.cli import add_config_arguments
from alol_ray.config import ChatTemplateConfig, SourceConfig, load_config
from alol_ray.config_paths import local_file, resolve_path
from alol_ray.errors import ConfigError, UserError

log = logging.getLogger("alol")

USES_RUN = True

PROMPT_FORMATS = ("auto", "rows", "pairs", "messages", "chat_pairs", "hh_rlhf", "hh_pro")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--model", help="policy folder (HF format) or hub id; default: the run's reference policy")
    parser.add_argument("--split", help="split of the run's prompts (default: eval.split, 'test')")
    parser.add_argument("--max-prompts", type=int, help="evaluate the first N prompts (by prompt_id; with --prompts, "
                        "the file's first N distinct prompts)")
    parser.add_argument("--method", help="method name for the output folder (default: 'reference', or 'model' "
                        "with --model)")
    parser.add_argument("--seed", type=int, help="seed for the output folder (default: train.seed)")
    parser.add_argument("--out", help="output folder (default: <run>/eval/<method>-s<seed>/): examples.parquet and "
                        "summary.json")
    parser.add_argument("--prompts", metavar="FILE", help="instead of a split: the run's trained policies and its "
                        "reference policy on the prompts of FILE (json, jsonl or parquet; records need only a "
                        "prompt), evaluated into <run>/prompts/<file stem>-<content hash>/ with a report")
    parser.add_argument("--prompts-format", default="auto", choices=PROMPT_FORMATS,
                        help="format of the --prompts file (default: detected from its first record)")
    parser.add_argument("--methods", help="with --prompts: evaluate only these trained methods, comma-separated "
                        "(the reference policy is always evaluated)")


RUN_CONFIG = "config.yaml"  # what every command saves into the run folder (alol_ray.runs.RunPaths.config)


def load(args: argparse.Namespace):
    """The config: ``--config`` (a YAML file, or a run folder: the config.yaml the run saved) with the overrides.
    A run folder is the run evaluated, wherever it lies now (its storage and name follow the folder)."""
    overrides = list(args.overrides or [])
    if args.config and os.path.isdir(args.config):
        saved = os.path.join(args.config, RUN_CONFIG)
        if not os.path.isfile(saved):
            raise ConfigError(f"--config {args.config}: a folder without a {RUN_CONFIG}, so not a run folder (give a "
                              f"config file, or the run's folder, e.g. runs/<name>)")
        run_dir = os.path.abspath(args.config)
        where = [f"storage={os.path.dirname(run_dir)}", f"name={os.path.basename(run_dir)}"]
        return load_config(saved, where + overrides)
    try:
        return load_config(args.config, overrides)
    except ConfigError as err:
        saved = saved_run_config(args.config, overrides)
        if saved is None:
            raise
        run_dir = os.path.dirname(saved)
        raise ConfigError(f"{err}. The run {run_dir} keeps the config it ran with ({saved}, absolute paths): "
                          f"`alol eval --config {run_dir} ...`") from None


def saved_run_config(path: str | None, overrides: list[str]) -> str | None:
    """The config.yaml saved in the run that ``path`` + ``overrides`` name (storage/name), as typed from the
    working directory; None when that run has none or the config names no run."""
    try:
        cfg = load_config(path, overrides, resolve=False)
    except ConfigError:
        return None
    if "://" in cfg.storage:
        return None
    saved = os.path.join(os.path.expanduser(cfg.storage), cfg.name, RUN_CONFIG)
    return os.path.relpath(saved) if os.path.isfile(saved) else None


def run(args: argparse.Namespace, session) -> int:
    if args.max_prompts is not None and args.max_prompts < 1:
        raise UserError(f"--max-prompts must be >= 1, got {args.max_prompts}")
    if args.prompts:
        return run_prompts(args, session)
    if args.methods or args.prompts_format != "auto":
        raise UserError("--methods and --prompts-format go with --prompts FILE")
    # lazy: alol_ray.evaluation.eval_job (pandas, pyarrow) (alol_ray.commands.eval imports without them)
    from alol_ray.evaluation.eval_job import EXAMPLES_FILE, REFERENCE_METHOD, SUMMARY_FILE

    cfg = session.cfg
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


def run_prompts(args: argparse.Namespace, session) -> int:
    """``--prompts FILE``: the file is read and checked before the run is touched (a bad one writes nothing)."""
    # lazy: alol_ray.data.loaders (pandas) (alol_ray.commands.eval imports without it)
    from alol_ray.data.loaders import read_prompts

    given = (("--model", args.model), ("--split", args.split), ("--method", args.method), ("--seed", args.seed),
             ("--out", args.out))
    clash = [flag for flag, value in given if value is not None]
    if clash:
        raise UserError(f"--prompts evaluates the run's own policies into <run>/prompts/: it takes no "
                        f"{', '.join(clash)} (choose the policies with --methods)")
    path = local_file(args.prompts, "--prompts")
    # Dialogue formats render their prompts as the run's data did, so the policies see what they were trained on.
    sources = [s for s in session.cfg.data.sources if s.format != "builtin"]
    template = sources[0].template if sources else ChatTemplateConfig()
    prompts, fmt = read_prompts(SourceConfig(path=path, format=args.prompts_format, template=template))
    if args.max_prompts is not None:
        prompts = prompts.head(args.max_prompts)
    name = os.path.basename(path)
    how = "detected from its first record" if args.prompts_format == "auto" else "--prompts-format"
    log.info(f"[eval] {name}: format {fmt} ({how}), {len(prompts)} distinct prompts")
    # lazy: alol_ray.evaluation.prompt_sets (pandas) (alol_ray.commands.eval imports without it)
    from alol_ray.evaluation.prompt_sets import overlap_note, split_overlap

    overlap = split_overlap(session.pipeline.paths.rows, prompts[C.PROMPT])
    notes = [overlap_note(name, len(prompts), overlap)] if overlap else []
    for note in notes:
        log.warning(f"[eval] warning: {note}")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    # lazy: alol_ray.evaluation.compare (torch), after the file is read and checked (a bad file is refused in seconds)
    from alol_ray.evaluation.compare import run_prompt_eval

    report, table = run_prompt_eval(session.pipeline, path, prompts, command=session.command, methods=methods,
                                    notes=notes)
    print()
    print(table)
    print(f"\nreport: {report}")
    return 0
