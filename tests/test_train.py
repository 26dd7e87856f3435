"""Ray Train end to end on CPU: `alol train` smoke, exact resume, a killed worker, 2 x 4 == 1 x 8.

Every ``TorchTrainer.fit`` costs tens of seconds on 2 cores, so the runs are made once per module and
shared by the assertions. All runs train a_lol for 4 steps of global batch 8 from the same tiny policy
on the same scored table; they differ only in how they are executed:

    straight   `alol train` (in-process CLI), 2 workers x 4, eval + checkpoint every 2 steps
    resumed    2 workers x 4, stopped after the checkpoint at step 2, then started again
    killed     2 workers x 4, the last worker os._exit()s at step 3, FailureConfig(max_failures=1)

so all three must end with the same parameters (within 1e-6). The loss-aggregation check trains the
same batches with momentum SGD (an update linear in the gradient, which Adam's g / sqrt(v) is not):

    pair_sgd   2 workers x 4
    single_sgd 1 worker x 8
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest
from safetensors.numpy import load_file

from alol_ray.config import load_config
from alol_ray.errors import ConfigError
from test_train_methods import MAX_PROMPT, MAX_RESPONSE, build_scored_table

STEPS = 4
COMMON = [
    "train.algo=a_lol", "train.steps=4", "train.batch_size=8", "train.lr=1e-3", "train.checkpoint_every=2",
    "train.scale_steps_by_positive=false", "train.log_every=1", "train.eval_prompts=8",
    f"model.max_prompt_tokens={MAX_PROMPT}", f"model.max_response_tokens={MAX_RESPONSE}",
    "generation.max_new_tokens=12", "generation.batch_size=8",
]


def final_weights(run_dir: str, step: int = STEPS) -> dict[str, np.ndarray]:
    return load_file(os.path.join(run_dir, f"checkpoint-{step:07d}", "model", "model.safetensors"))


def jsonl(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float(np.abs(a[k] - b[k]).max()) for k in a)


@pytest.fixture(scope="module")
def setup(ray_local, tmp_path_factory, builtin_rows, tiny_policy_dir):
    root = tmp_path_factory.mktemp("train")
    table = build_scored_table(builtin_rows, tiny_policy_dir)
    table_path = str(root / "scored.parquet")
    table.to_parquet(table_path)
    return {"root": root, "table": table_path, "policy": tiny_policy_dir}


def _fit(setup, name: str, *overrides: str):
    from alol_ray.train.trainer import fit

    cfg = load_config(None, COMMON + ["train.eval_every=0", *overrides])
    run_dir = str(setup["root"] / "runs" / name)
    return fit(cfg, method="a_lol", train_cfg=cfg.train, table=setup["table"], policy_path=setup["policy"],
               run_dir=run_dir, export_dir=os.path.join(run_dir, "best"), log=lambda *_: None)


@pytest.fixture(scope="module")
def straight(setup):
    """`alol train --algo a_lol --table ... --init ...` with 2 Ray Train workers, in-process."""
    from alol_ray.cli import main

    argv = ["train", "--algo", "a_lol", "--seed", "0", "--table", setup["table"], "--init", setup["policy"],
            f"storage={setup['root']}", "name=cli", "train.num_workers=2", "train.eval_every=2", *COMMON]
    assert main(argv) == 0
    return str(setup["root"] / "cli" / "train" / "a_lol-s0")


@pytest.fixture(scope="module")
def resumed(setup):
    first = _fit(setup, "resumed", "train.num_workers=2", "train.stop_at_step=2")
    assert first.best_step == 2  # stopped after the step-2 checkpoint
    _fit(setup, "resumed", "train.num_workers=2")  # same run folder: resumes from step 2
    return str(setup["root"] / "runs" / "resumed")


@pytest.fixture(scope="module")
def killed(setup):
    _fit(setup, "killed", "train.num_workers=2", "train.crash_at_step=3", "train.max_failures=1")
    return str(setup["root"] / "runs" / "killed")


SGD = ["train.optimizer=sgd", "train.momentum=0.9", "train.lr=0.05", "train.checkpoint_every=4"]


@pytest.fixture(scope="module")
def pair_sgd(setup):
    _fit(setup, "pair_sgd", "train.num_workers=2", *SGD)
    return str(setup["root"] / "runs" / "pair_sgd")


@pytest.fixture(scope="module")
def single_sgd(setup):
    _fit(setup, "single_sgd", "train.num_workers=1", *SGD)
    return str(setup["root"] / "runs" / "single_sgd")


def test_alol_train_smoke_two_workers(straight, setup):
    """Losses finite every step, every parameter tensor moved, importance weight 1 at step 0."""
    metrics = jsonl(os.path.join(straight, "metrics.jsonl"))
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
    from alol_ray.ray_utils import TRAIN_POLL_ENV

    assert float(os.environ[TRAIN_POLL_ENV]) == RayConfig().train_poll_s == 0.1
    with pytest.raises(ConfigError, match="ray.train_poll_s"):
        RayConfig(train_poll_s=0)


def test_best_checkpoint_by_val_reward_is_exported_as_hf_folder(straight):
    """val.jsonl has the evaluations at steps 2 and 4; best/ holds the weights of the better one and
    loads and generates with plain transformers."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    val = jsonl(os.path.join(straight, "val.jsonl"))
    assert [v["train/step"] for v in val] == [2, 4]
    with open(os.path.join(straight, "summary.json"), encoding="utf-8") as fh:
        summary = json.load(fh)
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


