"""Evaluation metrics against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from evaluation.metrics import bootstrap_ci, distinct_n, format_table, summarize, win_outcomes

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
    """
    metrics, ci = summarize({"reward": REWARD, "reward/polite": POLITE}, RESPONSES, TOKENS, REF_REWARD,
                            n_bootstrap=200, seed=0)
    expected = {
        "reward/mean": 7 / 6, "reward/polite": 0.5, "distinct/1": 7 / 9, "distinct/2": 5 / 6,
        "distinct/3": 1.0, "length/words": 3.0, "length/tokens": 13 / 3, "win_rate/reference": 0.5,
        "eval/prompts": 3.0,
    }
    assert metrics.keys() == expected.keys()
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value, abs=1e-12), key
    assert set(ci) == {"reward/mean", "reward/polite", "win_rate/reference"}
    for key, (lo, hi) in ci.items():
        assert lo <= metrics[key] <= hi


def test_distinct_edge_cases():
    assert distinct_n([], 1) == 0.0
    assert distinct_n(["one"], 2) == 0.0  # no bigram at all
    assert distinct_n(["Yes YES yes"], 1) == pytest.approx(1 / 3)  # case folded
    # n-grams never span two replies: "a b" + "c" has one bigram, not two.
    assert distinct_n(["a b", "c"], 2) == 1.0


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
