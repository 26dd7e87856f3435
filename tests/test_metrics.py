"""Evaluation metrics against values computed by hand."""

from __future__ import annotations

import math
import re
import warnings

import numpy as np
import pytest

from alol_ray.evaluation.metrics import (
    DISTINCT_BLOCK,
    bootstrap_ci,
    distinct_n,
    distinct_n_per_block,
    format_table,
    repetition,
    summarize,
    whitespace_tokens,
    win_outcomes,
    word_counts,
)

# The three-example corpus.
RESPONSES = ["The cat sat", "the cat ran fast", "A dog"]
TOKENS = [4, 6, 3]
REWARD = [2.0, 1.0, 0.5]
POLITE = [1.0, 0.5, 0.0]
REF_REWARD = [1.0, 1.0, 1.5]


def test_three_example_corpus_by_hand():
    """Lower-cased whitespace tokens: [the cat sat] [the cat ran fast] [a dog].

    distinct-1: 9 unigrams (3 + 4 + 2), unique {the, cat, sat, ran, fast, a, dog} = 7  -> 7/9
    distinct-2: 6 bigrams (2 + 3 + 1): the-cat twice, so 5 unique                      -> 5/6
    distinct-3: 3 trigrams (1 + 2 + 0): the-cat-sat, the-cat-ran, cat-ran-fast          -> 3/3
    length/words = (3 + 4 + 2) / 3 = 3;  length/tokens = (4 + 6 + 3) / 3 = 13/3
    reward/mean = (2 + 1 + 0.5) / 3 = 7/6;  reward/polite = (1 + 0.5 + 0) / 3 = 0.5
    win vs reference: 2 > 1 win (1), 1 = 1 tie (1/2), 0.5 < 1.5 loss (0)             -> 1.5/3 = 0.5
    distinct-n per 16 replies: 3 replies make no block of 16                          -> nan
    repetition: three different replies -> none repeats (0), the most common is one of 3 -> 1/3
    """
    metrics, ci = summarize({"reward": REWARD, "reward/polite": POLITE}, RESPONSES, TOKENS, REF_REWARD,
                            n_bootstrap=200, seed=0)
    expected = {
        "reward/mean": 7 / 6, "reward/polite": 0.5, "distinct/1": 7 / 9, "distinct/2": 5 / 6,
        "distinct/3": 1.0, "length/words": 3.0, "length/tokens": 13 / 3, "win_rate/reference": 0.5,
        "eval/prompts": 3.0, "repeat/share": 0.0, "repeat/top_share": 1 / 3,
        **{f"distinct/{n}@{DISTINCT_BLOCK}": math.nan for n in (1, 2, 3)},
    }
    assert metrics.keys() == expected.keys()
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value, abs=1e-12, nan_ok=True), key
    assert set(ci) == {"reward/mean", "reward/polite", "win_rate/reference"}
    for key, (lo, hi) in ci.items():
        assert lo <= metrics[key] <= hi


def test_distinct_edge_cases():
    assert distinct_n([], 1) == 0.0
    assert distinct_n(["one"], 2) == 0.0  # no bigram at all
    assert distinct_n(["Yes YES yes"], 1) == pytest.approx(1 / 3)  # case folded
    # n-grams never span two replies: "a b" + "c" has one bigram, not two.
    assert distinct_n(["a b", "c"], 2) == 1.0


def test_distinct_per_block_by_hand():
    """Replies [a b] [a c] [a b] [d], in this order.

    blocks of 2: [a b][a c] -> unigrams a b a c, unique 3 of 4 = 0.75; [a b][d] -> a b d, 3 of 3 = 1.0
                 distinct-1 = (0.75 + 1.0) / 2 = 0.875 (the whole corpus: 4 unique of 7 = 0.571)
                 distinct-2: block 1 (a b) (a c) = 2 of 2; block 2 (a b) = 1 of 1 -> 1.0
    blocks of 3: [a b][a c][a b], the 4th reply left out -> a b a c a b, 3 unique of 6 = 0.5
    blocks of 5: none -> nan
    """
    texts = ["a b", "a c", "a b", "d"]
    assert distinct_n_per_block(texts, 1, block=2) == pytest.approx(0.875, abs=1e-12)
    assert distinct_n_per_block(texts, 2, block=2) == pytest.approx(1.0, abs=1e-12)
    assert distinct_n_per_block(texts, 1, block=3) == pytest.approx(0.5, abs=1e-12)
    assert math.isnan(distinct_n_per_block(texts, 1, block=5))
    assert distinct_n_per_block(texts, 1, block=4) == pytest.approx(distinct_n(texts, 1), abs=1e-12)
    with pytest.raises(ValueError):
        distinct_n_per_block(texts, 1, block=0)


