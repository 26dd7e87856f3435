"""The comparison report: hierarchical intervals, the method table, plots, report.md (no Ray needed)."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest

from alol_ray import columns as C
from alol_ray.config import load_config
from alol_ray.evaluation.report import (RunEntry, hierarchical_ci, method_rows, paired_hierarchical_ci, paired_rows,
                               step_throughput, verdict, write_report)


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
    (train_dir / "metrics.jsonl").write_text("\n".join(json.dumps({"train/step": s, "train/tokens": 100.0,
                                                                "time/step_s": 0.5}) for s in (1, 2)))
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
    # optimizer steps only: 200 tokens in 2 x 0.5 s of step time (not the stage's 4 s of wall time)
    assert alol["tokens_per_s"] == pytest.approx(200.0) and alol["step_s"] == pytest.approx(0.5)
    assert alol["train_seconds"] == pytest.approx(4.0)
    # distinct-1 averaged over seeds: seed 0 has 4 unique of 6 words, seed 1 has 3 of 3
    assert alol["distinct/1"] == pytest.approx((4 / 6 + 1.0) / 2)
    # repetition, averaged over seeds: a_lol repeats nothing; the reference says "a b" twice of 3
    reference = table.iloc[1]
    assert alol["repeat/share"] == 0.0 and alol["repeat/top_share"] == pytest.approx(1 / 3)
    assert reference["repeat/share"] == pytest.approx(2 / 3) and reference["repeat/top_share"] == pytest.approx(2 / 3)
    assert np.isnan(alol["distinct/1@16"])  # 3 replies: no block of 16

    cfg = load_config(None, ["name=t", f"storage={tmp_path / 'runs'}"])
    report, printed = write_report(str(tmp_path), entries, command=f"alol compare --seeds 2 storage={tmp_path}/runs",
                                   cfg=cfg, n_bootstrap=100)
    text = open(report).read()
    assert "| a_lol | 2 |" in text and "name: t" in text
    # paired: a_lol vs the reference on the same 3 prompts, seed means (2, 2.5, 1.5) - 1 = +1.0
    assert "| a_lol | reference | +1.000 (" in text and "## Sample replies" in text
    # the diversity section: per-block distinct-n needs 100 replies; the reference's repeated reply, with its count
    assert "## Diversity and repetition" in text
    assert "| a_lol | - | 0% | 33% | none |" in text
    assert '| reference | - | 67% | 67% | "a b": 2 |' in text
    paired = pd.read_csv(tmp_path / "report" / "paired.csv")
    assert paired.loc[0, "difference"] == pytest.approx(1.0)
    assert pd.read_csv(tmp_path / "report" / "methods.csv").set_index("method").loc["a_lol", "vs_reference"] == \
        pytest.approx(1.0)
    # No machine paths: the storage below the working directory reads as typed there, the rest of the
    # config is only what differs from the defaults, and the full config is a file beside the report.
    assert str(tmp_path) not in text and os.path.expanduser("~") + "/" not in text
    assert "seed: 0" not in text and "hf_split" not in text
    assert "report/config.yaml" in text and "hf_split: train" in (tmp_path / "report" / "config.yaml").read_text()
    assert (tmp_path / "report" / "val_reward.png").stat().st_size > 1000
    assert (tmp_path / "report" / "reward_dist.png").stat().st_size > 1000
    assert "a_lol" in printed and "reference" in printed


def test_paired_interval_uses_the_pairing_and_the_seeds():
    rng = np.random.default_rng(1)
    prompt_effect = rng.normal(0.0, 1.0, 300)  # large, shared by both methods: pairing must cancel it
    b = prompt_effect + rng.normal(0.0, 0.05, (3, 300))
    a = prompt_effect + 0.1 + rng.normal(0.0, 0.05, (3, 300))
    diff, lo, hi = paired_hierarchical_ci(a, b, 1000)
    assert diff == pytest.approx(float((a.mean(0) - b.mean(0)).mean()))
    assert 0.0 < lo < diff < hi and hi - lo < 0.05  # unpaired, the prompt spread would make it ~0.3 wide
    assert verdict(lo, hi) == "higher (established)"
    assert verdict(-hi, -lo) == "lower (established)" and verdict(-0.1, 0.2) == "not established"
    # seed-to-seed spread of A widens the interval: one seed far off
    shifted = a.copy()
    shifted[0] += 0.3
    _, lo2, hi2 = paired_hierarchical_ci(shifted, b, 1000)
    assert hi2 - lo2 > 3 * (hi - lo)
    with pytest.raises(ValueError):
        paired_hierarchical_ci(a[:, :10], b, 10)


def test_paired_rows_against_reference_and_nll(tmp_path):
    def entry(method, seed, rewards):
        return RunEntry(method, seed, _eval_file(tmp_path / f"{method}{seed}.parquet", rewards, ["a"] * len(rewards)))

    entries = [entry("reference", None, [1.0, 2.0, 3.0, 4.0]),
               entry("nll", 0, [1.5, 2.5, 3.5, 4.5]), entry("nll", 1, [1.5, 2.5, 3.5, 4.5]),
               entry("a_lol", 0, [1.0, 2.0, 3.0, 4.0]), entry("a_lol", 1, [1.0, 2.0, 3.0, 4.0])]
    paired = paired_rows(entries, n_bootstrap=200).set_index(["method", "versus"])
    assert set(paired.index) == {("nll", "reference"), ("a_lol", "reference"), ("a_lol", "nll")}
    assert paired.loc[("a_lol", "nll"), "difference"] == pytest.approx(-0.5)
    assert paired.loc[("a_lol", "nll"), "verdict"] == "lower (established)"
    assert paired.loc[("a_lol", "reference"), "verdict"] == "not established"  # exactly 0, interval [0, 0]
    assert paired.loc[("nll", "reference"), "seeds"] == 2 and paired.loc[("nll", "reference"), "versus_seeds"] == 1


def test_throughput_counts_step_time_only():
    steps = [{"train/tokens": 300.0, "time/step_s": 0.25}, {"train/tokens": 100.0, "time/step_s": 0.15},
             {"val/reward": 1.0}]
    rate, step_s = step_throughput(steps)
    assert rate == pytest.approx(1000.0) and step_s == pytest.approx(0.2)
    assert np.isnan(step_throughput([{"train/tokens": 5.0}])[0])


def _pixels(png: str, colour: str) -> int:
    """How many pixels of the image are drawn in ``colour`` (matplotlib's default cycle: C0, C1, ...)."""
    import matplotlib.colors
    import matplotlib.image

    image = matplotlib.image.imread(png)[..., :3]
    return int((np.abs(image - np.array(matplotlib.colors.to_rgb(colour))).max(axis=-1) < 0.02).sum())


def test_the_plots_draw_every_method(tmp_path):
    """Not only a file of some size: the val-reward plot has a line for each method's curve (a legend sample
    alone is a few dozen pixels, a curve hundreds) and the reward plot a mean marker per method."""
    from alol_ray.evaluation.report import plot_reward_distributions, plot_val_curves

    entries = []
    for i, method in enumerate(("a_lol", "nll")):
        train_dir = tmp_path / method
        train_dir.mkdir()
        (train_dir / "val.jsonl").write_text("\n".join(json.dumps({"train/step": s, "val/reward": (i + 1) * s / 100})
                                                       for s in (0, 50, 100)))
        entries.append(RunEntry(method, 0, _eval_file(tmp_path / f"{method}.parquet", [1.0, 2.0 + i, 3.0],
                                                      ["a", "b", "c"]), train_dir=str(train_dir)))
    curves = plot_val_curves(entries, str(tmp_path / "val.png"))
    assert _pixels(curves, "C0") > 300 and _pixels(curves, "C1") > 300 and _pixels(curves, "C2") == 0
    one = plot_val_curves(entries[:1], str(tmp_path / "one.png"))
    assert _pixels(one, "C0") > 300 and _pixels(one, "C1") == 0
    dist = plot_reward_distributions(entries, str(tmp_path / "dist.png"))
    means = _pixels(dist, "C2")  # the mean triangles
    assert means > 20 and abs(_pixels(plot_reward_distributions(entries[:1], str(tmp_path / "d1.png")), "C2") * 2
                              - means) < means / 2
