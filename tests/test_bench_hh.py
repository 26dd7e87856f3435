"""bench/hh_compare.py's report helpers: the paper's claim checked on a run's tables (no training)."""

from __future__ import annotations

import os
import sys

import pandas as pd

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
import hh_compare  # noqa: E402


def write_tables(folder, rewards: dict[str, float], paired: list[tuple], sampled: list[tuple] | None = None):
    os.makedirs(folder, exist_ok=True)
    table = pd.DataFrame({"method": list(rewards), "reward": list(rewards.values())})
    table.to_csv(folder / "methods.csv", index=False)
    columns = ["method", "versus", "difference", "lo", "hi", "verdict"]
    pd.DataFrame(paired, columns=columns).to_csv(folder / "paired.csv", index=False)
    if sampled is not None:
        pd.DataFrame(sampled, columns=columns).to_csv(folder / "paired_sampled.csv", index=False)


def test_the_claim_is_checked_on_the_best_a_lol_variant(tmp_path):
    yes, no = "higher (established)", "not established"
    rewards = {"nll": 0.50, "a_lol": 0.55, "a_lol_seq": 0.60, "dpo": 0.70, "reference": 0.45}
    greedy = [("a_lol_seq", "nll", 0.10, 0.02, 0.18, yes), ("a_lol_seq", "reference", 0.15, 0.05, 0.25, yes),
              ("a_lol", "nll", 0.05, 0.01, 0.09, yes), ("a_lol", "reference", 0.10, 0.02, 0.18, yes)]
    write_tables(tmp_path, rewards, greedy)
    text = "\n".join(hh_compare.claim_lines(str(tmp_path)))
    # dpo has the highest reward but is no A-LoL variant; a_lol_seq is the best of the two variants.
    assert "**a_lol_seq**" in text and "best of 2 variants" in text
    assert "| greedy | a_lol_seq - nll | +0.100 (+0.020 to +0.180) | higher (established) |" in text
    assert "| greedy | a_lol_seq - reference | +0.150 (+0.050 to +0.250) |" in text
    assert "**The run supports the claim** under greedy decoding" in text

    # One interval under sampling includes 0: the claim is not supported in full.
    sampled = [("a_lol_seq", "nll", 0.04, -0.01, 0.09, no), ("a_lol_seq", "reference", 0.15, 0.05, 0.25, yes)]
    write_tables(tmp_path, rewards, greedy, sampled)
    text = "\n".join(hh_compare.claim_lines(str(tmp_path)))
    assert "| sampled | a_lol_seq - nll | +0.040 (-0.010 to +0.090) | not established |" in text
    assert "**The run does not support the claim in full** under greedy and sampled decoding" in text
    assert "supports the claim**" not in text


def test_no_claim_without_an_a_lol_variant_or_tables(tmp_path):
    assert hh_compare.claim_lines(str(tmp_path)) == []
    write_tables(tmp_path, {"nll": 0.5, "reference": 0.4}, [("nll", "reference", 0.1, 0.05, 0.15, "x")])
    assert hh_compare.claim_lines(str(tmp_path)) == []


def test_the_published_data_folder_is_relative_to_the_repository(tmp_path):
    data = tmp_path / "data" / "hh"
    text = f"  - path: {data}/harmless_base.json\n  - model: runs/rm_hh/rm/model\n"
    shown = hh_compare.data_dir_shown(text, str(data))
    assert "path: /" not in shown  # no absolute path of this machine
    assert f"  - path: {os.path.relpath(data, hh_compare.REPO)}/harmless_base.json\n" in shown
    assert "  - model: runs/rm_hh/rm/model\n" in shown
