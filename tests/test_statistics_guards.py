"""The numbers a comparison rests on, tested against the wrong versions a reviewer would write: paired and
hierarchical bootstrap intervals (evaluation.report), the pairing of two methods' replies by prompt id, win
rates, and the keys of the evaluation caches (evaluation.eval_job). No Ray: seconds in all, and the tests of
``bench/mutation.py --group statistics``.

Fixtures are built so that the wrong version gives another answer: replies listed in another order by each
method and seed, seeds that agree exactly (only the prompts can widen an interval) or prompts that agree
exactly (only the seeds can), reward statistics that change the reward.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from alol_ray import columns as C
from alol_ray.config import load_config
from alol_ray.evaluation import eval_job
from alol_ray.evaluation.report import (HIGHER, LOWER, OPEN, RunEntry, hierarchical_ci, method_rows,
                               paired_hierarchical_ci, paired_rows, verdict)

# ------------------------------------------------------------------------------------------- intervals


def test_hierarchical_ci_resamples_the_prompts_within_each_seed():
    """Three seeds that agree exactly: only resampling the prompts can give the interval a width, that of
    the mean of 3 x n independent prompt draws (normal approximation: 1.96 sd / sqrt(3n) each side)."""
    values = np.random.default_rng(0).normal(0.0, 1.0, 400)
    mean, lo, hi = hierarchical_ci([values, values.copy(), values.copy()], n_samples=2000)
    assert mean == pytest.approx(values.mean(), abs=1e-12)
    half = 1.96 * values.std() / np.sqrt(3 * values.size)
    assert lo < mean < hi
    assert (hi - lo) / 2 == pytest.approx(half, rel=0.15)
    assert (mean - lo) == pytest.approx(half, rel=0.25) and (hi - mean) == pytest.approx(half, rel=0.25)


def test_hierarchical_ci_resamples_the_seeds():
    """Prompts that agree exactly within each seed, two seeds at 0 and 1: the resampled means are 0, 1/2 or 1
    with probability 1/4, 1/2, 1/4, so the 95% interval is [0, 1] around 1/2."""
    assert hierarchical_ci([np.zeros(50), np.ones(50)], n_samples=2000) == (0.5, 0.0, 1.0)
    assert hierarchical_ci([np.zeros(5), np.full(7, 2.0), np.array([])], n_samples=2000) == (1.0, 0.0, 2.0)
    assert all(np.isnan(hierarchical_ci([np.array([]), []], n_samples=10)))
    assert hierarchical_ci([np.array([3.0])], n_samples=10) == (3.0, 3.0, 3.0)


def test_hierarchical_ci_is_seeded():
    groups = [np.random.default_rng(s).normal(s, 1.0, 30) for s in range(3)]
    assert hierarchical_ci(groups, 300, seed=1) == hierarchical_ci(groups, 300, seed=1)
    assert hierarchical_ci(groups, 300, seed=1) != hierarchical_ci(groups, 300, seed=2)
    assert hierarchical_ci(groups, 300, seed=1) != hierarchical_ci(groups, 301, seed=1)


def test_the_paired_interval_resamples_the_prompts_shared_by_both_sides():
    """Seeds that agree exactly on each side: the interval is the prompt bootstrap of the per-prompt
    differences (1.96 sd / sqrt(n) each side), and the prompt effect shared by A and B cancels."""
    rng = np.random.default_rng(3)
    shared = rng.normal(0.0, 10.0, 500)  # huge, but the same prompt's on both sides
    gap = rng.normal(0.2, 1.0, 500)
    a, b = np.tile(shared + gap, (3, 1)), np.tile(shared, (2, 1))
    diff, lo, hi = paired_hierarchical_ci(a, b, n_samples=2000)
    assert diff == pytest.approx(gap.mean(), abs=1e-9)
    half = 1.96 * gap.std() / np.sqrt(gap.size)
    assert (hi - lo) / 2 == pytest.approx(half, rel=0.15)
    assert lo < diff < hi


@pytest.mark.parametrize("side", ["a", "b"])
def test_the_paired_interval_resamples_each_methods_seeds(side):
    """All prompts agree; one method's two seeds sit at 0 and 1, the other's one seed at 0. The resampled
    difference is the mean of two drawn seeds: 0, 1/2 or 1 (negated when the spread seeds are B's)."""
    spread, flat = np.vstack([np.zeros(40), np.ones(40)]), np.zeros((1, 40))
    if side == "a":
        assert paired_hierarchical_ci(spread, flat, n_samples=2000, chunk=300) == (0.5, 0.0, 1.0)
    else:
        assert paired_hierarchical_ci(flat, spread, n_samples=2000, chunk=300) == (-0.5, -1.0, 0.0)


def test_the_paired_interval_in_chunks_and_its_edge_cases():
    rng = np.random.default_rng(5)
    a, b = rng.normal(1.0, 1.0, (2, 60)), rng.normal(0.0, 1.0, (3, 60))
    one = paired_hierarchical_ci(a, b, n_samples=1000, chunk=1000)
    chunked = paired_hierarchical_ci(a, b, n_samples=1000, chunk=7)  # 142 chunks of 7 and one of 6
    assert one[0] == chunked[0]
    assert one[1:] == pytest.approx(chunked[1:], abs=0.08)
    assert paired_hierarchical_ci(a, b, n_samples=1000, seed=4) == paired_hierarchical_ci(a, b, n_samples=1000, seed=4)
    assert paired_hierarchical_ci(a, b, n_samples=1000, seed=4) != paired_hierarchical_ci(a, b, n_samples=1000, seed=5)
    # One seed given as a 1-D row of prompts.
    assert paired_hierarchical_ci(np.ones(4), np.zeros(4), 50) == (1.0, 1.0, 1.0)
    assert all(np.isnan(paired_hierarchical_ci(np.zeros((2, 0)), np.zeros((1, 0)), 10)))
    with pytest.raises(ValueError, match="4 prompts vs 5"):
        paired_hierarchical_ci(np.zeros(4), np.zeros(5), 10)


def test_verdict_needs_the_whole_interval_on_one_side_of_zero():
    assert verdict(0.01, 0.5) == HIGHER and verdict(-0.5, -0.01) == LOWER
    assert verdict(0.0, 0.5) == OPEN and verdict(-0.5, 0.0) == OPEN and verdict(-0.1, 0.1) == OPEN
    assert verdict(0.0, 0.0) == OPEN


# ------------------------------------------------------------------------------------------- pairing


def _eval_file(path, prompt_ids, rewards, win=None):
    frame = pd.DataFrame({C.PROMPT_ID: prompt_ids, C.PROMPT: [f"q {p}" for p in prompt_ids],
                          C.RESPONSE: [f"reply to {p}" for p in prompt_ids], C.REWARD: rewards})
    if win is not None:
        frame["win"] = win
    frame.to_parquet(path)
    return str(path)


def test_two_methods_are_paired_by_prompt_id_not_by_row_order(tmp_path):
    """Every policy earns the same reward on each prompt, but each file lists the prompts in its own order:
    the paired difference is exactly 0 (paired by row order it would be -3..+3 per prompt)."""
    reward = {"p0": 1.0, "p1": 2.0, "p2": 3.0, "p3": 4.0, "p4": 9.0}
    orders = {("reference", None): ["p0", "p1", "p2", "p3"], ("nll", 0): ["p3", "p2", "p1", "p0"],
              ("nll", 1): ["p1", "p3", "p0", "p2"], ("a_lol", 0): ["p2", "p0", "p3", "p1", "p4"],
              ("a_lol", 1): ["p4", "p3", "p1", "p2", "p0"]}
    entries = [RunEntry(m, s, _eval_file(tmp_path / f"{m}{s}.parquet", ids, [reward[p] for p in ids]))
               for (m, s), ids in orders.items()]
    paired = paired_rows(entries, n_bootstrap=300).set_index(["method", "versus"])
    assert set(paired.index) == {("nll", "reference"), ("a_lol", "reference"), ("a_lol", "nll")}
    for row in paired.itertuples():
        assert (row.difference, row.lo, row.hi, row.verdict) == (0.0, 0.0, 0.0, OPEN), row
        assert row.prompts == 4  # p4: only a_lol answered it
    assert paired.loc[("a_lol", "nll"), "seeds"] == 2 and paired.loc[("a_lol", "reference"), "versus_seeds"] == 1
    # A real gap on one prompt, in a file listed in yet another order: that prompt's gap, halved by the seeds.
    gap = {**reward, "p2": 5.0}
    entries[1] = RunEntry("nll", 0, _eval_file(tmp_path / "gap.parquet", ["p2", "p3", "p0", "p1"],
                                               [gap[p] for p in ["p2", "p3", "p0", "p1"]]))
    paired = paired_rows(entries, baselines=("nll",), n_bootstrap=300).set_index(["method", "versus"])
    assert list(paired.index) == [("a_lol", "nll")]  # nll only: the reference is never a method here
    assert paired.loc[("a_lol", "nll"), "difference"] == pytest.approx(-2.0 / 2 / 4)


def test_a_prompt_answered_twice_counts_once(tmp_path):
    ref = RunEntry("reference", None, _eval_file(tmp_path / "r.parquet", ["a", "b"], [0.0, 0.0]))
    dup = RunEntry("nll", 0, _eval_file(tmp_path / "n.parquet", ["a", "a", "b"], [1.0, 7.0, 1.0]))
    paired = paired_rows([ref, dup], n_bootstrap=50)
    assert paired.loc[0, "difference"] == 1.0 and paired.loc[0, "prompts"] == 2


def test_the_method_table_win_rate_and_rewards_are_means_over_seeds(tmp_path):
    entries = [RunEntry("a_lol", 0, _eval_file(tmp_path / "a.parquet", ["x", "y"], [1.0, 3.0], win=[1.0, 0.5])),
               RunEntry("a_lol", 1, _eval_file(tmp_path / "b.parquet", ["y", "x", "z", "w"], [0.0] * 4,
                                               win=[0.0, 0.0, 1.0, 1.0]))]
    row = method_rows(entries, n_bootstrap=200).iloc[0]
    assert row[C.REWARD] == pytest.approx((2.0 + 0.0) / 2) and row["win_rate"] == pytest.approx((0.75 + 0.5) / 2)
    assert row["win_rate/ci"][0] <= row["win_rate"] <= row["win_rate/ci"][1]
    assert row["seeds"] == 2 and row["prompts"] == 3


# ------------------------------------------------------------------------------------------- cache keys


@pytest.fixture
def cfg(tmp_path):
    return load_config(None, [f"storage={tmp_path}", "name=c"])


def test_reference_rewards_are_scored_again_when_the_reward_statistics_change(cfg, tmp_path):
    """A standardised reward component is (raw - mean) / std with the scored table's statistics: rewards
    cached under one table's statistics are not the reward under another's."""
    from alol_ray.tasks import builtin

    cfg.reward.components[0].transform = "standardise"
    prompts = ["Any tips for gardening on a small budget?", "How do I start running?"]
    replies = ["Sure, water the plants in the morning, thank you for asking.", "no"]
    examples = pd.DataFrame({C.PROMPT_ID: ["a", "b"], C.PROMPT: prompts, eval_job.REF_RESPONSE: replies})
    raw = builtin.total_reward(builtin.score(prompts, replies))
    cache = eval_job.rewards_cache_path(str(tmp_path / "reference_replies.parquet"))
    first = eval_job.reference_rewards(cfg, examples, cache, stats={"builtin": (0.0, 1.0)})
    np.testing.assert_allclose(first, raw, atol=1e-9)
    second = eval_job.reference_rewards(cfg, examples, cache, stats={"builtin": (1.0, 2.0)})
    np.testing.assert_allclose(second, (raw - 1.0) / 2.0, atol=1e-9)
    again = eval_job.reference_rewards(cfg, examples, cache, stats={"builtin": (1.0, 2.0)},
                                       known=np.array([7.0, 7.0]))
    np.testing.assert_allclose(again, second, atol=1e-12)  # from the cache: `known` is not asked


def test_the_reference_replies_fingerprint_covers_pi_ref_the_generation_settings_and_prompt_format(cfg, tmp_path):
    model = tmp_path / "pi_ref"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"\x00" * 32)
    base = eval_job.reference_fingerprint(cfg, str(model))
    assert base == eval_job.reference_fingerprint(cfg, str(model))
    (model / "model.safetensors").write_bytes(b"\x01" * 32)  # pi_ref retrained in place
    import os
    import time

    os.utime(model / "model.safetensors", (time.time() + 5, time.time() + 5))
    assert eval_job.reference_fingerprint(cfg, str(model)) != base
    edited = eval_job.reference_fingerprint(cfg, str(model))
    for section, field, value in (("generation", "top_p", 0.9), ("generation", "max_new_tokens", 7),
                                  ("model", "max_prompt_tokens", 11), ("model", "chat_template", True)):
        old = getattr(getattr(cfg, section), field)
        setattr(getattr(cfg, section), field, value)
        assert eval_job.reference_fingerprint(cfg, str(model)) != edited, f"{section}.{field}"
        setattr(getattr(cfg, section), field, old)
    cfg.eval.bootstrap_samples += 1  # how the replies are summarised is not what they are
    cfg.train.lr *= 2
    assert eval_job.reference_fingerprint(cfg, str(model)) == edited


