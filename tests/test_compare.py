"""`alol demo` / `alol compare` end to end at toy size, from a working directory with the default relative
storage as a user runs it: every shared stage once, every (method, seed) trained and evaluated, the report
names every method, a second invocation resumes (it trains nothing again), and a third with more seeds
adds only the new seeds.

The demo's real budget (<= 10 min, <= 6 GiB on 2 cores) is measured by bench/demo_budget.py; here the
sizes are cut to seconds per stage so the whole pipeline runs in minutes (the e2e tier).
"""

from __future__ import annotations

import json
import os

import pandas as pd
import pytest
from conftest import in_dir

from alol_ray.commands.demo import resource_overrides

# The e2e tier (CI runs it; `e2e` below): `alol demo` through the CLI, then `alol` processes with a local Ray of
# their own, killed and rerun (about 6.5 min on 2 cores). The demo's real size runs as README command 1 in CI,
# and `alol compare` end to end stays in the default tier (test_alol_vs_nll.py).
e2e = pytest.mark.e2e

TOY = [
    "data.builtin_train_prompts=240", "data.builtin_eval_prompts=24",
    "model.tiny.n_layer=2", "model.tiny.n_embd=64", "model.tiny.n_head=2", "model.tiny.vocab_size=512",
    "reference.train.steps=20", "train.steps=6", "train.eval_every=3", "train.eval_prompts=8",
    "train.checkpoint_every=3", "eval.max_prompts=12", "eval.bootstrap_samples=200",
    "generation.max_new_tokens=12",
    # A-LoL and a baseline of another family (nll, the demo's third method, is trained by `alol compare` in
    # test_alol_vs_nll.py): each method costs a Ray Train job (~20 s on 2 cores before its first step).
    "compare.methods=[a_lol,dpo]",
]


def test_resource_overrides_fill_the_machine():
    def parsed(cpus, n):
        return dict(o.split("=") for o in resource_overrides(cpus, n))

    assert parsed(1, 4)["train.cpus_per_worker"] == "1" and parsed(1, 4)["compare.max_concurrent"] == "1"
    assert parsed(2, 4)["train.cpus_per_worker"] == "2" and parsed(2, 4)["compare.max_concurrent"] == "1"
    assert parsed(16, 4)["compare.max_concurrent"] == "4"  # never more runs at once than methods
    assert parsed(6, 4)["compare.max_concurrent"] == "3"
    for cpus in range(1, 17):  # a PPO run (workers + Generator + pi_ref) always fits the machine on its own
        ppo = parsed(cpus, 4)
        held = sum(float(ppo[k]) for k in ("ppo.cpus_per_worker", "ppo.generation_cpus", "ppo.reference_cpus"))
        assert 0 < held <= cpus, cpus


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """`alol demo` (toy sizes) from a fresh working directory: the run lands in ./runs/demo."""
    cwd = tmp_path_factory.mktemp("user")
    argv = ["demo", "ray.num_cpus=2", *TOY]
    assert in_dir(cwd, argv) == 0
    return cwd / "runs" / "demo", argv, cwd


@e2e
def test_demo_runs_every_stage_and_reports_every_method(demo_run, capsys):
    root, _, _ = demo_run
    report = (root / "report.md").read_text(encoding="utf-8")
    assert "alol demo" in report  # the command that produced it
    table = pd.read_csv(root / "report" / "methods.csv")
    assert set(table["method"]) == {"reference", "a_lol", "dpo"}
    for png in ("val_reward.png", "reward_dist.png", "advantages.png"):
        assert (root / "report" / png).stat().st_size > 1000, png
        assert f"report/{png}" in report
    for method in ("a_lol", "dpo"):
        summary = json.loads((root / "eval" / f"{method}-s0" / "summary.json").read_text(encoding="utf-8"))
        assert summary["prompts"] == 12
        assert 0.0 <= summary["metrics"]["win_rate/reference"] <= 1.0
        assert (root / "train" / f"{method}-s0" / "best" / "config.json").exists()
    # the A-LoL run trained only on the positive-advantage share of the scored table; the others on all rows
    rows = table.set_index("method")
    advantages = json.loads((root / "value" / "advantages.json").read_text(encoding="utf-8"))
    positive = advantages["advantage/train_best"]["positive_fraction"]  # A-LoL trains the rank-0 rows
    assert 0.0 < positive <= 1.0
    assert rows.loc["a_lol", "data_used"] == pytest.approx(positive, abs=1e-9)
    assert rows.loc["dpo", "data_used"] == 1.0
    assert rows.loc["a_lol", "train_seconds"] > 0


@e2e
def test_second_demo_resumes_and_trains_nothing(demo_run, capsys):
    root, argv, cwd = demo_run
    before = {m: os.path.getmtime(root / "train" / f"{m}-s0" / "stage.json") for m in ("a_lol", "dpo")}
    capsys.readouterr()
    assert in_dir(cwd, argv) == 0
    out = capsys.readouterr().out
    assert "running ..." not in out, out
    assert out.count("[rows] up to date") == 1  # every shared stage is checked once
    after = {m: os.path.getmtime(root / "train" / f"{m}-s0" / "stage.json") for m in ("a_lol", "dpo")}
    assert after == before


