"""Slow: the whole pipeline on the built-in task, through `alol train`, and A-LoL beating its reference.

rows -> tiny base policy -> pi_ref (`alol train --algo nll --reference`) -> scored table (rewards, reference
log-probs) -> value head / advantages -> `alol train --algo a_lol` with 2 Ray Train workers, starting from
pi_ref and evaluating it first (``train.eval_at_start``), so val.jsonl's step 0 IS the reference policy's
val reward under the same greedy evaluation.
"""

from __future__ import annotations

import json
import os

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]

OVERRIDES = [
    "name=alol_pipeline", "data.builtin_train_prompts=600", "data.builtin_eval_prompts=64",
    "model.tiny.vocab_size=1024", "model.tiny.n_layer=4", "model.tiny.n_embd=128", "model.tiny.n_head=4",
    "model.tiny.n_positions=160", "model.max_prompt_tokens=48", "model.max_response_tokens=64",
    "generation.max_new_tokens=48", "generation.batch_size=32",
    "scoring.reward_pool.max_actors=1", "scoring.reference_pool.max_actors=1",
    "reference.train.steps=300", "reference.train.batch_size=16", "reference.train.lr=3e-3",
    "reference.train.warmup_steps=30", "reference.train.num_workers=1", "reference.train.cpus_per_worker=2",
    "reference.train.checkpoint_every=150",
    "train.steps=150", "train.batch_size=16", "train.lr=1e-3", "train.num_workers=2", "train.eval_every=50",
    "train.eval_prompts=64", "train.eval_at_start=true", "train.checkpoint_every=50",
]


def test_alol_beats_its_reference_on_the_builtin_task(ray_local, tmp_path):
    from alol_ray.cli import main

    overrides = [f"storage={tmp_path}", *OVERRIDES]
    assert main(["train", "--algo", "nll", "--reference", *overrides]) == 0
    assert main(["train", "--algo", "a_lol", *overrides]) == 0
    run = tmp_path / "alol_pipeline" / "train" / "a_lol-s0"
    with open(run / "val.jsonl", encoding="utf-8") as fh:
        val = [json.loads(line) for line in fh]
    reference = val[0]
    assert reference["train/step"] == 0
    trained = max(v["val/reward"] for v in val[1:])
    print(f"val reward: pi_ref {reference['val/reward']:.3f}, a_lol best {trained:.3f} ({val})")
    assert trained > reference["val/reward"] + 0.05
    with open(run / "summary.json", encoding="utf-8") as fh:
        assert json.load(fh)["best_val_reward"] == pytest.approx(trained)
    assert os.path.exists(run / "best" / "model.safetensors")
