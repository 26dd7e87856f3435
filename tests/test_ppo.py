"""PPO on Ray (baselines/ppo.py): the critic module and the reference actor in-process, one short run of the
real Ray Train job (smoke, default tier), and the slow learning check on the built-in task.

The pure PPO arithmetic is tested by hand in tests/test_ppo_loss.py.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import math
import os
import time

import numpy as np
import pandas as pd
import pytest
import torch

from alol_ray import columns as C
from alol_ray.config import RunConfig
from alol_ray.tokenization import collate, encode_pair, response_token_logps

MAX_PROMPT = 48


def ppo_config(**ppo) -> RunConfig:
    """A run config sized for 2 shared CPU cores: 1 train worker (1 CPU), one transformers Generator
    engine (0.5 CPU) and the pi_ref actor (0.5 CPU)."""
    cfg = RunConfig()
    cfg.model.max_prompt_tokens = MAX_PROMPT
    cfg.generation = dataclasses.replace(cfg.generation, engine="transformers", cpus_per_engine=0.5, batch_size=16,
                                         max_new_tokens=32)
    cfg.train = dataclasses.replace(cfg.train, num_workers=1, cpus_per_worker=1, log_every=1, eval_prompts=8,
                                    keep_checkpoints=1)
    cfg.ppo = dataclasses.replace(cfg.ppo, reference_cpus=0.5, **ppo)
    return cfg


def pairs_of(tok, rows, n):
    return [encode_pair(tok, p, r, MAX_PROMPT, 32) for p, r in zip(rows[C.PROMPT][:n], rows[C.RESPONSE][:n])]


def test_policy_with_value_head_matches_the_shared_tokenisation(tiny_policy_dir, builtin_rows):
    """The PPO module's log-probs are exactly ``response_token_logps`` (the offline methods' and the reference
    scorer's), its zero-initialised values are 0, and both are 0 at padding. Its LM head runs on the response
    positions alone, and the entropy is that of the full forward's distribution at each response position."""
    from alol_ray.models import load_policy
    from alol_ray.baselines.ppo import PolicyWithValueHead, ReferencePolicy

    model, tok = load_policy(tiny_policy_dir)
    model.eval()
    batch = collate(pairs_of(tok, builtin_rows, 6), tok.pad_token_id)
    module = PolicyWithValueHead.build(model)
    head_rows = []
    model.get_output_embeddings().register_forward_hook(lambda m, args, out: head_rows.append(args[0].shape[:-1]))
    with torch.no_grad():
        expected = response_token_logps(model, batch)  # the first call checks the model's logits_to_keep
        head_rows.clear()
        logps, values, entropy = module(batch, with_entropy=True)
        assert head_rows == [batch.response_index.shape]
        full = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    torch.testing.assert_close(logps, expected, atol=1e-5, rtol=0)
    assert torch.count_nonzero(values) == 0
    real = batch.response_mask > 0
    assert bool((entropy[real] > 0).all()) and bool((entropy[~real] == 0).all())
    at = full.gather(1, batch.response_index.unsqueeze(-1).expand(-1, -1, full.shape[-1]))
    want = torch.distributions.Categorical(logits=at).entropy()
    torch.testing.assert_close(entropy[real], want[real], atol=1e-5, rtol=0)
    # The reference actor's log-probs of token ids (not re-tokenised text) are the same numbers.
    ref = ReferencePolicy(tiny_policy_dir, max_prompt_tokens=MAX_PROMPT, max_response_tokens=32,
                          model_cfg=RunConfig().model, use_gpu=False, bf16=False, num_threads=1)
    got = ref.token_logps(pairs_of(tok, builtin_rows, 6), batch_size=4)
    for i, row in enumerate(got):
        n = int(batch.response_lengths[i])
        np.testing.assert_allclose(row, expected[i, :n].numpy(), atol=1e-5, rtol=0)