def test_a_cache_is_read_only_under_its_fingerprint_and_whole(tmp_path):
    path = str(tmp_path / "cache.parquet")
    assert eval_job.read_cache(path, "fp", ["k"]) is None
    first = pd.DataFrame({"k": ["a", "b"], "v": [1, 2]})
    written = eval_job.extend_cache(path, "fp", pd.DataFrame(), first)
    pd.testing.assert_frame_equal(written, first)
    marker = eval_job.read_json(eval_job._marker_path(path))
    assert marker == {"fingerprint": "fp", "sha": eval_job.file_sha(path), "replies": 2}
    assert path.endswith(".parquet") and eval_job._marker_path(path) == str(tmp_path / "cache.json")
    grown = eval_job.extend_cache(path, "fp", written, pd.DataFrame({"k": ["b", "c"], "v": [20, 3]}))
    assert len(grown) == 4 and eval_job.read_json(eval_job._marker_path(path))["replies"] == 4
    read = eval_job.read_cache(path, "fp", ["k"])
    assert len(read) == 3 and read.set_index("k")["v"].to_dict() == {"a": 1, "b": 20, "c": 3}  # twice: the last
    assert eval_job.read_cache(path, "other", ["k"]) is None
    pd.DataFrame({"k": ["x"], "v": [0]}).to_parquet(path)  # replaced behind the marker's back
    assert eval_job.read_cache(path, "fp", ["k"]) is None
    import os

    os.remove(path)
    assert eval_job.read_cache(path, "fp", ["k"]) is None


