"""Evaluation metrics (pure numpy): rewards with bootstrap intervals, distinct-n, length, win rate.

Every method is judged by these same functions on the same prompts (see ``eval_job``):

- reward: the mean over prompts of the total reward and of each component, each with a percentile
  bootstrap 95% interval over prompts;
- distinct-n (Li et al., 2016): unique n-grams / total n-grams over the whole corpus of replies, on
  lower-cased whitespace tokens, n-grams never crossing two replies; corpus distinct-n falls as the corpus grows,
  so ``distinct/<n>@<k>`` also gives it per fixed number of replies (the mean over blocks of k replies), which
  compares across prompt sets of different sizes;
- repetition: the share of replies that repeat another reply of the set word for word, the share of the most
  common reply, and the most common replies themselves (the mark of a policy that collapsed onto a few strings);
- length: mean words (whitespace tokens) and mean tokens per reply;
- win rate against the reference policy's replies to the same prompts, by reward: a win counts 1,
  a tie 1/2, a loss 0.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np

CI_LEVEL = 0.95


def bootstrap_ci(values: Sequence[float], n_samples: int = 1000, seed: int = 0,
                 level: float = CI_LEVEL) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean: resample the values with replacement ``n_samples``
    times and take the (1-level)/2 and (1+level)/2 quantiles of the resampled means."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_samples, x.size))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def whitespace_tokens(text: str) -> list[str]:
    return text.lower().split()


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Unique n-grams / total n-grams over the corpus (0.0 when the corpus has no n-gram)."""
    total, unique = 0, set()
    for text in texts:
        toks = whitespace_tokens(text)
        grams = [tuple(toks[i:i + n]) for i in range(len(toks) - n + 1)]
        total += len(grams)
        unique.update(grams)
    return len(unique) / total if total else 0.0


# Replies per block of distinct/<n>@<k>: the same k for every prompt set of every report. Small enough that the
# smallest published prompt set (16 prompts, docs/results/hh_smollm2/prompt_file) has a value; a block of 16 replies
# of ~30 words is ~500 words, enough for distinct-1..3 to tell a collapsed policy from a varied one.
DISTINCT_BLOCK = 16


def distinct_n_per_block(texts: Sequence[str], n: int, block: int = DISTINCT_BLOCK) -> float:
    """distinct-n per ``block`` replies: the replies in their given order cut into consecutive blocks of
    ``block`` (a last, shorter block is left out), distinct-n of each block, their mean. NaN when there are
    fewer than ``block`` replies: a smaller corpus is not comparable (its distinct-n is higher by its size alone)."""
    if block < 1:
        raise ValueError(f"distinct_n_per_block: block must be >= 1, got {block}")
    blocks = [texts[i:i + block] for i in range(0, len(texts) - block + 1, block)]
    return float(np.mean([distinct_n(b, n) for b in blocks])) if blocks else float("nan")


def reply_key(text: str) -> str:
    """What makes two replies the same string: lower-cased, whitespace runs as one space, ends stripped."""
    return " ".join(whitespace_tokens(text))


def repetition(texts: Sequence[str], top: int = 3) -> tuple[float, float, list[tuple[str, int]]]:
    """(share of replies equal to another reply of the set, share of the most common reply, the ``top`` most
    common replies that occur more than once as (text, count), most common first, ties in first-seen order).
    Replies are compared by ``reply_key``; each is shown as its first occurrence, whitespace runs as one space.
    An empty reply is the string "". NaN shares for no replies."""
    if not len(texts):
        return float("nan"), float("nan"), []
    counts: dict[str, int] = {}
    shown: dict[str, str] = {}
    for text in texts:
        key = reply_key(text)
        counts[key] = counts.get(key, 0) + 1
        shown.setdefault(key, " ".join(text.split()))
    repeated = sum(c for c in counts.values() if c > 1)
    ranked = sorted(counts.items(), key=lambda kv: -kv[1])  # stable: first seen first among equals
    return repeated / len(texts), ranked[0][1] / len(texts), [(shown[k], c) for k, c in ranked[:top] if c > 1]


def word_counts(texts: Sequence[str]) -> np.ndarray:
    return np.asarray([len(t.split()) for t in texts], dtype=np.int64)


def win_outcomes(rewards: Sequence[float], ref_rewards: Sequence[float]) -> np.ndarray:
    """Per prompt: 1.0 if the policy's reply has the higher reward, 0.5 on a tie, 0.0 otherwise."""
    a, b = np.asarray(rewards, dtype=np.float64), np.asarray(ref_rewards, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"win_outcomes: {a.shape} rewards vs {b.shape} reference rewards")
    return np.where(a > b, 1.0, np.where(a == b, 0.5, 0.0))


def summarize(
    rewards: Mapping[str, Sequence[float]],
    responses: Sequence[str],
    response_tokens: Sequence[int],
    ref_rewards: Optional[Sequence[float]] = None,
    *,
    total_key: str = "reward",
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """All metrics of one evaluation: (metrics, 95% intervals).

    ``rewards``: column -> per-prompt values; ``total_key`` is the total reward, the other keys its
    components (``reward/<name>``). Returns metric keys ``reward/mean``, ``reward/<name>`` (means),
    ``distinct/1..3``, ``distinct/1..3@16`` (per DISTINCT_BLOCK replies), ``repeat/share`` and
    ``repeat/top_share`` (``repetition``), ``length/words``, ``length/tokens``, ``win_rate/reference`` (when
    ``ref_rewards``) and ``eval/prompts``; intervals for the reward means and the win rate.
    """
    metrics: dict[str, float] = {}
    ci: dict[str, list[float]] = {}

    def mean_with_ci(key: str, values) -> None:
        values = np.asarray(values, dtype=np.float64)
        metrics[key] = float(values.mean()) if values.size else float("nan")
        ci[key] = list(bootstrap_ci(values, n_bootstrap, seed))

    mean_with_ci("reward/mean", rewards[total_key])
    for key in sorted(k for k in rewards if k != total_key):
        mean_with_ci(key, rewards[key])
    for n in (1, 2, 3):
        metrics[f"distinct/{n}"] = distinct_n(responses, n)
    for n in (1, 2, 3):
        metrics[f"distinct/{n}@{DISTINCT_BLOCK}"] = distinct_n_per_block(responses, n)
    metrics["repeat/share"], metrics["repeat/top_share"], _ = repetition(responses)
    metrics["length/words"] = float(word_counts(responses).mean()) if len(responses) else float("nan")
    metrics["length/tokens"] = float(np.mean(response_tokens)) if len(response_tokens) else float("nan")
    if ref_rewards is not None:
        mean_with_ci("win_rate/reference", win_outcomes(rewards[total_key], ref_rewards))
    metrics["eval/prompts"] = float(len(responses))
    return metrics, ci


def format_table(metrics: Mapping[str, float], ci: Mapping[str, Sequence[float]], title: str = "") -> str:
    """A plain-text table: metric | value | 95% CI."""
    rows = [("metric", "value", "95% CI")]
    for key, value in metrics.items():
        interval = ci.get(key)
        shown = f"{int(value)}" if key == "eval/prompts" else f"{value:.4f}"
        rows.append((key, shown, f"[{interval[0]:.4f}, {interval[1]:.4f}]" if interval else ""))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [title] if title else []
    for i, r in enumerate(rows):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