def test_ppo_epochs_on_rollouts_of_different_lengths(tiny_policy_dir, builtin_rows):
    """One rollout shard of 4 replies with different lengths (mini-batches are trimmed to their longest reply):
    the first mini-batch step starts at ratio 1 (approx_kl 0), the policy and the critic move, metrics are
    finite, and a positive advantage on one reply raises its log-prob."""
    from alol_ray.models import load_policy
    from alol_ray.baselines import ppo_loss as P
    from alol_ray.train.memory import precision_policy
    from alol_ray.train.strategy import Replicated
    from alol_ray.baselines.ppo import PolicyWithValueHead, ppo_epochs

    one = Replicated(world_size=1, precision=precision_policy("fp32", on_gpu=False))
    model, tok = load_policy(tiny_policy_dir)
    pairs = pairs_of(tok, builtin_rows, 4)
    pairs = [(p, r[:n] + [tok.eos_token_id]) for (p, r), n in zip(pairs, (3, 9, 5, 14))]
    batch = collate(pairs, tok.pad_token_id)
    module = PolicyWithValueHead.build(model)
    with torch.no_grad():
        old_logps, old_values, _ = module(batch)
    scores = torch.tensor([1.0, -1.0, -1.0, -1.0])
    rewards, _ = P.kl_penalty_rewards(old_logps, old_logps, batch.response_mask, scores, 0.2)
    adv, ret = P.gae(rewards, old_values, batch.response_mask, 1.0, 0.95)
    adv = P.masked_whiten(adv, batch.response_mask)
    pc = dataclasses.replace(RunConfig().ppo, ppo_epochs=2, mini_batch_size=2)
    trainable = list(module.parameters())
    opt = torch.optim.AdamW(trainable, lr=1e-3)
    head_before = module.value_head.weight.detach().clone()
    stats = ppo_epochs(module, opt, trainable, batch, old_logps, old_values, adv, ret, pc, grad_clip=1.0,
                       mini_batch=2, seed=(0, 0, 0), strategy=one)
    assert all(math.isfinite(v) for v in stats.values())
    assert stats["loss/value"] > 0 and stats["ppo/approx_kl"] >= 0
    assert not torch.equal(module.value_head.weight, head_before)
    with torch.no_grad():
        new_logps, _, _ = module(batch)
    seq_old, seq_new = old_logps.sum(-1), new_logps.sum(-1)
    assert seq_new[0] > seq_old[0]  # the one reply with a positive score became more likely
    # grad_accum: one optimizer step per grad_accum mini-batches (the shard's 4 rollouts in mini-batches of 1)
    for accum, steps in ((1, 8), (2, 4), (4, 2)):
        pc = dataclasses.replace(RunConfig().ppo, ppo_epochs=2, mini_batch_size=1, rollout_size=4, grad_accum=accum)
        stats = ppo_epochs(module, opt, trainable, batch, old_logps, old_values, adv, ret, pc, grad_clip=1.0,
                           mini_batch=1, seed=(0, 0, 0), strategy=one)
        assert stats["ppo/optimizer_steps"] == steps, accum


def test_ppo_takes_the_reference_runs_number_of_steps_by_default():
    """TRL 0.7.1 as the A-LoL paper ran PPO: 16 rollouts, mini-batch 4, 4 epochs, gradient accumulation 4 ->
    4 optimizer steps per iteration (one per epoch), not 16."""
    from alol_ray.errors import ConfigError

    pc = RunConfig().ppo
    minis = pc.rollout_size // pc.mini_batch_size
    assert (pc.rollout_size, pc.mini_batch_size, pc.ppo_epochs, pc.grad_accum) == (16, 4, 4, 4)
    assert pc.ppo_epochs * minis // pc.grad_accum == 4
    with pytest.raises(ConfigError, match="ppo.grad_accum"):
        dataclasses.replace(pc, grad_accum=3)


