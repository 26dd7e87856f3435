"""alol-ray against TRL 1.16 (bench/vs_trl.py): the same losses on the same batch, and the bench's smoke run.

The loss checks run alol-ray's training code (the method registry's ``compute`` on ``collate_units``, as the
training loop calls it) and TRL's trainers' ``compute_loss`` on the same token ids and weights:

- DPO, ``loss_type`` sigmoid and ipo, with the same reference log-probs (another model's, so no margin is 0):
  loss and every gradient entry agree to 1e-6 (relative where the magnitude exceeds 1: IPO's loss at beta 0.1
  is about 25, and fp32 resolves about 1e-7 of it);
- NLL: alol-ray sums -log p over a reply's tokens (EOS included) and averages over replies; TRL's
  completion-only SFT loss averages over every completion token of the batch. So alol-ray's loss (and
  gradient) = TRL's x (completion tokens / replies), checked to the same 1e-6 on TRL's scale.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

pytest.importorskip("trl", reason="TRL is in the dev and bench extras: pip install -e '.[dev]'")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
import vs_trl  # noqa: E402

from conftest import HH_DIR  # noqa: E402

TOLERANCE = 1e-6
LAST_LINE = re.compile(r"^alol-ray / trl step time: dpo = (\d+\.\d{3}), nll = (\d+\.\d{3}), a_lol_vs_sft = (\d+\.\d{3})$")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """Toy GPT-2 and Llama with their scored tables (the bench's --smoke sizes): the built-in task for GPT-2,
    the HH slice for Llama where the data is (else the built-in task again)."""
    work = tmp_path_factory.mktemp("vs_trl")
    data = "hh" if (HH_DIR / "helpful_base.json").exists() else "builtin"
    configs = [vs_trl.Config("gpt2", "builtin"), vs_trl.Config("llama", data)]
    sizes = replace(vs_trl.SMOKE, prompts=16, max_response=40)  # replies of several lengths: padding in the batch
    vs_trl.prepare(str(work), configs, sizes, str(HH_DIR))
    return configs, sizes


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_dpo_ipo_and_nll_losses_and_gradients_equal_trls(prepared, family):
    configs, sizes = prepared
    config = next(c for c in configs if c.family == family)
    gaps = vs_trl.same_batch_gaps(config.model_dir, config.model_dir + "-ref", config.table, sizes)
    assert sorted(gaps) == ["dpo/ipo", "dpo/sigmoid", "nll"]
    for name, gap in gaps.items():
        assert gap["same_params"], f"{name}: the two sides trained different parameters"
        assert gap["loss"] <= TOLERANCE, f"{name}: loss {gap['alol']} vs TRL {gap['trl']} x {gap['scale']}"
        assert gap["grad"] <= TOLERANCE, f"{name}: gradients differ by {gap['grad']:.2e}"
        assert gap["grad_max"] > 1e-3  # gradients that are there to compare
    # Not vacuous: the reference log-probs differ from the policy's (a margin of 0 would give log 2 whatever
    # the log-probs), and alol-ray's NLL is TRL's times more than one token per reply.
    assert abs(gaps["dpo/sigmoid"]["alol"] - math.log(2)) > 1e-3
    assert gaps["nll"]["scale"] > 2 and gaps["nll"]["alol"] > 2 * gaps["nll"]["trl"]
    assert gaps["dpo/ipo"]["alol"] != pytest.approx(gaps["dpo/sigmoid"]["alol"])
    for name in ("dpo/sigmoid", "nll"):  # padded replies in the batch: masks and token counts are exercised
        assert len(set(gaps[name]["reply_tokens"])) > 1, gaps[name]["reply_tokens"]


@pytest.mark.e2e
def test_the_bench_smoke_runs_both_sides_and_ends_with_the_ratios(tmp_path):
    """`python bench/vs_trl.py --smoke` on a Llama and the HH slice (the built-in task without the data): six
    runs (three `alol train` jobs under Ray Train, three TRL trainers), the tables, the last line."""
    work = tmp_path / "work"
    result = subprocess.run([sys.executable, "bench/vs_trl.py", "--smoke", "--configs", "llama/hh", "--hh",
                             str(HH_DIR), "--work", str(work)], cwd=REPO, capture_output=True, text=True,
                            timeout=1800)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    match = LAST_LINE.match(lines[-1])
    assert match, lines[-1]
    assert all(float(x) > 0 for x in match.groups())
    results = json.loads((work / "results.json").read_text())
    assert all(g["loss"] <= TOLERANCE and g["grad"] <= TOLERANCE for g in results["gaps"].values())
    (config,) = results["figures"]
    runs = results["figures"][config]
    assert sorted(runs) == sorted(vs_trl.RUN_KINDS)
    for kind, (figure,) in runs.items():
        assert figure["ms_step"] > 0 and figure["cpu_ms_step"] > 0 and figure["tokens_s"] > 0, kind
        assert figure["rss_largest_mb"] > 50, kind
        assert figure["startup_s"] > 0 and figure["finish_s"] >= 0, kind
        assert figure["job_s"] == pytest.approx(figure["startup_s"] + figure["steps_s"] + figure["finish_s"]), kind
    # Ray's own processes count in alol-ray's memory: the run has more than one process; TRL's runs have one.
    assert runs["dpo"][0]["rss_total_mb"] > runs["dpo"][0]["rss_largest_mb"]
    assert runs["trl_dpo"][0]["rss_total_mb"] == pytest.approx(runs["trl_dpo"][0]["rss_largest_mb"])
    assert any(line.startswith("DPO loss per step, same batches") for line in lines)
    if (HH_DIR / "helpful_base.json").exists():
        assert config == "llama-hh"