def test_distinct_per_block_compares_sets_of_different_sizes():
    """One policy's replies, drawn alike, in a set of 100 and in a set of 400: corpus distinct-1 falls with the
    size (more repeats of the same words); per block of DISTINCT_BLOCK it is the same measure on both."""
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(300)]
    replies = [" ".join(rng.choice(words, size=8)) for _ in range(400)]
    small, large = replies[:100], replies
    assert distinct_n(large, 1) < 0.8 * distinct_n(small, 1)
    assert distinct_n_per_block(large, 1) == pytest.approx(distinct_n_per_block(small, 1), rel=0.05)


def test_repetition_by_hand():
    """Replies compared lower-cased, spacing aside: "I'm sorry." x3 (one in capitals with a double space), "" x2
    (one only blanks), "Sure!" and "Paris." once each: 7 replies.

    repeated: 3 + 2 = 5 of 7; the most common: 3 of 7; the top list: "I'm sorry." (as first seen) 3, then "" 2;
    the singletons are not listed (they repeat nothing).
    """
    texts = ["I'm sorry.", "i'm  SORRY.", "Sure!", "", "Paris.", "   ", "I'm sorry."]
    share, top_share, top = repetition(texts)
    assert share == pytest.approx(5 / 7, abs=1e-12) and top_share == pytest.approx(3 / 7, abs=1e-12)
    assert top == [("I'm sorry.", 3), ("", 2)]
    assert repetition(texts, top=1)[2] == [("I'm sorry.", 3)]
    assert repetition(["b", "a", "a", "b"]) == (1.0, 0.5, [("b", 2), ("a", 2)])  # a tie: first seen first
    assert repetition(["x", "y"]) == (0.0, 0.5, [])
    empty = repetition([])
    assert math.isnan(empty[0]) and math.isnan(empty[1]) and empty[2] == []


def test_win_outcomes_ties_count_half():
    assert win_outcomes([1, 2, 3, 3], [1, 1, 4, 3]).tolist() == [0.5, 1.0, 0.0, 0.5]
    with pytest.raises(ValueError):
        win_outcomes([1, 2], [1])


def test_bootstrap_on_three_values_matches_the_exact_distribution():
    """The mean of 3 draws from {0, 1, 2} is 0 with probability 1/27 = 3.7% and 2 with 1/27: both
    beyond the 2.5% tails, so the 95% interval is exactly [0, 2] (10k resamples: ~370 land on each end,
    far above the 250 the quantile needs)."""
    assert bootstrap_ci([0.0, 1.0, 2.0], n_samples=10_000, seed=0) == (0.0, 2.0)
    assert bootstrap_ci([0.7, 0.7, 0.7], n_samples=100) == pytest.approx((0.7, 0.7), abs=1e-12)
    assert all(math.isnan(v) for v in bootstrap_ci([], n_samples=10))


def test_bootstrap_width_matches_the_normal_approximation():
    x = np.random.default_rng(1).normal(size=400)
    lo, hi = bootstrap_ci(x, n_samples=4000, seed=2)
    half = 1.96 * x.std() / math.sqrt(x.size)
    assert (hi - lo) / 2 == pytest.approx(half, rel=0.1)
    assert (lo + hi) / 2 == pytest.approx(x.mean(), abs=0.1 * half)


def test_table_lists_every_metric_with_its_interval():
    metrics, ci = summarize({"reward": REWARD}, RESPONSES, TOKENS, None, n_bootstrap=50)
    table = format_table(metrics, ci, title="t")
    assert "win_rate/reference" not in table
    for key in metrics:
        assert key in table
    assert f"{7 / 6:.4f}" in table and "[" in table


def test_table_layout_exactly():
    """Columns are left-justified to their widest cell and joined by two spaces, trailing blanks stripped;
    one dashed rule under the header; eval/prompts printed as an integer; no interval -> empty cell.

        widths: metric column max(len("metric"), len("reward/mean"), len("distinct/1"), len("eval/prompts")) = 12,
                value column max(5, 6, 6, 1) = 6, CI column max(6, len("[1.2500, 1.7500]") = 16) = 16
    """
    metrics = {"reward/mean": 1.5, "distinct/1": 0.75, "eval/prompts": 3.0}
    ci = {"reward/mean": [1.25, 1.75]}
    expected = [
        "metric        value   95% CI",
        "------------  ------  ----------------",
        "reward/mean   1.5000  [1.2500, 1.7500]",
        "distinct/1    0.7500",
        "eval/prompts  3",
    ]
    assert format_table(metrics, ci) == "\n".join(expected)
    assert format_table(metrics, ci, title="Run 1") == "\n".join(["Run 1"] + expected)