def test_sample_prompts_is_a_function_of_seed_and_iteration():
    from alol_ray.baselines.ppo import sample_prompts

    prompts = [f"p{i}" for i in range(50)]
    a = sample_prompts(prompts, 8, seed=0, iteration=3)
    assert a == sample_prompts(prompts, 8, seed=0, iteration=3) and len(set(a)) == 8
    assert a != sample_prompts(prompts, 8, seed=0, iteration=4)


def test_bad_ppo_configs_are_config_errors():
    from alol_ray.config import load_config
    from alol_ray.errors import ConfigError
    from alol_ray.baselines.ppo import check_config

    with pytest.raises(ConfigError, match="multiple of ppo.mini_batch_size"):
        load_config(None, ["ppo.rollout_size=10", "ppo.mini_batch_size=4"])
    with pytest.raises(ConfigError, match="temperature"):
        load_config(None, ["ppo.temperature=0"])
    cfg = load_config(None, ["ppo.rollout_size=8", "ppo.mini_batch_size=4", "ppo.grad_accum=2",
                             "train.num_workers=4", "train.batch_size=16"])
    check_config(cfg, cfg.train)
    cfg = load_config(None, ["ppo.rollout_size=6", "ppo.mini_batch_size=3", "ppo.grad_accum=1", "train.num_workers=2",
                             "train.batch_size=16"])
    with pytest.raises(ConfigError, match="divisible by train.num_workers"):
        check_config(cfg, cfg.train)


def read_jsonl(path):
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def rows_file(rows, folder, n_train: int = 40, n_val: int = 4) -> str:
    """Canonical rows with ``n_train`` train prompts and ``n_val`` val prompts, as a parquet file (PPO's input)."""
    parts = [rows[rows[C.PROMPT].isin(rows.loc[rows[C.SPLIT] == s, C.PROMPT].drop_duplicates().head(n))]
             for s, n in (("train", n_train), ("val", n_val))]
    path = os.path.join(folder, "rows.parquet")
    pd.concat(parts).to_parquet(path)
    return path


PPO_CLI = ["generation.engine=transformers", "generation.cpus_per_engine=0.5", "generation.batch_size=16",
           f"model.max_prompt_tokens={MAX_PROMPT}", "train.num_workers=1", "train.cpus_per_worker=1",
           "train.log_every=1", "train.eval_prompts=8", "train.keep_checkpoints=1", "ppo.reference_cpus=0.5",
           "ppo.iterations=2", "ppo.rollout_size=4", "ppo.mini_batch_size=2", "ppo.ppo_epochs=2", "ppo.lr=1e-3",
           "ppo.max_new_tokens=12", "ppo.eval_every=2", "ppo.checkpoint_every=2", "ppo.grad_accum=2",
           "data.builtin_train_prompts=40", "data.builtin_eval_prompts=8"]


