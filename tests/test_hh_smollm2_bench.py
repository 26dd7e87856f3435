"""bench/hh_smollm2.py's own figures, from files written by hand: the paired differences of two reports side by
side (the published head of docs/results/hh_smollm2) and the load samples summed into the bench's wall time."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
import hh_smollm2  # noqa: E402  (bench/ is not a package)

COLUMNS = ["method", "versus", "seeds", "versus_seeds", "prompts", "difference", "lo", "hi", "verdict"]


def test_paired_differences_of_two_reports_side_by_side(tmp_path):
    """The test split has a_lol - reference and a_lol - nll; the prompt file only a_lol - reference: one row per
    comparison, one column per report, '-' where a report lacks it."""
    test, file = tmp_path / "test", tmp_path / "file"
    for folder, rows in ((test, [["a_lol", "reference", 1, 1, 32, 0.0125, -0.004, 0.031, "no difference"],
                                 ["a_lol", "nll", 1, 1, 32, -0.02, -0.035, -0.006, "lower"]]),
                         (file, [["a_lol", "reference", 1, 1, 16, 0.05, 0.01, 0.09, "higher"]])):
        folder.mkdir()
        pd.DataFrame(rows, columns=COLUMNS).to_csv(folder / "paired.csv", index=False)
    lines = hh_smollm2.paired_summary({"test split": str(test), "prompt file": str(file),
                                       "missing": str(tmp_path / "none")})
    assert lines == [
        "| comparison | test split: difference (95% CI) | prompt file: difference (95% CI) |",
        "|---|---|---|",
        "| a_lol - reference | +0.013 (-0.004 to +0.031), no difference, 32 prompts "
        "| +0.050 (+0.010 to +0.090), higher, 16 prompts |",
        "| a_lol - nll | -0.020 (-0.035 to -0.006), lower, 32 prompts | - |",
    ]
    assert hh_smollm2.paired_summary({"missing": str(tmp_path / "none")}) == []


def test_load_summary_sums_the_wall_time_of_every_invocation(tmp_path):
    """Samples every 30 s: t = 0, 30, 60 (one invocation), then t = 600, 630, 660, 690 (another, after a gap of
    540 s that is not counted): wall time 60 + 90 = 150 s = 2.5 min, shown as 2 or 3; loads 1..7, mean 4."""
    path = tmp_path / "bench_load.jsonl"
    samples = list(zip([0, 30, 60, 600, 630, 660, 690], [1, 2, 3, 4, 5, 6, 7]))
    path.write_text("".join(json.dumps({"time": t, "load1": x}) + "\n" for t, x in samples), encoding="utf-8")
    said = hh_smollm2.load_summary(str(path))
    assert said.startswith("1-minute load average sampled every 30 s while the bench ran (7 samples, 2 min of wall "
                           "time over 2 invocation(s)): mean 4.0, from 1.0 to 7.0, on "), said
    assert hh_smollm2.load_summary(str(tmp_path / "none.jsonl")) is None
