"""Faults: `ray.kill` one RewardScorer actor in the middle of a scoring run; the run still finishes and
every row is scored exactly once (no row lost, none cached twice).

The scorer actors are found without the state API (the test Ray has no dashboard): the test's reward
component (a python callable, run inside each actor) hands its own actor handle to a named registry actor.
"""

from __future__ import annotations

import glob
import os
import time

import numpy as np
import pandas as pd
import pytest
import ray

from alol_ray import columns as C
from alol_ray.config import RewardComponentConfig, RunConfig

REGISTRY = "alol-test-scorer-registry"
_registered = False


@ray.remote(num_cpus=0)
class Registry:
    """Handles of the scorer actors that have started, and which process each one runs in."""

    def __init__(self):
        self.actors: list[tuple[int, object]] = []

    def add(self, pid, handle):
        self.actors.append((pid, handle))

    def list(self):
        return list(self.actors)


def counted_words(prompts, responses, log_dir, sleep_s):
    """Reward = number of words. Runs inside the scorer actor: registers the actor once, logs which process
    scored how many rows, and takes ``sleep_s`` per batch so the run lasts long enough to be interrupted."""
    global _registered
    if not _registered:
        ray.get(ray.get_actor(REGISTRY).add.remote(os.getpid(), ray.get_runtime_context().current_actor))
        _registered = True
    with open(os.path.join(log_dir, f"{os.getpid()}.log"), "a", encoding="utf-8") as fh:
        fh.write(f"{len(responses)}\n")
    time.sleep(sleep_s)
    return [float(len(r.split())) for r in responses]


def test_killing_a_scorer_actor_loses_and_duplicates_nothing(ray_local, builtin_rows, tmp_path):
    from alol_ray.scoring.table import ScoreCache, score_rows

    rows = builtin_rows.head(160).drop(columns=[C.REWARD]).reset_index(drop=True)
    log_dir = tmp_path / "pids"
    log_dir.mkdir()
    cfg = RunConfig(name="kill", storage=str(tmp_path))
    cfg.reward.components = [RewardComponentConfig(name="words", kind="python",
                                                   function="tests.test_scoring_faults:counted_words",
                                                   params={"log_dir": str(log_dir), "sleep_s": 0.3})]
    pool = cfg.scoring.reward_pool
    pool.min_actors, pool.max_actors, pool.batch_size, pool.num_cpus = 2, 2, 8, 0.5
    cfg.scoring.batches_per_block = 1
    registry = Registry.options(name=REGISTRY).remote()
    killed = {}

    def kill_one_actor(pass_name, done):
        if killed:
            return
        pid, handle = ray.get(registry.list.remote())[0]
        ray.kill(handle, no_restart=False)  # a crash, as Ray sees it: the pool must restart it and retry
        killed.update(pid=pid, after_rows=done)

    try:
        report = score_rows(rows, cfg, str(tmp_path / "scored"), on_part=kill_one_actor)
        registered = ray.get(registry.list.remote())
    finally:
        ray.kill(registry)

    assert killed and killed["after_rows"] < len(rows), "the kill must land mid-run"
    # The killed process is gone; the restarted actor registered from a new process and scored rows.
    with pytest.raises(ProcessLookupError):
        os.kill(killed["pid"], 0)
    pids = {int(os.path.basename(p)[:-4]) for p in glob.glob(str(log_dir / "*.log"))}
    restarted = {pid for pid, _ in registered} - {killed["pid"]}
    assert len(registered) >= 3 and len(pids) >= 3, (registered, pids)
    assert any(os.path.getsize(log_dir / f"{pid}.log") > 0 for pid in restarted)

    # Exactly once: the cache holds each row key once, the table each input row once, all scored right.
    cache = ScoreCache(str(tmp_path / "scored" / "cache"))
    cached = cache.read(report.reward_keys["words"])
    unique_keys = pd.unique(pd.read_parquet(report.table)[C.ROW_KEY])
    assert cached[C.ROW_KEY].is_unique and len(cached) == len(unique_keys) == report.reward_scored
    table = pd.read_parquet(report.table)
    assert len(table) == len(rows) and (table[C.RESPONSE].to_numpy() == rows[C.RESPONSE].to_numpy()).all()
    np.testing.assert_array_equal(table[C.REWARD].to_numpy(), [float(len(r.split())) for r in rows[C.RESPONSE]])