class _Reply:
    """What an engine returns per prompt (GenerationOutput's fields that the eval job reads)."""

    def __init__(self, text: str, num_tokens: int, finish_reason: str):
        self.text, self.num_tokens, self.finish_reason = text, num_tokens, finish_reason


def test_reference_replies_are_generated_only_for_what_the_cache_lacks(cfg, tmp_path, monkeypatch, alol_log):
    """The engine is replaced by a recorder (generation itself is tested in test_generation.py): what matters
    here is which prompts reach it and what the cache then holds."""
    asked = []

    def engine(model_path, run_cfg, prompts):
        assert model_path == str(model), "the reference replies come from another policy"
        asked.append(list(prompts))
        return [_Reply(f"to {p} at {run_cfg.generation.max_new_tokens}", 3, "eos" if p != "pc" else "length")
                for p in prompts], "transformers"

    monkeypatch.setattr(eval_job, "generate_replies", engine)
    model = tmp_path / "pi_ref"
    model.mkdir()
    (model / "w.bin").write_bytes(b"0")
    cache = str(tmp_path / "reference_replies.parquet")
    prompts = pd.DataFrame({C.PROMPT_ID: ["a", "b", "c"], C.PROMPT: ["pa", "pb", "pc"]})
    n = cfg.generation.max_new_tokens
    first = eval_job.reference_replies(cfg, str(model), prompts.iloc[[0, 2]].reset_index(drop=True), cache)
    assert asked == [["pa", "pc"]]
    assert first[C.RESPONSE].tolist() == [f"to pa at {n}", f"to pc at {n}"]
    assert first[eval_job.RESPONSE_TOKENS].tolist() == [2, 3]  # EOS is not a reply token; a cut reply has none
    assert first[eval_job.FINISH_REASON].tolist() == ["eos", "length"]
    every = eval_job.reference_replies(cfg, str(model), prompts, cache)
    assert asked[-1] == ["pb"] and every[C.PROMPT_ID].tolist() == ["a", "b", "c"]
    assert every[C.RESPONSE].tolist() == [f"to {p} at {n}" for p in ("pa", "pb", "pc")]
    assert len(pd.read_parquet(cache)) == 3
    assert list(pd.read_parquet(cache).columns) == [C.PROMPT_ID, C.PROMPT, C.RESPONSE, eval_job.RESPONSE_TOKENS,
                                                    eval_job.FINISH_REASON]
    again = eval_job.reference_replies(cfg, str(model), prompts.iloc[::-1].reset_index(drop=True), cache)
    assert len(asked) == 2 and again[C.PROMPT_ID].tolist() == ["c", "b", "a"]  # the caller's order, from the cache
    assert alol_log[-1] == f"[eval] reference replies from cache ({cache})"
    renamed = prompts.assign(**{C.PROMPT: ["pa", "pb", "pc changed"]})  # same id, another prompt: another entry
    eval_job.reference_replies(cfg, str(model), renamed, cache)
    assert asked[-1] == ["pc changed"]
    cfg.generation.max_new_tokens = n + 1  # another setting: every reply again, said once
    stale = eval_job.reference_replies(cfg, str(model), prompts, cache)
    assert asked[-1] == ["pa", "pb", "pc"] and stale[C.RESPONSE].tolist() == [f"to {p} at {n + 1}" for p in
                                                                            ("pa", "pb", "pc")]
    assert "[eval] reference replies are stale (pi_ref or generation settings changed): regenerating" in alol_log
    # The reference under evaluation hands in its own replies: the missing ones come from them, not the engine.
    own = prompts.assign(**{C.RESPONSE: ["own a", "own b", "own c"], eval_job.RESPONSE_TOKENS: [1, 2, 3],
                            eval_job.FINISH_REASON: ["eos", "eos", "length"]})
    cfg.generation.max_new_tokens = n + 2
    one = [1]
    mine = eval_job.reference_replies(cfg, str(model), prompts.iloc[one].reset_index(drop=True), cache,
                                      own=own.iloc[one].reset_index(drop=True))
    assert len(asked) == 4 and mine[C.RESPONSE].tolist() == ["own b"] and mine[eval_job.RESPONSE_TOKENS].tolist() == [2]
    both = eval_job.reference_replies(cfg, str(model), prompts, cache, own=own.assign(**{C.RESPONSE: ["x", "y", "z"]}))
    assert len(asked) == 4 and both[C.RESPONSE].tolist() == ["x", "own b", "z"]  # b: from the cache
    assert list(pd.read_parquet(cache).columns) == [C.PROMPT_ID, C.PROMPT, C.RESPONSE, eval_job.RESPONSE_TOKENS,
                                                    eval_job.FINISH_REASON]


