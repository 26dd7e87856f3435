"""Slow: issue #4's benchmark as a test. A reward model on the real HH rewards with the packaged
all-MiniLM-L6-v2 encoder must track the held-out labels (Pearson >= 0.5) and beat the length baseline.

    .venv/bin/python -m pytest -q -m slow tests/test_rm_hh.py     (about 10 min alone on 2 cores; the
                                                                   encoder pass dominates and is cached)
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.timeout(7200)
def test_minilm_reward_model_tracks_hh_rewards(hh_dir, tmp_path):
    spec = importlib.util.spec_from_file_location("rm_hh_bench", REPO / "bench" / "rm_hh.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    storage = os.environ.get("ALOL_RM_HH_STORAGE", str(tmp_path))  # point at runs/ to reuse the feature cache
    assert bench.main(["--data-dir", str(hh_dir), "--storage", storage]) == 0  # held-out Pearson >= 0.5

    with open(Path(storage) / "rm_hh" / "rm" / "model" / "alol_rm_eval.json") as fh:
        slices = json.load(fh)["slices"]
    held, dev = slices["holdout"], slices["val"]
    assert held["rows"] > 800 and dev["rows"] > 500
    assert held["model"]["pearson"] > abs(held["length"]["pearson"]) + 0.3
    assert held["model"]["spearman"] > abs(held["length"]["spearman"]) + 0.3
    assert dev["model"]["pearson"] > abs(dev["length"]["pearson"])  # another reward model's labels
    # Pairwise accuracy (rank 0 vs 1, human preference) is reported, not asserted: a head on frozen
    # mean-pooled MiniLM features barely separates two replies to one prompt (~0.54 against a ~0.65
    # agreement of the labels themselves with the ranking on the training prompts).
    assert held["model"]["pairs"] == held["length"]["pairs"] > 400
