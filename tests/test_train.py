"""Ray Train end to end on CPU: `alol train` as users type it, stop and resume through the CLI, a killed
worker, a changed config, 2 x 4 == 1 x 8.

Every ``TorchTrainer.fit`` costs tens of seconds on 2 cores, so the runs are made once per module and
shared by the assertions. All runs train a_lol for 4 steps of global batch 8 from the same tiny policy
on the same scored table, with momentum SGD (its update is linear in the gradient, which Adam's
g / sqrt(v) is not, so the loss-aggregation check below is exact; its momentum buffers are optimizer
state that a resume must restore); they differ only in how they are executed:

    straight   `alol train --table scored.parquet --init policy` from the run's working directory
               (relative paths), 2 workers x 4, eval + checkpoint every 2 steps
    resumed    the same command with `--stop-at-step 2` (not published), then again without it: it resumes
               at step 2, and its last worker dies at step 3 (FailureConfig(max_failures=1)), so Ray restarts
               the group from the step-2 checkpoint the first command wrote
    single     the straight command with 1 worker x 8

so all three must end with the same parameters (within 1e-6).
"""

from __future__ import annotations

import os
import shutil
import time

import numpy as np
import pytest
from conftest import armed
from safetensors.numpy import load_file
from test_train_methods import MAX_PROMPT, MAX_RESPONSE, build_scored_table

from alol_ray.atomic import read_json, read_jsonl
from alol_ray.config import load_config
from alol_ray.errors import ConfigError
from alol_ray.stage import stage_fingerprint

STEPS = 4
COMMON = [
    "train.algo=a_lol", "train.steps=4", "train.batch_size=8", "train.checkpoint_every=2",
    "train.optimizer=sgd", "train.momentum=0.9", "train.lr=0.05",
    "train.scale_steps_by_positive=false", "train.log_every=1", "train.eval_prompts=8",
    f"model.max_prompt_tokens={MAX_PROMPT}", f"model.max_response_tokens={MAX_RESPONSE}",
    "generation.max_new_tokens=12", "generation.batch_size=8",
]


def final_weights(run_dir: str, step: int = STEPS) -> dict[str, np.ndarray]:
    return load_file(os.path.join(run_dir, "checkpoints", f"checkpoint-{step:07d}", "model", "model.safetensors"))


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float(np.abs(a[k] - b[k]).max()) for k in a)


@pytest.fixture(scope="module")
def setup(ray_local, tmp_path_factory, builtin_rows, tiny_policy_dir):
    root = tmp_path_factory.mktemp("train")
    table = build_scored_table(builtin_rows, tiny_policy_dir)
    table.to_parquet(root / "scored.parquet")
    shutil.copytree(tiny_policy_dir, root / "policy")
    return {"root": root, "table": str(root / "scored.parquet"), "policy": str(root / "policy")}


def _fit(setup, name: str, *overrides: str, stop_at_step: int = 0):
    from alol_ray.registry import get_method
    from alol_ray.train.trainer import fit

    cfg = load_config(None, COMMON + ["train.eval_every=0", *overrides])
    work = str(setup["root"] / "runs" / name)
    return fit(cfg, method=get_method(cfg.train.algo), train_cfg=cfg.train, table=setup["table"],
               policy_path=setup["policy"], work_dir=work, stop_at_step=stop_at_step)


def _cli(setup, *argv: str) -> int:
    """`alol train ...` as a user types it: from the run's folder, with relative paths."""
    from alol_ray.cli import main

    cwd = os.getcwd()
    os.chdir(setup["root"])
    try:
        return main(["train", "--algo", "a_lol", "--seed", "0", "--table", "scored.parquet", "--init", "policy",
                     "storage=runs", "train.num_workers=2", "train.eval_every=2", *COMMON, *argv])
    finally:
        os.chdir(cwd)


@pytest.fixture(scope="module")
def straight(setup):
    assert _cli(setup, "name=cli") == 0
    return str(setup["root"] / "runs" / "cli" / "train" / "a_lol-s0")