def test_ppo_smoke_stop_and_resume_on_ray(ray_local, tiny_policy_dir, tmp_path):
    """`alol train --algo ppo` as a user types it (from the working directory: relative storage, starting
    policy and pi_ref folder), two iterations of the real job, stopped after iteration 1 and resumed:
    rollouts generated by the Generator actor, scored, reference log-probs from the pi_ref actor, updates,
    weights into the running engine; the rerun continues at iteration 1 (iteration 1 is not trained again);
    the run layout matches the offline trainer's."""
    import shutil

    from safetensors.torch import load_file

    from alol_ray.cli import main
    from alol_ray.train.trainer import BEST_DIR, SUMMARY_FILE

    shutil.copytree(tiny_policy_dir, tmp_path / "policy")
    argv = ["train", "--algo", "ppo", "--init", "policy", "storage=runs", "name=p", "reference.path=policy",
            *PPO_CLI]
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert main([*argv, "--stop-at-step", "1"]) == 0
        run_dir = str(tmp_path / "runs" / "p" / "train" / "ppo-s0")
        assert not os.path.exists(os.path.join(run_dir, "stage.json"))  # stopped early: not done
        second_start = time.time()
        assert main(argv) == 0
    finally:
        os.chdir(cwd)
    metrics = read_jsonl(os.path.join(run_dir, "metrics.jsonl"))
    assert [m["train/step"] for m in metrics] == [1, 2]
    assert metrics[0]["time/wall"] < second_start < metrics[1]["time/wall"]  # resumed, not restarted
    for m in metrics:
        for key in ("loss/policy", "loss/value", "objective/kl", "reward/mean", "ppo/clip_frac", "objective/entropy"):
            assert math.isfinite(m[key]), key
        assert 0.0 <= m["reward/mean"] <= 3.0
    # the rollout engine is built once per job and receives the policy's weights after every update
    assert [m["rollout/weights_version"] for m in metrics] == [1, 1]
    # Iteration 1 samples from pi_ref itself: its KL estimate is ~0 (same weights in both actors and here).
    assert abs(metrics[0]["objective/kl"]) < 1e-3
    assert metrics[0]["objective/kl_coef"] == pytest.approx(0.2)
    val_lines = read_jsonl(os.path.join(run_dir, "val.jsonl"))
    assert [v["train/step"] for v in val_lines] == [0, 2] and all("val/reward" in v for v in val_lines)
    with open(os.path.join(run_dir, SUMMARY_FILE)) as fh:
        summary = json.load(fh)
    assert summary["best_step"] == 2 and summary["best_val_reward"] == pytest.approx(val_lines[-1]["val/reward"])
    before = load_file(str(tmp_path / "policy" / "model.safetensors"))
    after = load_file(os.path.join(run_dir, BEST_DIR, "model.safetensors"))
    assert max(float((after[k] - before[k]).abs().max()) for k in before) > 1e-4
    assert glob.glob(os.path.join(run_dir, "checkpoints", "checkpoint-*", "value_head.safetensors"))


def test_ppo_resources_are_checked_before_any_work(ray_local, tiny_policy_dir, builtin_rows, tmp_path, alol_log):
    """2 train CPUs + the Generator (0.5) + pi_ref (0.5) cannot run at once on a 2-CPU local Ray: that used to
    wait forever (the workers took both CPUs, the actors never started); now it is a ConfigError naming the
    knobs, before the Train job starts. On a cluster (which may autoscale) the same shortfall is logged."""
    from alol_ray.errors import ConfigError
    from alol_ray.baselines.ppo import check_resources, fit_ppo, ppo_train_config, resources_needed

    cfg = ppo_config(iterations=1, rollout_size=4, mini_batch_size=2, grad_accum=2)
    cfg.train = dataclasses.replace(cfg.train, cpus_per_worker=2)
    run_dir = str(tmp_path / "ppo-s0")
    t0 = time.time()
    with pytest.raises(ConfigError, match=r"ppo needs 3 CPU \(the cluster has 2\).*ppo.cpus_per_worker"):
        fit_ppo(cfg, train_cfg=cfg.train, rows=rows_file(builtin_rows, str(tmp_path), 8), policy_path=tiny_policy_dir,
                ref_path=tiny_policy_dir, work_dir=run_dir)
    assert time.time() - t0 < 60
    assert not os.path.exists(os.path.join(run_dir, "metrics.jsonl"))
    # ppo.cpus_per_worker overrides train.cpus_per_worker for PPO only, and then it fits.
    cfg.ppo = dataclasses.replace(cfg.ppo, cpus_per_worker=1.0)
    assert resources_needed(cfg, ppo_train_config(cfg, cfg.train)) == {"CPU": 2.0, "GPU": 0.0}
    check_resources(cfg, ppo_train_config(cfg, cfg.train), {"CPU": 2.0}, local=True)
    cfg.ppo = dataclasses.replace(cfg.ppo, reward_service=True)  # + 1 Serve replica x 0.5 CPU
    check_resources(cfg, ppo_train_config(cfg, cfg.train), {"CPU": 2.0}, local=False)
    logged = [m for m in alol_log if "autoscaler" in m]
    assert len(logged) == 1 and "2.5 CPU" in logged[0]