def test_reference_rewards_come_from_known_then_the_cache_and_only_new_replies_are_scored(cfg, tmp_path, alol_log):
    """Every policy of a comparison is judged against the same reference replies, scored once: given (`known`,
    when the reference itself is evaluated) or scored, then read from the cache; prompt ids of any type."""
    from alol_ray.tasks import builtin

    prompts = ["Any tips for gardening on a small budget?", "How do I start running?", "Name a colour."]
    replies = ["Sure, water the plants in the morning, thank you for asking.", "no", "blue"]
    true = builtin.total_reward(builtin.score(prompts, replies))
    examples = pd.DataFrame({C.PROMPT_ID: [10, 11, 12], C.PROMPT: prompts, eval_job.REF_RESPONSE: replies})
    assert eval_job.rewards_cache_path(str(tmp_path / "reference_replies.parquet")) == \
        str(tmp_path / "reference_replies_rewards.parquet")
    cache = eval_job.rewards_cache_path(str(tmp_path / "reference_replies.parquet"))
    known = np.array([7.0, np.nan, 9.0])  # not the reward: proves where each value came from
    np.testing.assert_allclose(eval_job.reference_rewards(cfg, examples, cache, known=known),
                               [7.0, true[1], 9.0], atol=1e-12)  # the unknown one scored
    assert list(pd.read_parquet(cache).columns) == [C.PROMPT_ID, C.PROMPT, C.RESPONSE, C.REWARD]
    np.testing.assert_allclose(eval_job.reference_rewards(cfg, examples, cache), [7.0, true[1], 9.0], atol=1e-12)
    assert alol_log[-1] == f"[eval] rewards of the reference replies from cache ({cache})"
    other = examples.assign(**{eval_job.REF_RESPONSE: ["no", "no", "blue"]})  # a new reply to prompt 10
    np.testing.assert_allclose(eval_job.reference_rewards(cfg, other, cache, known=np.array([5.0, 6.0, 6.0])),
                               [5.0, true[1], 9.0], atol=1e-12)
    assert len(pd.read_parquet(cache)) == 4
    cfg.reward.components[0].weight = 2.0  # another reward: everything scored again
    np.testing.assert_allclose(eval_job.reference_rewards(cfg, examples, cache), 2 * true, atol=1e-12)


