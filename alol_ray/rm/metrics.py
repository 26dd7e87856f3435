"""Reward-model evaluation: correlation with reward labels and agreement with the data's ranking.

A trivial baseline (response length in characters) is scored the same way, for contrast.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np
import pandas as pd

from alol_ray import columns as C


def pearson(x, y) -> float:
    """Pearson r; NaN when either side is constant or there are fewer than 2 points."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) < 2:
        return float("nan")
    dx, dy = x - x.mean(), y - y.mean()
    denom = math.sqrt(float((dx * dx).sum()) * float((dy * dy).sum()))
    return float((dx * dy).sum() / denom) if denom > 0 else float("nan")


def average_ranks(x) -> np.ndarray:
    """1-based ranks, ties get the mean of the ranks they span (as Spearman's rho needs)."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    sorted_x = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sorted_x[j + 1] == sorted_x[i]:
            j += 1
        ranks[order[i: j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def spearman(x, y) -> float:
    """Spearman rho: Pearson r of the average ranks."""
    return pearson(average_ranks(x), average_ranks(y))


def pairwise_accuracy(frame: pd.DataFrame, scores, better: int = 0, worse: int = 1) -> tuple[float, int]:
    """Fraction of prompts where the rank-`better` row scores above the rank-`worse` row (a tie counts 1/2).

    frame: rows with prompt_id and rank, aligned with `scores`. Returns (accuracy, pairs); NaN if no pair.
    """
    table = pd.DataFrame({"pid": frame[C.PROMPT_ID].to_numpy(), "rank": frame[C.RANK].to_numpy(),
                          "score": np.asarray(scores, dtype=np.float64)})
    wide = table[table["rank"].isin([better, worse])].pivot_table(index="pid", columns="rank", values="score",
                                                                   aggfunc="first")
    if better not in wide or worse not in wide:
        return float("nan"), 0
    wide = wide.dropna(subset=[better, worse])
    if wide.empty:
        return float("nan"), 0
    diff = wide[better].to_numpy() - wide[worse].to_numpy()
    return float(((diff > 0) + 0.5 * (diff == 0)).mean()), int(len(diff))


def score_report(frame: pd.DataFrame, scores) -> dict[str, Any]:
    """Pearson/Spearman with the rows' reward (where present) and rank-0-vs-1 pairwise accuracy."""
    scores = np.asarray(scores, dtype=np.float64)
    out: dict[str, Any] = {}
    if C.REWARD in frame and frame[C.REWARD].notna().any():
        labelled = frame[C.REWARD].notna().to_numpy()
        labels = frame[C.REWARD].to_numpy(dtype=np.float64)[labelled]
        out["pearson"] = pearson(scores[labelled], labels)
        out["spearman"] = spearman(scores[labelled], labels)
        out["labelled_rows"] = int(labelled.sum())
    acc, pairs = pairwise_accuracy(frame, scores)
    out["pairwise_acc"] = acc
    out["pairs"] = pairs
    return out


def length_baseline(frame: pd.DataFrame) -> np.ndarray:
    """The trivial reward: response length in characters."""
    return frame[C.RESPONSE].str.len().to_numpy(dtype=np.float64)


def evaluate_slice(frame: pd.DataFrame, scores) -> dict[str, Any]:
    """{"rows", "prompts", "model": report, "length": report} for one evaluation slice, and "labels" (the
    rows' own rewards as the scorer) when every row carries one."""
    out = {"rows": int(len(frame)), "prompts": int(frame[C.PROMPT_ID].nunique()),
           "model": score_report(frame, scores), "length": score_report(frame, length_baseline(frame))}
    if C.REWARD in frame and frame[C.REWARD].notna().all():
        # the reward labels as the scorer: how often the model that made them agrees with the data's ranking
        out["labels"] = score_report(frame, frame[C.REWARD].to_numpy(dtype=np.float64))
    return out


def format_report(report: dict[str, dict[str, Any]]) -> str:
    """A small text table: one line per (slice, scorer)."""

    def fmt(v: Optional[float]) -> str:
        return "   n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:6.3f}"

    lines = [f"{'slice':<12} {'scorer':<7} {'rows':>6} {'pearson':>8} {'spearman':>8} {'pair_acc':>8} {'pairs':>6}"]
    for name, res in report.items():
        for scorer in ("model", "length", "labels"):
            if scorer not in res:
                continue
            r = res[scorer]
            lines.append(f"{name:<12} {scorer:<7} {res['rows']:>6} {fmt(r.get('pearson')):>8} "
                         f"{fmt(r.get('spearman')):>8} {fmt(r.get('pairwise_acc')):>8} {r.get('pairs', 0):>6}")
    return "\n".join(lines)
