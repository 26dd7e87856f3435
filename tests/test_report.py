"""The comparison report: hierarchical intervals, the method table, plots, report.md (no Ray needed)."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest

from alol_ray import columns as C
from alol_ray.config import load_config
from evaluation.report import RunEntry, hierarchical_ci, method_rows, write_report


def test_hierarchical_ci_contains_mean_and_widens_with_seed_spread():
    rng = np.random.default_rng(0)
    tight = [rng.normal(1.0, 0.1, 200) for _ in range(3)]
    spread = [rng.normal(mu, 0.1, 200) for mu in (0.5, 1.0, 1.5)]
    m1, lo1, hi1 = hierarchical_ci(tight, 500)
    m2, lo2, hi2 = hierarchical_ci(spread, 500)
    assert lo1 < m1 < hi1 and lo2 < m2 < hi2
    assert m1 == pytest.approx(np.mean([g.mean() for g in tight]))
    assert (hi2 - lo2) > 5 * (hi1 - lo1)  # seed-to-seed variation must show in the interval
    assert hierarchical_ci([np.array([2.0, 2.0])], 50) == (2.0, 2.0, 2.0)


def _eval_file(path, rewards, responses, win=None):
    frame = pd.DataFrame({C.PROMPT_ID: [f"p{i}" for i in range(len(rewards))], C.PROMPT: "q",
                          C.RESPONSE: responses, C.REWARD: rewards, C.reward_column("builtin"): rewards,
                          "response_tokens": [len(r.split()) + 1 for r in responses]})
    if win is not None:
        frame["win"] = win
    frame.to_parquet(path)
    return str(path)


def test_method_table_and_report(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train_dir = tmp_path / "train" / "a_lol-s0"
    train_dir.mkdir(parents=True)
    (train_dir / "summary.json").write_text(json.dumps({"positive_fraction": 0.6}))
    (train_dir / "metrics.jsonl").write_text("\n".join(json.dumps({"train/step": s, "train/tokens": 100.0}) for s in (1, 2)))
    (train_dir / "val.jsonl").write_text("\n".join(json.dumps({"train/step": s, "val/reward": v})
                                                   for s, v in ((0, 1.0), (10, 2.0))))
    entries = [
        RunEntry("reference", None, _eval_file(tmp_path / "ref.parquet", [1.0, 1.0, 1.0], ["a b", "a c", "a b"])),
        RunEntry("a_lol", 0, _eval_file(tmp_path / "a0.parquet", [2.0, 3.0, 1.0], ["x y z", "x y", "w"], [1, 1, 0.5]),
                 train_dir=str(train_dir), train_seconds=4.0),
        RunEntry("a_lol", 1, _eval_file(tmp_path / "a1.parquet", [2.0, 2.0, 2.0], ["x", "y", "z"], [1, 1, 1])),
    ]
    table = method_rows(entries, n_bootstrap=200)
    assert list(table["method"]) == ["a_lol", "reference"]  # sorted by reward
    alol = table.iloc[0]
    # mean over seeds of per-seed means: (2.0 + 2.0) / 2
    assert alol[C.REWARD] == pytest.approx(2.0)
    assert alol["win_rate"] == pytest.approx((2.5 / 3 + 1.0) / 2)
    assert alol["data_used"] == pytest.approx(0.6)
    assert alol["tokens_per_s"] == pytest.approx(200.0 / 4.0)
    # distinct-1 averaged over seeds: seed 0 has 4 unique of 6 words, seed 1 has 3 of 3
    assert alol["distinct/1"] == pytest.approx((4 / 6 + 1.0) / 2)

    cfg = load_config(None, ["name=t", f"storage={tmp_path / 'runs'}"])
    report, printed = write_report(str(tmp_path), entries, command=f"alol compare --seeds 2 storage={tmp_path}/runs",
                                   cfg=cfg, n_bootstrap=100)
    text = open(report).read()
    assert "| a_lol | 2 |" in text and "name: t" in text
    # No machine paths: the storage below the working directory reads as typed there, the rest of the
    # config is only what differs from the defaults, and the full config is a file beside the report.
    assert str(tmp_path) not in text and os.path.expanduser("~") + "/" not in text
    assert "seed: 0" not in text and "hf_split" not in text
    assert "report/config.yaml" in text and "hf_split: train" in (tmp_path / "report" / "config.yaml").read_text()
    assert (tmp_path / "report" / "val_reward.png").stat().st_size > 1000
    assert (tmp_path / "report" / "reward_dist.png").stat().st_size > 1000
    assert "a_lol" in printed and "reference" in printed