def test_intervals_are_reproducible_from_their_inputs_and_seed():
    """A published interval can be recomputed: the same inputs, resample count and seed give the same numbers
    (these literals change only with the resampling scheme, on purpose), and the defaults are 2000 resamples,
    seed 0, in chunks of 250."""
    a = np.array([[1.0, 2.0, 4.0, 0.5], [2.0, 2.5, 3.0, 1.0]])
    b = np.array([[0.0, 1.0, 5.0, 0.0]])
    assert paired_hierarchical_ci(a, b, n_samples=7, seed=3, chunk=3) == pytest.approx(GOLDEN_PAIRED, abs=1e-12)
    assert hierarchical_ci(list(a), n_samples=7, seed=3) == pytest.approx(GOLDEN_HIERARCHICAL, abs=1e-12)
    # The defaults, on 30 prompts of many values (where another count or seed moves the interval's ends):
    rng = np.random.default_rng(1)
    c, d = rng.normal(size=(2, 30)), rng.normal(size=(1, 30))
    assert paired_hierarchical_ci(c, d) == paired_hierarchical_ci(c, d, 2000, 0, 250)
    assert paired_hierarchical_ci(c, d) not in (paired_hierarchical_ci(c, d, 2001, 0, 250),
                                                paired_hierarchical_ci(c, d, 2000, 1, 250))
    assert hierarchical_ci(list(c)) == hierarchical_ci(list(c), 2000, 0)
    assert hierarchical_ci(list(c)) not in (hierarchical_ci(list(c), 2001, 0), hierarchical_ci(list(c), 2000, 1))
    # One prompt is enough for an interval (the seeds' spread): seeds 1 and 2 against 0.
    assert paired_hierarchical_ci(a[:, :1], b[:, :1], 50) == (1.5, 1.0, 2.0)


