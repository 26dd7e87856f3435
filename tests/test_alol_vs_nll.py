"""A-LoL beats NLL on the built-in task at toy scale: same data, same pi_ref, same seed, same test prompts.

`alol compare` trains nll and a_lol from one pi_ref on one scored table; both are evaluated on the same test
prompts with greedy decoding. The statistic is the paired difference per prompt (a_lol's reply reward minus
nll's to the same prompt). NLL imitates the preferred replies, including the annotator's bad ones on
sensitive requests; A-LoL trains only on positive-advantage rows. The threshold was measured with
bench/alol_vs_nll.py over task seeds 0-3 at exactly these sizes (see MIN_MEAN_DIFFERENCE). The sizes are
the smallest measured at which pi_ref learns the task's pattern: with a 2-layer, 64-wide model and 120
reference steps both policies babble and the difference vanished on one seed (+0.007 on seed 1).
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from alol_ray import columns as C

SIZES = [
    "compare.methods=[nll,a_lol]", "compare.seeds=1",
    "data.builtin_train_prompts=600", "data.builtin_eval_prompts=48",
    "model.tiny.vocab_size=1024", "model.tiny.n_layer=2", "model.tiny.n_positions=128",
    "model.max_prompt_tokens=32", "model.max_response_tokens=64", "generation.max_new_tokens=48",
    "reference.train.steps=200", "reference.train.batch_size=16", "reference.train.lr=3e-3",
    "reference.train.lr_schedule=cosine", "reference.train.warmup_steps=20", "reference.train.eval_every=0",
    "train.steps=80", "train.batch_size=16", "train.lr=1e-3", "train.eval_every=0",
    "eval.max_prompts=48", "eval.bootstrap_samples=200",
    "train.cpus_per_worker=2", "reference.train.cpus_per_worker=2",
]

# Measured with bench/alol_vs_nll.py (its docstring has the table): the mean paired difference was +0.20
# to +0.38 over task seeds 0-3 (+0.377 on seed 0, which this test runs); the threshold is half the smallest.
MIN_MEAN_DIFFERENCE = 0.1


def paired_differences(run_dir: str, a: str = "a_lol", b: str = "nll") -> np.ndarray:
    """``a``'s minus ``b``'s reward per test prompt (seed 0; ``reference``: pi_ref), aligned on prompt_id."""
    frames = {m: pd.read_parquet(os.path.join(run_dir, "eval", f"{m}-s0", "examples.parquet"),
                                 columns=[C.PROMPT_ID, C.REWARD]).set_index(C.PROMPT_ID)[C.REWARD]
              for m in (a, b)}
    assert frames[a].index.equals(frames[b].index), "the two evaluations saw different prompts"
    return (frames[a] - frames[b]).to_numpy()


def compare_pair(tmp_path, monkeypatch, name: str, sizes: list[str]) -> np.ndarray:
    """`alol compare` from a working directory, with the default relative storage, as a user runs it; the paired
    differences over the 48 test prompts, printed."""
    from alol_ray.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["compare", f"name={name}", "ray.num_cpus=2", *sizes]) == 0
    diff = paired_differences(str(tmp_path / "runs" / name))
    assert len(diff) == 48
    print(f"a_lol - nll over {len(diff)} test prompts ({name}): mean {diff.mean():+.3f}, "
          f"wins {np.mean(diff > 0):.2f}, losses {np.mean(diff < 0):.2f}")
    return diff


def test_alol_beats_nll_on_the_same_prompts(tmp_path, monkeypatch):
    assert compare_pair(tmp_path, monkeypatch, "pair", SIZES).mean() > MIN_MEAN_DIFFERENCE