@pytest.fixture(scope="module")
def resumed(setup):
    """`--stop-at-step 2`, then the same command again: the second run resumes at step 2, loses a worker at
    step 3 and restarts from the step-2 checkpoint."""
    folder = setup["root"] / "runs" / "res" / "train" / "a_lol-s0"
    assert _cli(setup, "name=res", "--stop-at-step", "2") == 0
    stopped = {"published": folder.exists(), "staged": list(folder.parent.glob(".a_lol-s0.staging-*"))}
    second_start = time.time()
    with armed("train.step=3"):
        assert _cli(setup, "name=res", "train.max_failures=1") == 0
        fired = os.listdir(os.environ["ALOL_FAULTS_DIR"]) if os.path.isdir(os.environ["ALOL_FAULTS_DIR"]) else []
    return {"folder": str(folder), "second_start": second_start, "fired": fired, **stopped}


@pytest.fixture(scope="module")
def single(setup):
    assert _cli(setup, "name=single", "train.num_workers=1") == 0
    return str(setup["root"] / "runs" / "single" / "train" / "a_lol-s0")


def test_alol_train_smoke_two_workers(straight, setup):
    """Losses finite every step, every parameter tensor moved, importance weight 1 at step 0."""
    metrics = read_jsonl(os.path.join(straight, "metrics.jsonl"))
    assert [m["train/step"] for m in metrics] == [1, 2, 3, 4]
    assert all(np.isfinite(v) for m in metrics for v in m.values())
    assert metrics[0]["is_weight/mean"] == pytest.approx(1.0, abs=1e-5)  # pi_theta == pi_ref before any update
    assert metrics[0]["advantage/pos_frac"] == 1.0  # good_priority draws positive advantages only
    start = load_file(os.path.join(setup["policy"], "model.safetensors"))
    end = final_weights(straight)
    unchanged = [k for k in start if np.array_equal(start[k], end[k])]
    assert not unchanged, f"parameters that did not change: {unchanged}"


def test_train_jobs_poll_their_workers_at_ray_train_poll_s(straight):
    """init_ray hands ray.train_poll_s to Ray Train (each report waits for a poll; Ray's default is 2 s)."""
    from alol_ray.config import RayConfig
    from alol_ray.ray_compat import TRAIN_POLL_ENV
    from alol_ray.ray_utils import init_ray

    # The fit above ran with the default; a non-default value reaches the variable Ray Train reads.
    assert float(os.environ[TRAIN_POLL_ENV]) == RayConfig().train_poll_s
    try:
        init_ray(RayConfig(train_poll_s=0.37))
        assert os.environ[TRAIN_POLL_ENV] == "0.37"
    finally:
        init_ray(RayConfig())
    assert RayConfig().train_poll_s != 2.0  # Ray's own default, which makes every report wait up to 2 s
    with pytest.raises(ConfigError, match="ray.train_poll_s"):
        RayConfig(train_poll_s=0)


def test_best_checkpoint_by_val_reward_is_exported_as_hf_folder(straight):
    """val.jsonl has the evaluations at steps 2 and 4; best/ holds the weights of the better one and
    loads and generates with plain transformers."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    val = read_jsonl(os.path.join(straight, "val.jsonl"))
    assert [v["train/step"] for v in val] == [2, 4]
    summary = read_json(os.path.join(straight, "summary.json"))
    best = max(val, key=lambda v: (v["val/reward"], v["train/step"]))
    assert summary["best_step"] == best["train/step"]
    assert summary["best_val_reward"] == pytest.approx(best["val/reward"])
    exported = load_file(os.path.join(straight, "best", "model.safetensors"))
    assert max_diff(exported, final_weights(straight, best["train/step"])) == 0.0
    model = AutoModelForCausalLM.from_pretrained(os.path.join(straight, "best"))
    tok = AutoTokenizer.from_pretrained(os.path.join(straight, "best"))
    out = model.generate(**tok(["### Human: Any tips for cooking? ### Assistant:"], return_tensors="pt"),
                         max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] > 0


def test_stop_at_step_is_not_done_and_the_rerun_resumes(straight, resumed):
    """`--stop-at-step 2` publishes nothing (the run is not finished; its checkpoint waits in staging). The
    second command resumes from step 2 and does not retrain steps 1-2: their metrics lines were written by
    the first command (a restart from step 0 would rewrite every line), and the result equals the straight
    run's."""
    assert not resumed["published"] and len(resumed["staged"]) == 1
    metrics = read_jsonl(os.path.join(resumed["folder"], "metrics.jsonl"))
    assert [m["train/step"] for m in metrics] == [1, 2, 3, 4]
    first, later = [m for m in metrics if m["train/step"] <= 2], [m for m in metrics if m["train/step"] > 2]
    assert all(m["time/wall"] < resumed["second_start"] for m in first), "steps 1-2 were trained again"
    assert all(m["time/wall"] > resumed["second_start"] for m in later)
    assert max_diff(final_weights(resumed["folder"]), final_weights(straight)) < 1e-6


