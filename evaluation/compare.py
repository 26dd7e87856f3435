"""Head-to-head comparison: methods x seeds on one scored table and one pi_ref, judged by one eval job.

The shared stages (rows, base policy, pi_ref, scored table, value table, the reference policy's eval) run
once; then every (method, seed) is trained and evaluated. Every step is a pipeline stage with a
fingerprint, so an interrupted compare resumes and skips finished runs. Runs go concurrently, up to
``compare.max_concurrent`` at a time; each training run asks Ray for its own workers, so Ray queues what
the cluster cannot hold. ``run_prompt_eval`` judges the policies a run already has on a new prompt set
(``alol eval --prompts``). These runners sit above the pipeline, with the CLI.
"""

from __future__ import annotations

import logging
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Optional, Sequence

import pandas as pd

from alol_ray import tracking
from alol_ray.errors import ConfigError, UserError
from alol_ray.hashing import file_sha
from alol_ray.pipeline import Pipeline
from alol_ray.registry import get_method
from alol_ray.runs import GREEDY, SAMPLED, RunPaths
from alol_ray.stage import intact, read_marker
from alol_ray.train.trainer import BEST_DIR
from alol_ray.evaluation.eval_job import EXAMPLES_FILE
from alol_ray.evaluation.report import REFERENCE, RunEntry, write_report

log = logging.getLogger("alol")


def check_methods(methods: list[str]) -> list[str]:
    """Every method name is registered (ConfigError naming the closest one otherwise)."""
    for m in methods:
        try:
            get_method(m)
        except ValueError as err:
            raise ConfigError(f"compare.methods: {err}") from None
    return methods


def decodings(cfg) -> list[str]:
    """The evaluation's decodings: greedy, and sampled when eval.sample_top_p is set."""
    return [GREEDY] + ([SAMPLED] if cfg.eval.sample_top_p is not None else [])


def trained_entry(paths: RunPaths, method: str, seed: int, decoding: str, eval_folder: str) -> RunEntry:
    """The report's entry for a training run's evaluation: its train folder and the stage's wall time."""
    train_dir = paths.train(method, seed)
    return RunEntry(method=method, seed=seed, decoding=decoding, train_dir=train_dir,
                    train_seconds=(read_marker(train_dir) or {}).get("seconds"),
                    eval_path=os.path.join(eval_folder, EXAMPLES_FILE))


def run_one(pipeline: Pipeline, method: str, seed: int) -> list[RunEntry]:
    """Train (or resume, or skip) one (method, seed) and evaluate its best checkpoint (one entry per decoding)."""
    best = pipeline.train(method, seed)
    return [trained_entry(pipeline.paths, method, seed, d, pipeline.evaluate(method, seed, best, decoding=d))
            for d in decodings(pipeline.cfg)]


def run_compare(pipeline: Pipeline, *, command: str) -> tuple[str, str]:
    """Run the comparison described by ``pipeline.cfg.compare``; returns (report path, printed table)."""
    cfg = pipeline.cfg
    methods = check_methods(list(cfg.compare.methods))
    seeds = list(range(cfg.compare.seeds))
    log.info(f"[compare] {len(methods)} methods x {len(seeds)} seeds in {pipeline.paths.root}")
    # What the data must hold, checked before any training starts.
    pipeline.eval_prompts()
    for m in methods:
        pipeline.require_layout(get_method(m))
    if cfg.train.eval_every > 0 or any(get_method(m).needs_advantage_with(cfg.train.sampler) for m in methods):
        pipeline.require_split("val", "model selection and the value head")

    # Shared stages, once for all runs (the same table and pi_ref make the comparison fair).
    pipeline.reference()
    table = pipeline.scored()
    if any(get_method(m).needs_advantage_with(cfg.train.sampler) for m in methods):
        table = pipeline.value()
    entries = [RunEntry(method=REFERENCE, seed=None, decoding=d,
                        eval_path=os.path.join(pipeline.evaluate(REFERENCE, 0, decoding=d), EXAMPLES_FILE))
               for d in decodings(cfg)]

    jobs = [(m, s) for s in seeds for m in methods]
    started = time.time()
    if cfg.compare.max_concurrent <= 1:
        for i, (m, s) in enumerate(jobs, 1):
            log.info(f"[compare] run {i}/{len(jobs)}: {m} seed {s}")
            entries += run_one(pipeline, m, s)
    else:
        with ThreadPoolExecutor(max_workers=cfg.compare.max_concurrent) as pool:
            futures = [pool.submit(run_one, pipeline, m, s) for m, s in jobs]
            for i, fut in enumerate(futures, 1):
                entries += fut.result()
                log.info(f"[compare] {i}/{len(jobs)} runs finished")
    log.info(f"[compare] all runs done in {time.time() - started:.0f}s")
    report = write_report(pipeline.paths.root, entries, command=command, cfg=cfg, scored_table=table,
                          n_bootstrap=cfg.eval.bootstrap_samples)
    track_table(cfg, os.path.join(pipeline.paths.report_dir, "methods.csv"))
    return report


