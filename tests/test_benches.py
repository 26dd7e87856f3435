"""Every bench in bench/ runs in CI at its smallest size, as a user types it (`python bench/<file> ...` from the
repository root), so an interface change that breaks a bench fails CI instead of rotting until someone needs
the figure. A smoke checks the exit code and the line that carries the bench's figure, not the figure itself.

Each bench is listed in SMOKES with its toy arguments and its tier: the default tier for the ones that take
seconds and start no Ray; e2e (CI runs it) for the ones that start Ray, Ray Train or a whole `alol compare`;
vllm for vLLM's half of bench/generation.py (in .venv-vllm, .ci/vllm-tier). A new bench without an entry
fails ``test_every_bench_has_a_smoke``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HH_DIR = Path(os.environ.get("ALOL_HH_DATA", REPO.parent / "shared" / "data" / "hh"))

# `alol compare` / `alol demo` at toy size: seconds per stage (tests/test_compare.py's sizes, cut further).
TOY_RUN = ["data.builtin_train_prompts=120", "data.builtin_eval_prompts=12", "model.tiny.n_layer=2",
           "model.tiny.n_embd=64", "model.tiny.n_head=2", "model.tiny.vocab_size=512", "reference.train.steps=10",
           "train.steps=4", "train.eval_every=0", "eval.max_prompts=12", "eval.bootstrap_samples=100",
           "generation.max_new_tokens=8"]
# The HH benches on the first 40 records of each file, in one storage folder ({hh}): the reward model that
# bench/hh_compare.py trains is the one bench/rm_hh.py then finds up to date (the same config), and bench/judge_hh.py
# reads the rows they read.
HH_TOY = ["reference.train.steps=5", "train.steps=3", "train.eval_every=0", "eval.max_prompts=8",
          "eval.bootstrap_samples=100", "generation.max_new_tokens=8"]


@dataclass(frozen=True)
class Smoke:
    """One run of a bench at toy size: its arguments (``{tmp}``: a fresh folder), the regular expression its
    output must match (the line with the figure), its tier and limits."""

    args: tuple[str, ...]  # {tmp}: a fresh folder; {hh}: the folder the HH benches share
    expect: str
    tier: str = "e2e"  # default | e2e | vllm
    needs_hh: bool = False  # reads the HH data (ALOL_HH_DATA)
    exit_codes: tuple[int, ...] = (0,)  # a bench that judges its goal may exit 1 at toy size
    needs_files: tuple[str, ...] = ()  # paths below the repository it reads (a model imported by hand): skip without
    timeout: int = 900


SMOKES: dict[str, list[Smoke]] = {
    "alol_vs_nll.py": [Smoke(("--seeds", "0", "--smoke", "--storage", "{tmp}"),
                             r"smallest mean paired difference over 1 seeds: [+-]\d")],
    "builtin_learnability.py": [Smoke(("--steps", "3", "--batch-size", "4", "--n-eval", "2", "--max-new-tokens", "4",
                                       "--vocab-size", "300", "--n-layer", "1", "--n-embd", "32", "--n-head", "2",
                                       "--threads", "1"),
                                      r"positive +greedy before \d\.\d+ -> after \d\.\d+", tier="default")],
    "checkpoint_bytes.py": [Smoke(("model.tiny.n_layer=1", "model.tiny.n_embd=32", "model.tiny.n_head=2",
                                   "model.tiny.vocab_size=300", "data.builtin_train_prompts=40"),
                                  r"one checkpoint: \d+ files, [\d,]+ bytes .* pushed to a local S3 server")],
    "demo_budget.py": [Smoke(("--storage", "{tmp}", "--out", "{tmp}.json", "--", *TOY_RUN, "compare.methods=[nll]"),
                             r"wall \d+\.\d min \(budget 10\), peak PSS [\d.]+ GiB .* -> within budget")],
    "generation.py": [
        Smoke(("--engines", "transformers", "--sizes", "demo", "--prompts", "4", "--max-new-tokens", "4",
               "--num-cpus", "2"), r"demo \([\d.]+ M params\) +transformers +\d"),
        Smoke(("--engines", "vllm,transformers", "--sizes", "demo", "--prompts", "4", "--max-new-tokens", "4",
               "--num-cpus", "2", "--enforce-eager"), r"vllm / transformers tokens/s = \d", tier="vllm"),
    ],
    "hh_compare.py": [Smoke(("--storage", "{hh}", "--limit", "40", "--methods", "nll", "--seeds", "1", *HH_TOY),
                            r"comparison \(alol compare\): \d+\.\d min", needs_hh=True)],
    "hh_smollm2.py": [Smoke(("--storage", "{hh}", "--train-prompts", "6", "--val-prompts", "4", "--test-prompts", "4",
                             "--file-prompts", "4", "--methods", "nll", "--seeds", "1", "train.steps=1",
                             "generation.max_new_tokens=4", "eval.bootstrap_samples=100"),
                            r"the prompt file \(alol eval --prompts\): \d+\.\d min", needs_hh=True,
                            needs_files=("models/smollm2-135m-instruct",))],
    "integrity_cases.py": [Smoke(("--only", "early"), r"(\d+)/\1 cases hold")],
    "judge_hh.py": [Smoke(("--storage", "{hh}", "--limit", "40"), r"holdout \d+ pairs: one standard error",
                          needs_hh=True)],
    "memory.py": [Smoke(("--width", "64", "--layers", "2", "--heads", "2", "--vocab", "300", "--seq", "64",
                         "--step-seq", "16", "--steps", "2"),
                        r"fsdp / ddp = \d\.\d+ \(goal <= 0\.6\)[\s\S]*checkpointing on / off = \d\.\d+")],
    "mutation.py": [Smoke(("--group", "metrics", "--functions", "alol_ray.evaluation.metrics.x_win_outcomes*"),
                          r"killed: metrics\.py \d+\.\d% \(\d+/\d+\)")],
    "rm_hh.py": [Smoke(("--storage", "{hh}", "data.sources.0.limit=40", "data.sources.1.limit=40",
                        "data.sources.2.limit=40"),
                       r"goal: held-out Pearson >= [\d.]+: -?\d", needs_hh=True, exit_codes=(0, 1))],
    "scoring.py": [Smoke(("--rows", "16", "--batch-size", "8", "--max-length", "32"), r"b/a = \d+\.\d+ ",
                         needs_hh=True)],
    "step_profile.py": [Smoke(("--smoke", "--steps", "3", "--warmup", "1", "--rounds", "2", "--cprofile", "--work",
                               "{tmp}"), r"alol-ray / TRL: nll \d+\.\d+, a_lol \d+\.\d+[\s\S]*\n  total +\d",
                              tier="default")],
    "step_cost.py": [Smoke(("--layers", "1", "--width", "32", "--vocab", "300", "--batch", "2", "--max-prompt", "16",
                            "--max-response", "8", "--batches", "1", "--rounds", "1", "--steps", "1",
                            "--threads", "1"), r"a_lol / nll = \d+\.\d+", tier="default")],
    "train_report.py": [Smoke(("--workers", "1", "--reports", "2", "--polls", "0.5,0.1"),
                              r"\n +0\.10 +[\d.]+ +[\d.]+ +[\d.]+ +[\d.]+")],
}
# Temporary files other libraries make and delete (or leave) at their own time (Ray Train's checkpoint downloads,
# torch's compile caches, vLLM's distributed-init folder): not the bench's to clean.
THIRD_PARTY_TEMP = ("checkpoint_tmp_", "torchinductor_", "pymp-", "ray", "vllm_dist_")
TIER_MARKS = {"default": (), "e2e": (pytest.mark.e2e,), "vllm": (pytest.mark.vllm,)}
# Benches whose smoke lives in their own test file, which checks more than a line (run once, not twice in e2e).
SMOKED_ELSEWHERE = {"vs_trl.py": "tests/test_vs_trl.py::test_the_bench_smoke_runs_both_sides_and_ends_with_the_ratios"}


def test_every_bench_has_a_smoke():
    benches = sorted(p.name for p in (REPO / "bench").glob("*.py"))
    missing = [b for b in benches if b not in SMOKES and b not in SMOKED_ELSEWHERE]
    assert not missing, f"bench(es) without a smoke: {missing}; add each to SMOKES in tests/test_benches.py"
    gone = sorted((set(SMOKES) | set(SMOKED_ELSEWHERE)) - set(benches))
    assert not gone, f"SMOKES or SMOKED_ELSEWHERE lists benches that are gone: {gone}"


def _cases():
    for bench, smokes in sorted(SMOKES.items()):
        for i, smoke in enumerate(smokes):
            yield pytest.param(bench, smoke, id=f"{bench[:-3]}-{smoke.tier}" + (f"-{i}" if i else ""),
                               marks=TIER_MARKS[smoke.tier])


@pytest.fixture(scope="module")
def hh_storage(tmp_path_factory):
    return tmp_path_factory.mktemp("hh-benches")


@pytest.mark.parametrize("bench, smoke", list(_cases()))
def test_bench_runs_at_toy_size(bench, smoke, tmp_path, hh_storage):
    if smoke.needs_hh and not (HH_DIR / "helpful_base.json").exists():
        pytest.skip(f"HH data not found at {HH_DIR}: set ALOL_HH_DATA")
    missing = [f for f in smoke.needs_files if not (REPO / f).exists()]
    if missing:
        pytest.skip(f"{', '.join(missing)} not found (the bench's docstring says how to make it)")
    if smoke.tier == "vllm":
        from test_vllm import _skip_reason

        if _skip_reason():
            pytest.skip(_skip_reason())
    args = [a.replace("{tmp}", str(tmp_path / "storage")).replace("{hh}", str(hh_storage)) for a in smoke.args]
    scratch = tmp_path / "tmpdir"  # the bench's TMPDIR: what it leaves there is left on every user's disk
    scratch.mkdir()
    env = {**os.environ, "RAY_ADDRESS": "local", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "ALOL_HH_DATA": str(HH_DIR), "TMPDIR": str(scratch),
           "RAY_TMPDIR": os.environ.get("RAY_TMPDIR", "/tmp")}  # Ray's socket paths must stay short
    start = time.time()
    proc = subprocess.run([sys.executable, f"bench/{bench}", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=smoke.timeout)
    print(f"python bench/{bench} {' '.join(args)}: exit {proc.returncode} in {time.time() - start:.0f} s")
    output = proc.stdout + proc.stderr
    assert proc.returncode in smoke.exit_codes, output[-4000:]
    assert re.search(smoke.expect, output), f"no line matching {smoke.expect!r} in:\n{output[-4000:]}"
    left = sorted(p.name for p in scratch.iterdir() if not p.name.startswith(THIRD_PARTY_TEMP))
    assert not left, f"python bench/{bench} left {left} in its temporary folder ({scratch})"