def test_stop_and_resume_equals_straight_run(straight, resumed):
    """4 steps straight == 2 steps, stop, start again (resumes at 2), 2 steps; metrics logged once per step."""
    assert max_diff(final_weights(resumed), final_weights(straight)) < 1e-6
    assert [m["train/step"] for m in jsonl(os.path.join(resumed, "metrics.jsonl"))] == [1, 2, 3, 4]


def test_killed_worker_restarts_from_checkpoint_and_finishes(straight, killed):
    """A worker os._exit()s at step 3; Ray restarts the group from the step-2 checkpoint and the run ends
    with the straight run's parameters. Steps 3 (done twice) is logged once."""
    with open(os.path.join(killed, ".crash_injected"), encoding="utf-8") as fh:
        assert fh.read() == "3"
    assert max_diff(final_weights(killed), final_weights(straight)) < 1e-6
    assert [m["train/step"] for m in jsonl(os.path.join(killed, "metrics.jsonl"))] == [1, 2, 3, 4]


def test_two_workers_by_four_equal_one_worker_by_eight(setup, pair_sgd, single_sgd):
    """Same global batches, and the DDP average of per-worker means == the mean over the global batch.

    Momentum SGD's update is linear in the gradient, so a sum instead of a mean (or a worker's share
    counted twice) would change the weights by as much as they move; float32 reduction order alone
    stays orders of magnitude below 1e-6. The grad norm before clipping is logged after the all-reduce.
    """
    two, one = jsonl(os.path.join(pair_sgd, "metrics.jsonl")), jsonl(os.path.join(single_sgd, "metrics.jsonl"))
    assert len(two) == len(one) == STEPS
    for a, b in zip(two, one):
        for key in ("train/grad_norm", "loss/policy", "nll/seq_mean", "train/tokens"):
            assert a[key] == pytest.approx(b[key], rel=1e-5), (a["train/step"], key)
    start = load_file(os.path.join(setup["policy"], "model.safetensors"))
    assert max_diff(final_weights(single_sgd), start) > 1e-3  # the weights moved far more than the tolerance
    assert max_diff(final_weights(pair_sgd), final_weights(single_sgd)) < 1e-6


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["nll", "wbc", "r_gold", "r_lol", "a_lol_ref_free", "a_lol_seq", "a_lol_kl"])
def test_every_alol_family_algo_trains_with_two_workers(setup, algo):
    from alol_ray.train.trainer import fit

    cfg = load_config(None, COMMON + ["train.eval_every=0", "train.num_workers=2", "train.steps=2"])
    cfg.train = dataclasses.replace(cfg.train, algo=algo)
    run_dir = str(setup["root"] / "algos" / algo)
    fit(cfg, method=algo, train_cfg=cfg.train, table=setup["table"], policy_path=setup["policy"], run_dir=run_dir,
        export_dir=os.path.join(run_dir, "best"), log=lambda *_: None)
    metrics = jsonl(os.path.join(run_dir, "metrics.jsonl"))
    assert [m["train/step"] for m in metrics] == [1, 2]
    assert all(np.isfinite(v) for m in metrics for v in m.values())
    start = load_file(os.path.join(setup["policy"], "model.safetensors"))
    assert max_diff(final_weights(run_dir, 2), start) > 0