def track_table(cfg, methods_csv: str) -> None:
    """The final methods table to the tracking backends (``tracking.backends``), as the run ``<name>/compare``:
    the whole table (a TensorBoard text, an MLflow JSON artifact, a W&B Table) and each of its numbers as the
    metric ``compare/<method>/<column>`` (``compare/a_lol/reward``)."""
    spec = tracking.prepare(cfg, "compare", job_type="compare")
    if spec is None:
        return
    table = pd.read_csv(methods_csv)
    with tracking.start(spec) as tracker:
        tracker.log_table("compare/methods", table)
        tracker.log({f"compare/{row['method']}/{column}": value for row in table.to_dict("records")
                     for column, value in row.items() if column != "method"}, step=0)


# <run>/train/<method>-s<seed>: one training run's folder (hidden staging folders never match)
TRAIN_FOLDER = re.compile(r"(?P<method>[^.].*)-s(?P<seed>0|[1-9][0-9]*)")
REFERENCE_REPLIES_FILE = "reference_replies.parquet"


def trained_policies(paths: RunPaths) -> list[tuple[str, int]]:
    """(method, seed) of every finished training run in <run>/train/ but pi_ref's, sorted: a folder with an
    intact stage marker and a ``best/`` policy (an interrupted or unfinished run is not one)."""
    root = os.path.join(paths.root, "train")
    found = []
    for name in os.listdir(root) if os.path.isdir(root) else ():
        match = TRAIN_FOLDER.fullmatch(name)
        if not match or match["method"] == REFERENCE:
            continue
        folder = os.path.join(root, name)
        marker = read_marker(folder)
        if marker and intact(folder, marker) and os.path.isdir(os.path.join(folder, BEST_DIR)):
            found.append((match["method"], int(match["seed"])))
    return sorted(found)


def run_prompt_eval(pipeline: Pipeline, prompts_file: str, prompts: pd.DataFrame, *, command: str,
                    methods: Optional[list[str]] = None, notes: Sequence[str] = ()) -> tuple[str, str]:
    """Judge the run's policies on the prompt set ``prompts`` (prompt_id, prompt) read from ``prompts_file``
    (``alol eval --prompts``): every finished training run (``methods``: only these) and pi_ref as published,
    nothing trained. Each is one eval stage in <run>/prompts/<file stem>-<sha256[:10]>/<method>-s<seed>/, so a
    rerun on the same file content skips it, and the report goes beside them, with ``notes`` (sentences about the
    prompt set) among its notes. Returns (report path, table)."""
    cfg, paths = pipeline.cfg, pipeline.paths
    runs = trained_policies(paths)
    train_root = os.path.join(paths.root, "train")
    if methods:
        unknown = sorted(set(methods) - {m for m, _ in runs} - {REFERENCE})
        if unknown:
            raise UserError(f"--methods: no finished training run of {', '.join(unknown)} in {train_root} (finished: "
                            f"{', '.join(sorted({m for m, _ in runs})) or 'none'})")
        runs = [(m, s) for m, s in runs if m in methods]
    reference = pipeline.published_reference()
    if reference is None and not runs:
        raise UserError(f"{paths.root} has no trained policy and no reference policy to evaluate: run `alol compare` "
                        "or `alol train` first")
    if reference is None and cfg.eval.win_rate:
        raise UserError(f"{paths.root} has no reference policy to measure win rates against: train it with `alol "
                        "train --reference` (or give reference.path=), or pass eval.win_rate=false")

    name = os.path.basename(prompts_file)
    sha = file_sha(prompts_file)
    folder = paths.prompts(f"{os.path.splitext(name)[0]}-{sha[:10]}")
    log.info(f"[eval] {len(prompts)} prompts of {name}: {len(runs)} trained policies"
             f"{' and the reference' if reference else ''} -> {folder}")
    entries = []
    for decoding in decodings(cfg):
        where = folder if decoding == GREEDY else os.path.join(folder, decoding)
        # pi_ref's replies to these prompts, for every win rate: beside the results, not in the run's cache
        common = {"split": name, "prompts": prompts, "decoding": decoding,
                  "ref_cache": os.path.join(where, REFERENCE_REPLIES_FILE)}
        if reference is not None:
            out = pipeline.evaluate(REFERENCE, 0, reference, out=os.path.join(where, f"{REFERENCE}-s0"), **common)
            entries.append(RunEntry(method=REFERENCE, seed=None, decoding=decoding,
                                    eval_path=os.path.join(out, EXAMPLES_FILE)))
        for method, seed in runs:
            out = pipeline.evaluate(method, seed, os.path.join(paths.train(method, seed), BEST_DIR),
                                    out=os.path.join(where, f"{method}-s{seed}"), **common)
            entries.append(trained_entry(paths, method, seed, decoding, out))
    notes = [(f"Prompts: {name} ({len(prompts)} distinct prompts, sha256 {sha[:10]}), not the run's own splits: "
              "every policy and the reference answer the same prompts."),
             ("Policies: the run's finished training runs as published (train/<method>-s<seed>/best) and its "
              "reference policy; nothing was trained for this report."), *notes]
    return write_report(folder, entries, command=command, cfg=cfg, notes=notes, n_bootstrap=cfg.eval.bootstrap_samples,
                        heading=f"alol-ray evaluation on {name}")