def test_summarize_of_an_empty_evaluation_is_nan_and_quiet():
    """No prompt at all: every mean is nan (not a numpy 'mean of empty slice' warning), distinct-n 0, the
    intervals [nan, nan], 0 prompts."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        metrics, ci = summarize({"reward": [], "reward/polite": []}, [], [], n_bootstrap=10)
    for key in ("reward/mean", "reward/polite", "length/words", "length/tokens"):
        assert math.isnan(metrics[key]), key
    assert [metrics[f"distinct/{n}"] for n in (1, 2, 3)] == [0.0, 0.0, 0.0]
    for key in ("repeat/share", "repeat/top_share", *(f"distinct/{n}@{DISTINCT_BLOCK}" for n in (1, 2, 3))):
        assert math.isnan(metrics[key]), key
    assert metrics["eval/prompts"] == 0.0
    assert all(math.isnan(v) for v in ci["reward/mean"] + ci["reward/polite"])


def test_summarize_intervals_use_the_given_seed_and_1000_resamples_by_default():
    """summarize's intervals are bootstrap_ci's with its n_bootstrap and seed (defaults 1000 and 0), and
    bootstrap_ci is the percentile bootstrap written out here with the same generator: resample indices
    rng.integers(0, n, (n_samples, n)), take the means' 2.5% and 97.5% quantiles. On 40 continuous values
    another seed or resample count moves the bounds, so each is pinned exactly."""
    x = np.random.default_rng(11).normal(size=40)

    def percentile_bootstrap(n_samples, seed):
        idx = np.random.default_rng(seed).integers(0, x.size, size=(n_samples, x.size))
        lo, hi = np.quantile(x[idx].mean(axis=1), [0.025, 0.975])
        return [float(lo), float(hi)]

    responses, tokens = ["a"] * 40, [1] * 40
    _, ci = summarize({"reward": x}, responses, tokens)
    assert ci["reward/mean"] == percentile_bootstrap(1000, 0)
    assert ci["reward/mean"] != percentile_bootstrap(1001, 0) and ci["reward/mean"] != percentile_bootstrap(1000, 1)
    _, ci = summarize({"reward": x}, responses, tokens, [0.0] * 40, n_bootstrap=300, seed=5)
    assert ci["reward/mean"] == percentile_bootstrap(300, 5) != percentile_bootstrap(300, 0)
    wins = (x > 0).astype(np.float64)  # ties impossible: 1 or 0 per prompt
    idx = np.random.default_rng(5).integers(0, 40, size=(300, 40))
    assert ci["win_rate/reference"] == [float(q) for q in np.quantile(wins[idx].mean(axis=1), [0.025, 0.975])]


def test_summarize_means_in_float64():
    """float32 rewards are averaged in float64: float32(0.1) = 0.10000000149011612 and float32(0.7) =
    0.699999988079071 have the mean 0.3999999947845936; a float32 mean would round to 0.4000000059604645."""
    rewards = np.array([0.1, 0.7], dtype=np.float32)
    metrics, _ = summarize({"reward": rewards}, ["a", "b"], [1, 1], n_bootstrap=10)
    assert metrics["reward/mean"] == pytest.approx(0.3999999947845936, abs=1e-15)


def test_whitespace_tokens_and_word_counts():
    """Tokens are the lower-cased whitespace split; word counts are int64, also for an empty corpus."""
    assert whitespace_tokens("The  CAT\tsat\n") == ["the", "cat", "sat"]
    counts = word_counts(["a b", "", "  c d  e "])
    assert counts.tolist() == [2, 0, 3] and counts.dtype == np.int64
    empty = word_counts([])
    assert empty.shape == (0,) and empty.dtype == np.int64


def test_win_outcomes_missing_rewards_never_win_and_errors_name_the_shapes():
    """A reward that is None or nan (a failed scoring) compares false both ways: 0 (a loss), never a tie;
    3 == 3 stays a tie (1/2). Mismatched lengths name both shapes."""
    outcome = win_outcomes([None, 2.0, 1.0, 3.0], [1.0, None, float("nan"), 3.0])
    assert outcome.tolist() == [0.0, 0.0, 0.0, 0.5]
    with pytest.raises(ValueError, match=re.escape("win_outcomes: (2,) rewards vs (1,) reference rewards")):
        win_outcomes([1, 2], [1])


def test_bootstrap_defaults_and_float64_resampled_means():
    """bootstrap_ci defaults to 1000 resamples with seed 0, and float32 values are resampled in float64: the
    interval of float32 values is that of the same values as float64 (float32 means would move the bounds
    by ~1e-8)."""
    x = np.random.default_rng(11).normal(size=40).astype(np.float32)
    assert bootstrap_ci(x) == bootstrap_ci(x.astype(np.float64), n_samples=1000, seed=0)
    assert bootstrap_ci(x) != bootstrap_ci(x, n_samples=1001) and bootstrap_ci(x) != bootstrap_ci(x, seed=1)
