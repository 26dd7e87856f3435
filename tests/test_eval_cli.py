"""`alol eval` end to end on the built-in task's test split (CPU, tiny policy), and the reference cache."""

from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import pandas as pd
import pytest

from alol_ray import columns as C
from alol_ray.config import load_config
from alol_ray.evaluation import eval_job
from alol_ray.evaluation.metrics import distinct_n

RUN_ARGS = ["data.builtin_train_prompts=60", "data.builtin_eval_prompts=20", "generation.max_new_tokens=16",
            "eval.bootstrap_samples=200"]


def run_alol(alol_cli, args, env=None, cwd=None):
    return subprocess.run([*alol_cli, *args], capture_output=True, text=True, timeout=600, env=env, cwd=cwd)


def test_alol_eval_prints_the_metric_table(ray_local, alol_cli, tiny_policy_dir, tmp_path):
    """As a user types it: from the working directory, relative storage and pi_ref folder."""
    import shutil

    shutil.copytree(tiny_policy_dir, tmp_path / "policy")
    # Join the session's Ray instead of starting a second one on the 2 cores.
    env = {**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address}
    overrides = ["storage=runs", "name=ev", "reference.path=policy", *RUN_ARGS]
    res = run_alol(alol_cli, ["eval", *overrides, "--max-prompts", "6", "--method", "ref", "--seed", "3"], env,
                   cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    tmp_path = tmp_path / "runs"
    for key in ("metric", "95% CI", "reward/mean", "reward/builtin", "distinct/1", "distinct/2", "distinct/3",
                "length/words", "length/tokens", "win_rate/reference", "eval/prompts"):
        assert key in res.stdout, key
    assert "on 'test' (6 prompts, transformers engine)" in res.stdout

    examples = pd.read_parquet(tmp_path / "ev" / "eval" / "ref-s3" / eval_job.EXAMPLES_FILE)
    with open(tmp_path / "ev" / "eval" / "ref-s3" / eval_job.SUMMARY_FILE) as fh:
        summary = json.load(fh)
    # The first 6 test prompts by prompt_id, each once.
    rows = pd.read_parquet(tmp_path / "ev" / "data" / "rows.parquet")
    expected_ids = sorted(rows.loc[rows[C.SPLIT] == "test", C.PROMPT_ID].unique())[:6]
    assert examples[C.PROMPT_ID].tolist() == expected_ids
    # The summary is the metrics of the per-example file.
    m = summary["metrics"]
    assert m["reward/mean"] == pytest.approx(examples[C.REWARD].mean(), abs=1e-12)
    assert m["distinct/2"] == pytest.approx(distinct_n(examples[C.RESPONSE].tolist(), 2), abs=1e-12)
    assert m["length/tokens"] == pytest.approx(examples[eval_job.RESPONSE_TOKENS].mean(), abs=1e-12)
    lo, hi = summary["ci95"]["reward/mean"]
    assert lo <= m["reward/mean"] <= hi
    # Rewards are the built-in task's: recompute them from the replies.
    from alol_ray.tasks import builtin

    parts = builtin.score(examples[C.PROMPT].tolist(), examples[C.RESPONSE].tolist())
    np.testing.assert_allclose(examples[C.REWARD], builtin.total_reward(parts), atol=1e-12)
    # The reference evaluated against itself: identical replies, all ties.
    assert (examples[eval_job.REF_RESPONSE] == examples[C.RESPONSE]).all()
    assert m["win_rate/reference"] == 0.5 and summary["prompts"] == 6 == m["eval/prompts"]
    assert os.path.exists(tmp_path / "ev" / "cache" / "reference_replies.parquet")


def test_bad_eval_arguments_are_user_errors(alol_cli, tiny_policy_dir, tmp_path):
    base = ["eval", f"storage={tmp_path}", "name=bad", f"reference.path={tiny_policy_dir}", *RUN_ARGS]
    res = run_alol(alol_cli, base + ["--split", "nope"], cwd=tmp_path)
    assert res.returncode == 2 and "--split must be train, val or test" in res.stderr and "Traceback" not in res.stderr
    res = run_alol(alol_cli, base + ["--model", "runs/nope/best"], cwd=tmp_path)
    assert res.returncode == 2 and "--model: 'runs/nope/best' is not a file or folder" in res.stderr


def test_reference_replies_come_from_the_cache(tiny_policy_dir, tmp_path):
    """Cached replies are reused; a missing prompt is filled from `own` without generating; a changed
    generation setting invalidates the cache."""
    cfg = load_config(None, [f"storage={tmp_path}", "name=c", *RUN_ARGS])
    cache = str(tmp_path / "reference_replies.parquet")
    prompts = pd.DataFrame({C.PROMPT_ID: ["a", "b"], C.PROMPT: ["pa", "pb"]})
    own = prompts.assign(**{C.RESPONSE: ["ra", "rb"], eval_job.RESPONSE_TOKENS: [1, 1],
                            eval_job.FINISH_REASON: ["eos", "eos"]})
    first = eval_job.reference_replies(cfg, tiny_policy_dir, prompts.head(1), cache, own=own.head(1))
    assert first[C.RESPONSE].tolist() == ["ra"]
    # "a" from the cache (own says otherwise and is ignored for it), "b" filled from own.
    own2 = own.assign(**{C.RESPONSE: ["changed", "rb"]})
    both = eval_job.reference_replies(cfg, tiny_policy_dir, prompts, cache, own=own2)
    assert both[C.RESPONSE].tolist() == ["ra", "rb"]
    assert sorted(pd.read_parquet(cache)[C.PROMPT_ID]) == ["a", "b"]
    cfg.generation.max_new_tokens += 1  # another setting: the cache no longer describes pi_ref's replies
    fresh = eval_job.reference_replies(cfg, tiny_policy_dir, prompts, cache, own=own2)
    assert fresh[C.RESPONSE].tolist() == ["changed", "rb"]
    # A cache file cut short by a crash (its marker no longer matches the file) is never read.
    cfg.generation.max_new_tokens -= 1
    eval_job.reference_replies(cfg, tiny_policy_dir, prompts, cache, own=own)
    with open(cache, "r+b") as fh:
        fh.truncate(100)
    again = eval_job.reference_replies(cfg, tiny_policy_dir, prompts, cache, own=own2)
    assert again[C.RESPONSE].tolist() == ["changed", "rb"]


def test_reference_rewards_are_scored_once(ray_local, tmp_path):
    """The reference replies' rewards: taken from `known` when the reference is evaluated, then from the cache
    for every other policy; only a reply not seen before is scored; another reward setting or a cache cut
    short by a crash means scoring again."""
    from alol_ray.tasks import builtin

    cfg = load_config(None, [f"storage={tmp_path}", "name=r", *RUN_ARGS])
    cache = eval_job.rewards_cache_path(str(tmp_path / "reference_replies.parquet"))
    assert cache == str(tmp_path / "reference_replies_rewards.parquet")
    prompts = ["Spell the word cat backwards.", "Name a colour."]
    replies = ["tac", "blue"]
    examples = pd.DataFrame({C.PROMPT_ID: ["a", "b"], C.PROMPT: prompts, eval_job.REF_RESPONSE: replies})
    true = builtin.total_reward(builtin.score(prompts, replies))

    known = np.array([0.25, -3.0])  # not what the reward says: proves these came from `known` and the cache
    np.testing.assert_array_equal(eval_job.reference_rewards(cfg, examples.head(1), cache, known=known[:1]), [0.25])
    # "a" from the cache, "b" scored for real.
    np.testing.assert_allclose(eval_job.reference_rewards(cfg, examples, cache), [0.25, true[1]], atol=1e-12)
    assert sorted(pd.read_parquet(cache)[C.PROMPT_ID]) == ["a", "b"]
    # Another reply to the same prompt is another entry.
    other = examples.assign(**{eval_job.REF_RESPONSE: ["tac", "green"]})
    np.testing.assert_allclose(eval_job.reference_rewards(cfg, other, cache, known=known),
                               [0.25, -3.0], atol=1e-12)
    # Another reward setting: everything is scored again.
    cfg.reward.components[0].weight = 2.0
    np.testing.assert_allclose(eval_job.reference_rewards(cfg, examples, cache), 2 * true, atol=1e-12)
    # A cache file cut short by a crash (its marker no longer matches the file) is never read.
    with open(cache, "r+b") as fh:
        fh.truncate(100)
    np.testing.assert_allclose(eval_job.reference_rewards(cfg, examples, cache, known=known), known, atol=1e-12)
    # Unknown (NaN) entries of `known` are scored.
    os.remove(cache)
    np.testing.assert_allclose(eval_job.reference_rewards(cfg, examples, cache, known=np.array([np.nan, -3.0])),
                               [2 * true[0], -3.0], atol=1e-12)


def test_sampled_decoding_is_a_second_evaluation(ray_local, tiny_policy_dir, tmp_path):
    """eval.sample_top_p: the same policy evaluated again with sampling, in its own folder and reference cache."""
    from alol_ray.errors import ConfigError
    from alol_ray.pipeline import Pipeline

    cfg = load_config(None, [f"storage={tmp_path}", "name=dec", f"reference.path={tiny_policy_dir}", *RUN_ARGS,
                             "eval.sample_top_p=0.9", "eval.max_prompts=6"])
    pipeline = Pipeline(cfg)
    greedy = pipeline.evaluate("reference", 0)
    sampled = pipeline.evaluate("reference", 0, decoding="sampled")
    assert sampled == str(tmp_path / "dec" / "eval" / "sampled" / "reference-s0")
    assert greedy == str(tmp_path / "dec" / "eval" / "reference-s0")
    with open(os.path.join(sampled, eval_job.SUMMARY_FILE)) as fh:
        gen = json.load(fh)["generation"]
    assert (gen["temperature"], gen["top_p"]) == (1.0, 0.9)
    a = pd.read_parquet(os.path.join(greedy, eval_job.EXAMPLES_FILE))
    b = pd.read_parquet(os.path.join(sampled, eval_job.EXAMPLES_FILE))
    assert a[C.PROMPT_ID].tolist() == b[C.PROMPT_ID].tolist()
    assert (a[C.RESPONSE] != b[C.RESPONSE]).any()  # an untrained policy sampled at temperature 1 strays from greedy
    cache = tmp_path / "dec" / "cache"
    assert (cache / "reference_replies.parquet").exists() and (cache / "reference_replies_sampled.parquet").exists()
    # Each cache holds the reference's replies of its own decoding (the win rate of a sampled policy is against
    # sampled reference replies), and the reference judged against itself meets its own replies.
    for decoded, name in ((a, "reference_replies.parquet"), (b, "reference_replies_sampled.parquet")):
        cached = pd.read_parquet(cache / name).set_index(C.PROMPT_ID)[C.RESPONSE]
        assert cached.loc[decoded[C.PROMPT_ID]].tolist() == decoded[C.RESPONSE].tolist(), name
        assert (decoded[eval_job.REF_RESPONSE] == decoded[C.RESPONSE]).all(), name
    with pytest.raises(ConfigError, match="eval.sample_top_p"):
        Pipeline(load_config(None, [f"storage={tmp_path}", "name=dec2", *RUN_ARGS])).decoding_config("sampled")