def test_a_killed_worker_restarts_from_the_checkpoint_and_logs_each_step_once(straight, resumed):
    """In the resumed run's second command the last worker died at step 3 (the fault fired); Ray restarted the
    group from the step-2 checkpoint, step 3 (trained twice) is logged once, and the run still ends with the
    straight run's parameters (the test above)."""
    assert any(name.startswith("train.step") for name in resumed["fired"]), resumed["fired"]
    metrics = read_jsonl(os.path.join(resumed["folder"], "metrics.jsonl"))
    assert [m["train/step"] for m in metrics] == [1, 2, 3, 4]


def test_two_workers_by_four_equal_one_worker_by_eight(setup, straight, single):
    """Same global batches, and the DDP average of per-worker means == the mean over the global batch.

    Momentum SGD's update is linear in the gradient, so a sum instead of a mean (or a worker's share
    counted twice) would change the weights by as much as they move; float32 reduction order alone
    stays orders of magnitude below 1e-6. The grad norm before clipping is logged after the all-reduce.
    """
    two, one = read_jsonl(os.path.join(straight, "metrics.jsonl")), read_jsonl(os.path.join(single, "metrics.jsonl"))
    assert len(two) == len(one) == STEPS
    for a, b in zip(two, one):
        for key in ("train/grad_norm", "loss/policy", "nll/seq_mean", "train/tokens"):
            assert a[key] == pytest.approx(b[key], rel=1e-5), (a["train/step"], key)
    start = load_file(os.path.join(setup["policy"], "model.safetensors"))
    assert max_diff(final_weights(single), start) > 1e-3  # the weights moved far more than the tolerance
    assert max_diff(final_weights(straight), final_weights(single)) < 1e-6


def test_a_changed_config_never_resumes_old_checkpoints_nor_loses_the_old_model(setup, straight):
    """A rerun with another lr builds a new run: while it fails (a worker dies with no restarts left),
    the finished model and its marker stay exactly as they were; once it succeeds it replaces them, with
    weights trained from the start at the new lr (not resumed from the old checkpoints). It replaces the
    straight run, so it comes after every test that reads that run."""
    import ray.train

    before = {"fp": stage_fingerprint(straight), "best": load_file(os.path.join(straight, "best", "model.safetensors"))}
    with armed("train.step=1"), pytest.raises(ray.train.TrainingFailedError):
        _cli(setup, "name=cli", "train.lr=0.1", "train.max_failures=0")
    assert stage_fingerprint(straight) == before["fp"]
    assert max_diff(load_file(os.path.join(straight, "best", "model.safetensors")), before["best"]) == 0.0
    assert _cli(setup, "name=cli", "train.lr=0.1") == 0
    assert stage_fingerprint(straight) != before["fp"]
    metrics = read_jsonl(os.path.join(straight, "metrics.jsonl"))
    assert [m["train/step"] for m in metrics] == [1, 2, 3, 4] and metrics[0]["train/lr"] == pytest.approx(0.1)
    assert metrics[0]["is_weight/mean"] == pytest.approx(1.0, abs=1e-5)  # step 1 started from pi_ref again


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["nll", "wbc", "r_gold", "r_lol", "a_lol_ref_free", "a_lol_seq", "a_lol_kl"])
def test_every_alol_family_algo_trains_with_two_workers(setup, algo):
    _fit(setup, f"algos-{algo}", f"train.algo={algo}", "train.num_workers=2", "train.steps=2")
    run_dir = str(setup["root"] / "runs" / f"algos-{algo}")
    metrics = read_jsonl(os.path.join(run_dir, "metrics.jsonl"))
    assert [m["train/step"] for m in metrics] == [1, 2]
    assert all(np.isfinite(v) for m in metrics for v in m.values())
    start = load_file(os.path.join(setup["policy"], "model.safetensors"))
    assert max_diff(final_weights(run_dir, 2), start) > 0
