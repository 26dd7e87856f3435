"""PPO with vLLM rollouts for real (marker ``vllm``, run by .ci/vllm-tier): the rollout engine is a vLLM actor
whose weights are replaced in place after every PPO update (no engine restart). A module of its own: PPO needs
the whole 2-CPU test cluster (train worker, engine, pi_ref), so no other engine may be alive."""

from __future__ import annotations

import dataclasses
import json
import math
import os

import pytest
from test_ppo import ppo_config, rows_file
from test_vllm import _skip_reason

pytestmark = [pytest.mark.vllm, pytest.mark.skipif(_skip_reason() is not None, reason=str(_skip_reason()))]


def test_ppo_rollouts_come_from_a_vllm_engine_updated_in_place(ray_local, tiny_policy_dir, builtin_rows, tmp_path):
    from alol_ray.baselines.ppo import fit_ppo

    cfg = ppo_config(iterations=3, rollout_size=4, mini_batch_size=2, ppo_epochs=1, lr=1e-3, max_new_tokens=12,
                     eval_every=0, checkpoint_every=3, grad_accum=2)
    # engine=vllm, not auto: a run that cannot start vLLM fails instead of falling back to transformers.
    cfg.generation = dataclasses.replace(cfg.generation, engine="vllm", enforce_eager=True)
    run_dir = str(tmp_path / "ppo-s0")
    out = fit_ppo(cfg, train_cfg=cfg.train, rows=rows_file(builtin_rows, str(tmp_path)), policy_path=tiny_policy_dir,
                  ref_path=tiny_policy_dir, work_dir=run_dir)
    assert out.total_steps == 3
    with open(os.path.join(run_dir, "metrics.jsonl")) as fh:
        metrics = [json.loads(line) for line in fh if line.strip()]
    assert [m["train/step"] for m in metrics] == [1, 2, 3]
    # One engine for the whole run: its weights version counts the in-place updates (1: the starting policy).
    assert [m["rollout/weights_version"] for m in metrics] == [1, 2, 3]
    for m in metrics:
        assert all(math.isfinite(m[k]) for k in ("loss/policy", "loss/value", "objective/kl", "reward/mean"))
    # Iteration 1 samples from pi_ref itself (the same weights in the engine, the pi_ref actor and the worker).
    assert abs(metrics[0]["objective/kl"]) < 1e-3
    assert not os.path.exists(os.path.join(run_dir, "rollout_policy"))  # no weights folder on the worker's disk