# ------------------------------------------------------------------------------------------- slow


def nll_pretrain(policy_dir: str, rows, out_dir: str, steps: int, seed: int = 0) -> str:
    """A briefly NLL-trained starting policy (plain torch, in-process): imitation of the rank-0 replies."""
    from alol_ray.models import load_policy

    torch.manual_seed(seed)
    model, tok = load_policy(policy_dir)
    model.train()
    best = rows[(rows[C.SPLIT] == "train") & (rows[C.RANK] == 0)].reset_index(drop=True)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        idx = rng.choice(len(best), size=16, replace=False)
        batch = collate([encode_pair(tok, best[C.PROMPT][i], best[C.RESPONSE][i], MAX_PROMPT, 40) for i in idx],
                        tok.pad_token_id)
        lp = response_token_logps(model, batch)
        loss = -(lp.sum(-1)).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)
    return out_dir


@pytest.mark.slow
def test_ppo_raises_the_builtin_reward_over_its_starting_policy(ray_local, tiny_policy_dir, builtin_rows, tmp_path):
    """PPO from a briefly NLL-trained tiny policy (also pi_ref) raises the greedy val reward of the built-in
    task within 20 iterations (16 rollouts each, 4 epochs of mini-batch 4). Prints the curve and the wall time;
    ALOL_PPO_SLOW_NLL_STEPS / ALOL_PPO_SLOW_ITERATIONS change the start policy's training and the budget."""
    from alol_ray.baselines.ppo import fit_ppo

    t0 = time.time()
    start = nll_pretrain(tiny_policy_dir, builtin_rows, str(tmp_path / "start"), steps=int(os.environ.get(
        "ALOL_PPO_SLOW_NLL_STEPS", 100)))
    t_nll = time.time() - t0
    iterations = int(os.environ.get("ALOL_PPO_SLOW_ITERATIONS", 20))
    # grad_accum 1 (16 steps per iteration): the budget this check was tuned with, not the reference's 4
    cfg = ppo_config(iterations=iterations, rollout_size=16, mini_batch_size=4, ppo_epochs=4, lr=5e-4,
                     max_new_tokens=40, eval_every=5, checkpoint_every=5, init_kl_coef=0.05, grad_accum=1)
    cfg.train = dataclasses.replace(cfg.train, eval_prompts=32)
    run_dir = str(tmp_path / "ppo-s0")
    rows = rows_file(builtin_rows, str(tmp_path), n_train=10**6, n_val=32)
    out = fit_ppo(cfg, train_cfg=cfg.train, rows=rows, policy_path=start, ref_path=start, work_dir=run_dir)
    curve = [(v["train/step"], v["val/reward"]) for v in read_jsonl(os.path.join(run_dir, "val.jsonl"))]
    rollout = [(m["train/step"], m["reward/mean"]) for m in read_jsonl(os.path.join(run_dir, "metrics.jsonl"))]
    wall = time.time() - t0
    print(f"\nPPO val reward curve (iteration, greedy val reward): {curve}")
    print(f"PPO rollout reward per iteration: {[round(r, 3) for _, r in rollout]}")
    print(f"wall time {wall:.0f}s (NLL start policy {t_nll:.0f}s), best iteration {out.best_step}")
    start_reward = curve[0][1]
    assert curve[0][0] == 0
    assert out.best_val_reward > start_reward + 0.15, curve
    # The sampled rollouts improve too: the second half of the run beats the first three iterations.
    assert np.mean([r for _, r in rollout[len(rollout) // 2:]]) > np.mean([r for _, r in rollout[:3]]) + 0.1, rollout
