"""Head-to-head comparison: methods x seeds on one scored table and one pi_ref, judged by one eval job.

Shared stages (rows, base policy, pi_ref, scored table, value/advantages, the reference policy's eval)
run once; then every (method, seed) is trained and evaluated. Every step is a pipeline stage with a
fingerprint, so an interrupted compare resumes and skips finished runs. Runs go concurrently, up to
``compare.max_concurrent`` at a time; each training run asks Ray for its own workers, so Ray queues what
the cluster cannot hold.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Optional

from alol_ray.config import RunConfig, to_yaml
from alol_ray.errors import ConfigError
from alol_ray.runs import RunPaths
from evaluation.report import REFERENCE, RunEntry, write_report


ONLINE = "ppo"  # the online baseline trains on its own rollouts, not on the scored table


def needs_advantage(method: str) -> bool:
    from alol_ray.train.methods import get_method

    return method != ONLINE and get_method(method).needs_advantage


def check_methods(methods: list[str]) -> list[str]:
    from alol_ray.train.methods import get_method

    if not methods:
        raise ConfigError("compare.methods is empty")
    for m in methods:
        if m == ONLINE:
            continue
        try:
            get_method(m)
        except ValueError as err:
            raise ConfigError(f"compare.methods: {err}") from None
    if len(set(methods)) != len(methods):
        raise ConfigError(f"compare.methods lists a method twice: {methods}")
    return methods


def _stage_seconds(folder: str) -> Optional[float]:
    path = os.path.join(folder, "stage.json")
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as fh:
        return json.load(fh).get("seconds")


def run_one(cfg: RunConfig, method: str, seed: int, log: Callable = print) -> RunEntry:
    """Train (or resume, or skip) one (method, seed) and evaluate its best checkpoint."""
    from alol_ray import pipeline

    best = pipeline.ensure_train(cfg, method, seed, log=log)
    pipeline.ensure_eval(cfg, method, seed, best, log=log)
    paths = RunPaths.from_config(cfg)
    train_dir = paths.train(method, seed)
    return RunEntry(method=method, seed=seed, eval_path=paths.eval(method, seed), train_dir=train_dir,
                    train_seconds=_stage_seconds(train_dir))


def once_per_stage(log: Callable) -> Callable:
    """``log`` that shows each "[stage] up to date (...)" line once: every run re-checks the shared stages."""
    seen: set[str] = set()

    def filtered(line: str, *args, **kwargs):
        if "] up to date (" in line:
            if line in seen:
                return None
            seen.add(line)
        return log(line, *args, **kwargs)

    return filtered


def run_compare(cfg: RunConfig, *, command: Optional[str] = None, log: Callable = print) -> tuple[str, str]:
    """Run the comparison described by ``cfg.compare``; returns (report path, printed table)."""
    from alol_ray import pipeline

    log = once_per_stage(log)
    methods = check_methods(list(cfg.compare.methods))
    seeds = list(range(cfg.compare.seeds))
    paths = pipeline.write_run_config(cfg)
    log(f"[compare] {len(methods)} methods x {len(seeds)} seeds in {paths.root}")

    # Shared stages, once for all runs (the same table and pi_ref make the comparison fair).
    pipeline.ensure_rows(cfg, log)
    pipeline.ensure_reference(cfg, log)
    table = pipeline.ensure_scored(cfg, log)
    if any(needs_advantage(m) for m in methods):
        table = pipeline.ensure_value(cfg, log)
    pipeline.ensure_eval(cfg, REFERENCE, 0, None, log=log)
    entries = [RunEntry(method=REFERENCE, seed=None, eval_path=paths.eval(REFERENCE, 0))]

    jobs = [(m, s) for s in seeds for m in methods]
    started = time.time()
    if cfg.compare.max_concurrent <= 1:
        for i, (m, s) in enumerate(jobs, 1):
            log(f"[compare] run {i}/{len(jobs)}: {m} seed {s}")
            entries.append(run_one(cfg, m, s, log))
    else:
        with ThreadPoolExecutor(max_workers=cfg.compare.max_concurrent) as pool:
            futures = [pool.submit(run_one, cfg, m, s, log) for m, s in jobs]
            for i, fut in enumerate(futures, 1):
                entries.append(fut.result())
                log(f"[compare] {i}/{len(jobs)} runs finished")
    log(f"[compare] all runs done in {time.time() - started:.0f}s")

    command = command or " ".join(shlex.quote(a) for a in ["alol", *sys.argv[1:]])
    report, printed = write_report(paths.root, entries, command=command, config_text=to_yaml(cfg),
                                   scored_table=table, n_bootstrap=cfg.eval.bootstrap_samples)
    return report, printed


def with_methods(cfg: RunConfig, methods: Optional[str], seeds: Optional[int]) -> RunConfig:
    """Apply the --methods / --seeds flags on top of the config."""
    compare = cfg.compare
    if methods:
        compare = dataclasses.replace(compare, methods=[m.strip() for m in methods.split(",") if m.strip()])
    if seeds is not None:
        if seeds < 1:
            raise ConfigError("--seeds must be >= 1")
        compare = dataclasses.replace(compare, seeds=seeds)
    return dataclasses.replace(cfg, compare=compare)