@e2e
def test_more_seeds_add_runs_to_the_same_comparison(demo_run, capsys):
    """`alol demo compare.seeds=2 compare.methods=[a_lol]` on the finished run trains and evaluates seed 1
    of a_lol, leaves seed 0 and the other methods alone, and reports both seeds."""
    root, argv, cwd = demo_run
    before = {m: os.path.getmtime(root / "train" / f"{m}-s0" / "stage.json") for m in ("a_lol", "dpo")}
    capsys.readouterr()
    assert in_dir(cwd, argv + ["compare.seeds=2", "compare.methods=[a_lol]"]) == 0
    out = capsys.readouterr().out
    assert out.count("[train a_lol-s1] running") == 1 and out.count("[eval a_lol-s1] running") == 1
    assert "[train a_lol-s0] running" not in out and "dpo-s1" not in out
    assert {m: os.path.getmtime(root / "train" / f"{m}-s0" / "stage.json") for m in before} == before
    table = pd.read_csv(root / "report" / "methods.csv").set_index("method")
    assert table.loc["a_lol", "seeds"] == 2 and table.loc["reference", "seeds"] == 1


# Where the faulted run dies, in the order it meets them; each fires once (ALOL_FAULTS_DIR), so every rerun
# goes one point further. The driver dies hard (os._exit) at each, except train.step=4, where a Train worker
# dies with no restarts left (the command fails); the first run to reach step 4 is the reference training.
FAULTS = ["publish=data", "score.ref_part", "publish=scored", "train.step=4", "value.targets", "publish=value",
          "eval.scored=reference", "publish=a_lol-s0", "eval.scored=a_lol"]
# The e2e tier (CI) kills the driver at one point: mid scoring pass, with finished parts on disk, the resumable
# pass that no other test kills hard through the CLI. In the default tier, a crash between a publish's two
# renames is test_run_integrity.py's (recover), a scoring pass interrupted after its first part and resumed
# test_scoring.py's (cache_runs), a Train worker lost mid-run with a resume from its checkpoint test_train.py's;
# a driver killed mid-training is test_bucket_storage.py's (e2e tier). Each rerun costs a fresh local Ray and
# a process start (~30 s on 2 cores, and CI's whole run is kept under an hour). The slow tier kills at all nine.
FAULTS_DEFAULT = ["score.ref_part"]


def killed_at_every_point(faults, demo_run, alol_cli, tmp_path):
    """The same comparison (a_lol only), killed at ``faults``: rerun until it succeeds, then every stage
    output equals the uninterrupted run's (rows, pi_ref, scored table, value table, the trained policy, the
    evaluations). A half-written output is never taken as complete: a wrong one would differ here."""
    import subprocess

    import numpy as np
    from safetensors.numpy import load_file

    root, argv, _ = demo_run
    env = {**os.environ, "RAY_ADDRESS": "local", "ALOL_FAULTS": ",".join(faults),
           "ALOL_FAULTS_DIR": str(tmp_path / "fired")}
    args = [*argv, "compare.methods=[a_lol]", "train.max_failures=0", "reference.train.max_failures=0"]
    codes = []
    for _ in range(len(faults) + 1):
        proc = subprocess.run([*alol_cli, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
                              check=False)
        codes.append(proc.returncode)
        if proc.returncode == 0:
            break
    fired = sorted(p.name for p in (tmp_path / "fired").iterdir())
    assert codes[-1] == 0 and len(codes) == len(faults) + 1, (codes, fired, proc.stderr[-3000:])
    assert len(fired) == len(faults)
    other = tmp_path / "runs" / "demo"

    def frame(rel):
        return pd.read_parquet(root / rel), pd.read_parquet(other / rel)

    for rel in ("data/rows.parquet", "scored/table.parquet", "value/table.parquet",
                "eval/reference-s0/examples.parquet", "eval/a_lol-s0/examples.parquet"):
        a, b = frame(rel)
        pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-6, atol=1e-6, obj=rel)
    for rel in ("train/reference-s0/best/model.safetensors", "train/a_lol-s0/best/model.safetensors"):
        a, b = load_file(root / rel), load_file(other / rel)
        assert max(float(np.abs(a[k] - b[k]).max()) for k in a) < 1e-6, rel


@e2e
def test_a_run_killed_mid_scoring_ends_identical_to_an_uninterrupted_one(demo_run, alol_cli, tmp_path):
    killed_at_every_point(FAULTS_DEFAULT, demo_run, alol_cli, tmp_path)


@pytest.mark.slow  # about 8 min on 2 cores; the e2e tier runs FAULTS_DEFAULT
def test_a_run_killed_at_every_stage_ends_identical_to_an_uninterrupted_one(demo_run, alol_cli, tmp_path):
    killed_at_every_point(FAULTS, demo_run, alol_cli, tmp_path)