GOLDEN_PAIRED = (0.5, -0.053125, 1.253125)
GOLDEN_HIERARCHICAL = (2.0, 1.421875, 2.640625)


def test_paired_rows_use_the_resamples_asked_for_and_keep_their_columns_when_empty(tmp_path):
    # 40 prompts with rewards of many values: 300 resamples give another interval than the default 2000
    ids, rng = [f"p{i}" for i in range(40)], np.random.default_rng(0)
    nll, a_lol = rng.normal(size=40), rng.normal(size=40)
    entries = [RunEntry("nll", 0, _eval_file(tmp_path / "n.parquet", ids, nll)),
               RunEntry("a_lol", 0, _eval_file(tmp_path / "a.parquet", ids, a_lol))]
    paired = paired_rows(entries, n_bootstrap=300)  # no reference among them: pairs against nll only
    assert list(zip(paired["method"], paired["versus"])) == [("a_lol", "nll")]
    want = paired_hierarchical_ci(a_lol[None, :], nll[None, :], 300)
    assert want != paired_hierarchical_ci(a_lol[None, :], nll[None, :])  # the fixture tells the two apart
    assert (paired.loc[0, "difference"], paired.loc[0, "lo"], paired.loc[0, "hi"]) == want
    # Without a count, the report's 2000 resamples (a count of 2001 moves an end of this interval).
    default = paired_rows(entries).loc[0, ["difference", "lo", "hi"]].tolist()
    assert default == list(paired_hierarchical_ci(a_lol[None, :], nll[None, :], 2000))
    assert default != list(paired_hierarchical_ci(a_lol[None, :], nll[None, :], 2001))
    assert paired_rows(entries[:1]).columns.tolist() == ["method", "versus", "seeds", "versus_seeds", "prompts",
                                                         "difference", "lo", "hi", "verdict"]
    assert paired_rows(entries[:1]).empty


def test_the_method_table_gains_paired_columns_in_the_order_of_the_baselines(tmp_path):
    from alol_ray.evaluation.report import with_paired_columns

    entries = [RunEntry("reference", None, _eval_file(tmp_path / "r.parquet", ["p", "q"], [0.0, 0.0])),
               RunEntry("nll", 0, _eval_file(tmp_path / "n.parquet", ["p", "q"], [1.0, 1.0])),
               RunEntry("a_lol", 0, _eval_file(tmp_path / "a.parquet", ["p", "q"], [3.0, 2.0]))]
    paired = paired_rows(entries, n_bootstrap=100)
    table = with_paired_columns(pd.DataFrame({"method": ["a_lol", "nll", "reference"]}), paired)
    assert table.columns.tolist() == ["method", "vs_reference", "vs_reference_lo", "vs_reference_hi", "vs_nll",
                                      "vs_nll_lo", "vs_nll_hi"]
    assert table["vs_reference"].tolist()[:2] == [2.5, 1.0] and table["vs_nll"].tolist()[0] == 1.5
    assert np.isnan(table["vs_nll"].tolist()[1]) and np.isnan(table["vs_reference"].tolist()[2])
