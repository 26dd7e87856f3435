"""Head-to-head comparison: methods x seeds on one scored table and one pi_ref, judged by one eval job.

The shared stages (rows, base policy, pi_ref, scored table, value table, the reference policy's eval) run
once; then every (method, seed) is trained and evaluated. Every step is a pipeline stage with a
fingerprint, so an interrupted compare resumes and skips finished runs. Runs go concurrently, up to
``compare.max_concurrent`` at a time; each training run asks Ray for its own workers, so Ray queues what
the cluster cannot hold. This runner sits above the pipeline, with the CLI.
"""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor

import pandas as pd

from alol_ray import tracking
from alol_ray.errors import ConfigError
from alol_ray.pipeline import Pipeline
from alol_ray.registry import get_method
from alol_ray.runs import GREEDY, SAMPLED
from alol_ray.stage import read_marker
from evaluation.eval_job import EXAMPLES_FILE
from evaluation.report import REFERENCE, RunEntry, write_report

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


def run_one(pipeline: Pipeline, method: str, seed: int) -> list[RunEntry]:
    """Train (or resume, or skip) one (method, seed) and evaluate its best checkpoint (one entry per decoding)."""
    best = pipeline.train(method, seed)
    train_dir = pipeline.paths.train(method, seed)
    marker = read_marker(train_dir) or {}
    return [RunEntry(method=method, seed=seed, decoding=d, train_dir=train_dir, train_seconds=marker.get("seconds"),
                     eval_path=os.path.join(pipeline.evaluate(method, seed, best, decoding=d), EXAMPLES_FILE))
            for d in decodings(pipeline.cfg)]


def run_compare(pipeline: Pipeline, *, command: str) -> tuple[str, str]:
    """Run the comparison described by ``pipeline.cfg.compare``; returns (report path, printed table)."""
    cfg = pipeline.cfg
    methods = check_methods(list(cfg.compare.methods))
    seeds = list(range(cfg.compare.seeds))
    log.info(f"[compare] {len(methods)} methods x {len(seeds)} seeds in {pipeline.paths.root}")
    # What the data must hold, checked before any training starts.
    pipeline.eval_prompts()
    if cfg.train.eval_every > 0 or any(get_method(m).needs_advantage for m in methods):
        pipeline.require_split("val", "model selection and the value head")

    # Shared stages, once for all runs (the same table and pi_ref make the comparison fair).
    pipeline.reference()
    table = pipeline.scored()
    if any(get_method(m).needs_advantage for m in methods):
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
