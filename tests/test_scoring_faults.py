"""Faults: `ray.kill` one RewardScorer actor in the middle of a scoring run; the run still finishes and
every row is scored exactly once (no row lost, none produced or cached twice).

Two kinds of kill, two recovery paths (measured on Ray 2.60):
- ``no_restart=False`` (a crash, as Ray sees it): Ray Data's actor pool restarts the actor (its default
  max_restarts=-1) and retries the unfinished blocks on it (max_task_retries=-1); the pass goes on.
- ``no_restart=True`` (``ray.kill``'s default: the actor is gone for good): Ray Data fails the dataset with
  ActorDiedError; the scoring pass restarts (``scoring.pass_retries``) on the rows not cached yet.

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

REGISTRY = "alol-test-scorer-registry"  # + the test's parameter
_registered = False


@ray.remote(num_cpus=0)
class Registry:
    """Handles of the scorer actors that have started, and which process each one runs in."""

    def __init__(self):
        self.actors: list[tuple[int, str, object]] = []

    def add(self, pid, actor_id, handle):
        self.actors.append((pid, actor_id, handle))

    def list(self):
        return list(self.actors)


def counted_words(prompts, responses, log_dir, sleep_s, registry):
    """Reward = number of words. Runs inside the scorer actor: registers the actor once, logs which process
    scored how many rows, and takes ``sleep_s`` per batch so the run lasts long enough to be interrupted."""
    global _registered
    if not _registered:
        ctx = ray.get_runtime_context()
        ray.get(ray.get_actor(registry).add.remote(os.getpid(), ctx.get_actor_id(), ctx.current_actor))
        _registered = True
    with open(os.path.join(log_dir, f"{os.getpid()}.log"), "a", encoding="utf-8") as fh:
        fh.write(f"{len(responses)}\n")
    time.sleep(sleep_s)
    return [float(len(r.split())) for r in responses]


@pytest.mark.parametrize("no_restart", [False, True], ids=["crash", "killed_for_good"])
def test_killing_a_scorer_actor_loses_and_duplicates_nothing(ray_local, builtin_rows, tmp_path, no_restart, alol_log):
    from alol_ray.scoring.table import ScoreCache, score_rows

    rows = builtin_rows.head(160).drop(columns=[C.REWARD]).reset_index(drop=True)
    log_dir = tmp_path / "pids"
    log_dir.mkdir()
    cfg = RunConfig(name="kill", storage=str(tmp_path))
    cfg.reward.components = [RewardComponentConfig(name="words", kind="python",
                                                   function="tests.test_scoring_faults:counted_words",
                                                   params={"log_dir": str(log_dir), "sleep_s": 0.3,
                                                           "registry": f"{REGISTRY}-{no_restart}"})]
    pool = cfg.scoring.reward_pool
    pool.min_actors, pool.max_actors, pool.batch_size, pool.num_cpus = 2, 2, 8, 0.5
    cfg.scoring.batches_per_block = 1
    registry = Registry.options(name=f"{REGISTRY}-{no_restart}").remote()
    killed = {}

    def kill_one_actor(pass_name, done):
        if killed:
            return
        pid, actor_id, handle = ray.get(registry.list.remote())[0]
        ray.kill(handle, no_restart=no_restart)
        killed.update(pid=pid, actor_id=actor_id, after_rows=done)

    try:
        report = score_rows(rows, cfg, str(tmp_path / "scored"), cache_dir=str(tmp_path / "cache"),
                            on_part=kill_one_actor)
        registered = ray.get(registry.list.remote())
    finally:
        ray.kill(registry)

    assert killed and killed["after_rows"] < len(rows), "the kill must land mid-run"
    # Who recovered: Ray Data itself (restart + retry) or, for an actor killed for good, the pass restart.
    assert any("restarting the pass" in line for line in alol_log) == no_restart, alol_log
    # The killed process is gone. A crashed actor comes back as the same actor in a new process (Ray's
    # restart); one killed for good never does, and a fresh pool's actors take over.
    with pytest.raises(ProcessLookupError):
        os.kill(killed["pid"], 0)
    came_back = [pid for pid, actor_id, _ in registered if actor_id == killed["actor_id"] and pid != killed["pid"]]
    assert bool(came_back) != no_restart, registered
    others = {pid for pid, _, _ in registered} - {killed["pid"]}
    scored_by = {int(os.path.basename(p)[:-4]) for p in glob.glob(str(log_dir / "*.log"))}
    assert others & scored_by, (registered, scored_by)  # the rows after the kill were scored elsewhere

    # Exactly once: the cache holds each row key once, the table each input row once, all scored right.
    cache = ScoreCache(str(tmp_path / "cache"))
    cached = cache.read(report.reward_keys["words"])
    unique_keys = pd.unique(pd.read_parquet(report.table)[C.ROW_KEY])
    assert cached[C.ROW_KEY].is_unique and len(cached) == len(unique_keys) == report.reward_scored
    table = pd.read_parquet(report.table)
    assert len(table) == len(rows) and (table[C.RESPONSE].to_numpy() == rows[C.RESPONSE].to_numpy()).all()
    np.testing.assert_array_equal(table[C.REWARD].to_numpy(), [float(len(r.split())) for r in rows[C.RESPONSE]])
