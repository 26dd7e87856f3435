"""The offline baselines as methods of the shared training loop (baselines/methods.py).

In-process checks of each method's batch handling (pairs split right, PRO scores only response tokens,
GOLD's stale copy re-syncs every k steps), then one smoke test per baseline: a few steps of the real
Ray Train job (1 worker, tiny policy) on the built-in task, with finite losses and changed parameters.
All tests share one scored table: reference log-probs from the real ReferenceScorer.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os

import numpy as np
import pandas as pd
import pytest
import torch

from alol_ray import columns as C
from alol_ray.config import RunConfig
from alol_ray.tokenization import response_token_logps
from alol_ray.registry import get_method, method_names
from alol_ray.train.methods import collate_units, training_units
from alol_ray.baselines.dpo import dpo_loss
from alol_ray.baselines.pro import pro_loss

MAX_PROMPT, MAX_RESPONSE = 64, 40


@pytest.fixture(scope="module")
def scored_table(builtin_rows, tiny_policy_dir) -> pd.DataFrame:
    """24 train + 4 val prompts of the built-in task, scored by the ReferenceScorer (pi_ref = the tiny policy)."""
    from alol_ray.scoring.reference import ReferenceScorer

    keep = []
    for split, n in (("train", 24), ("val", 4)):
        ids = builtin_rows.loc[builtin_rows[C.SPLIT] == split, C.PROMPT_ID].drop_duplicates().head(n)
        keep.append(builtin_rows[builtin_rows[C.PROMPT_ID].isin(ids)])
    table = pd.concat(keep).reset_index(drop=True)
    # As the HH tables are: the training reward is sigmoid(raw), the raw score (an RM logit) is kept beside it.
    table[C.REWARD_RAW] = 2.0 * (table[C.REWARD] - 1.5)
    table[C.REWARD] = 1.0 / (1.0 + np.exp(-table[C.REWARD_RAW]))
    scorer = ReferenceScorer(tiny_policy_dir, max_prompt_tokens=MAX_PROMPT, max_response_tokens=MAX_RESPONSE)
    return scorer(table)


@pytest.fixture(scope="module")
def policy(tiny_policy_dir):
    from alol_ray.models import load_policy

    model, tok = load_policy(tiny_policy_dir)
    model.eval()  # no dropout: two forward passes give the same log-probs
    return model, tok


def train_frame(table):
    return table[table[C.SPLIT] == "train"].reset_index(drop=True)


def batch_for(table, name, tok, n_units):
    method = get_method(name)
    frame = train_frame(table)
    units = training_units(frame, method.layout)[:n_units]
    return method, collate_units(frame, units, tok, max_prompt_tokens=MAX_PROMPT, max_response_tokens=MAX_RESPONSE,
                                 columns=method.columns)


def test_baselines_are_registered():
    names = set(method_names())
    assert {"dpo", "dpo_ref_free", "pro", "gold", "gold_delta", "gold_s", "gold_p", "r_gold"} <= names
    assert get_method("dpo").layout == "pair" and get_method("pro").layout == "list"
    assert get_method("gold").make_state is not None and get_method("gold").after_step is not None
    assert C.REF_TOKEN_LOGPS in get_method("dpo").columns and not get_method("dpo_ref_free").columns


def test_dpo_pairs_are_rank0_against_a_lower_rank_with_table_reference(scored_table, policy):
    """The method's loss equals dpo_loss on separately computed chosen / rejected log-probs, with the
    reference sums read from the table's ref_logp column (not a reference forward pass)."""
    model, tok = policy
    method, batch = batch_for(scored_table, "dpo", tok, 6)
    params = method.make_params(RunConfig().train)
    with torch.no_grad():
        loss, metrics = method.compute(model, batch, params, None)
        logps = response_token_logps(model, batch.policy)
    frame = train_frame(scored_table)
    units = training_units(frame, "pair")[:6]
    chosen_rows, rejected_rows = [u[0] for u in units], [u[1] for u in units]
    assert (frame[C.RANK].to_numpy()[chosen_rows] == 0).all() and (frame[C.RANK].to_numpy()[rejected_rows] > 0).all()
    mask = batch.policy.response_mask
    even, odd = torch.arange(0, 12, 2), torch.arange(1, 12, 2)
    ref_w = torch.tensor(frame[C.REF_LOGP].to_numpy()[chosen_rows], dtype=torch.float32)
    ref_l = torch.tensor(frame[C.REF_LOGP].to_numpy()[rejected_rows], dtype=torch.float32)
    expected, _ = dpo_loss(logps[even], mask[even], logps[odd], mask[odd], ref_w, ref_l, beta=0.1)
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=0)
    # At step 0 the policy IS pi_ref: every implicit reward is 0 and the loss is log 2.
    assert loss.item() == pytest.approx(math.log(2), abs=1e-4)
    assert metrics["reward/margin"] == pytest.approx(0.0, abs=1e-4)
    free, _ = get_method("dpo_ref_free").compute(model, batch, get_method("dpo_ref_free").make_params(RunConfig().train), None)
    assert abs(free.item() - math.log(2)) > 1e-3  # without the reference term the margin is the raw log-ratio


def test_pro_scores_response_tokens_only_and_handles_mixed_list_sizes(scored_table, policy):
    """PRO's s_i must be the mean log-prob of the response tokens (incl. EOS). Recompute every sequence's
    log-probs from the full log-softmax over input positions prompt_len .. prompt_len + len - 1 (targets
    shifted by one) and compare; the off-by-one mask of LoL-RL's copy (one prompt token in, the EOS out)
    gives a different loss. The temperatures are the raw rewards (reward_raw, e.g. RM logits), as in PRO and
    the reference code, not the sigmoid the table trains the A-LoL family on: with those the loss differs."""
    model, tok = policy
    method, batch = batch_for(scored_table, "pro", tok, 8)
    sizes = torch.bincount(batch.group)
    assert len(set(sizes.tolist())) > 1, "fixture should mix list sizes"
    params = method.make_params(RunConfig().train)
    with torch.no_grad():
        loss, _ = method.compute(model, batch, params, None)
        full = torch.log_softmax(model(input_ids=batch.policy.input_ids,
                                       attention_mask=batch.policy.attention_mask).logits.float(), -1)
    targets = torch.gather(full[:, :-1], 2, batch.policy.input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)  # [N, L-1]

    def pro_from(offset, rewards=batch.reward_raw):
        per_seq = []
        for i in range(len(batch.group)):
            p, r = int(batch.policy.prompt_lengths[i]), int(batch.policy.response_lengths[i])
            per_seq.append(targets[i, p - 1 + offset: p - 1 + offset + r])
        total = 0.0
        for n in sorted(set(sizes.tolist())):
            units = torch.nonzero(sizes == n).flatten()
            rows = [i for u in units.tolist() for i in torch.nonzero(batch.group == u).flatten().tolist()]
            width = max(len(per_seq[i]) for i in rows)
            lp = torch.zeros(len(rows), width)
            mask = torch.zeros(len(rows), width)
            for j, i in enumerate(rows):
                lp[j, :len(per_seq[i])] = per_seq[i]
                mask[j, :len(per_seq[i])] = 1
            part, _ = pro_loss(lp.view(len(units), n, -1), mask.view(len(units), n, -1),
                               rewards[rows].view(len(units), n), sft_weight=0.05)
            total += part * len(units) / len(sizes)
        return total

    torch.testing.assert_close(loss, torch.as_tensor(pro_from(0)), atol=1e-4, rtol=0)
    assert abs(loss.item() - float(pro_from(-1))) > 1e-3  # one prompt token in, EOS out: not what we train
    assert abs(loss.item() - float(pro_from(0, torch.sigmoid(batch.reward_raw)))) > 1e-2  # sigmoid: not PRO


def test_gold_stale_copy_resyncs_every_k_steps(scored_table, tiny_policy_dir):
    """With gold.sync_every=2 the stale copy keeps the start weights after update 1 and equals the policy
    after update 2; its log-probs (not the current policy's) set the token weights."""
    from alol_ray.models import load_policy
    from alol_ray.baselines.gold import gold_loss

    model, tok = load_policy(tiny_policy_dir)
    tc = RunConfig().train
    # u = 0: the token weight is the stale copy's probability itself (a random tiny policy gives every
    # token p < 0.1, so the default u would make every weight u and hide which policy set them).
    tc = dataclasses.replace(tc, gold=dataclasses.replace(tc.gold, sync_every=2, reward="s", u=0.0))
    method, batch = batch_for(scored_table, "gold", tok, 4)
    params = method.make_params(tc)
    state = method.make_state(model, tc)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    start = {k: v.clone() for k, v in model.state_dict().items()}

    def same(a, b):
        return all(torch.equal(a[k], b[k]) for k in a)

    for step in (1, 2):
        loss, metrics = method.compute(model, batch, params, state)
        assert math.isfinite(loss.item()) and 0.0 < metrics["gold_weight/mean"] <= 1.0
        loss.backward()
        opt.step()
        opt.zero_grad()
        method.after_step(state, model, step)
        if step == 1:
            assert same(state.module.state_dict(), start) and not same(model.state_dict(), start)
            # The loss after update 1 weighs tokens by the stale copy (the start weights), which now differs
            # from the policy: it equals gold_loss given the stale log-probs, not gold_loss with none.
            with torch.no_grad():
                weighted, _ = method.compute(model, batch, params, state)
                logps = response_token_logps(model, batch.policy)
                stale = response_token_logps(state.module, batch.policy)
                kw = dict(u=params.u, reward_kind="s", lower_bound_b=params.lower_bound_b,
                          truncation_c=params.truncation_c, horizon=params.horizon)
                by_stale, _ = gold_loss(logps, batch.policy.response_mask, stale, batch.ref_logps, **kw)
                by_current, _ = gold_loss(logps, batch.policy.response_mask, None, batch.ref_logps, **kw)
            assert weighted.item() == pytest.approx(by_stale.item(), rel=1e-6)
            assert abs(by_stale.item() - by_current.item()) > 1e-4 * abs(by_current.item())
        else:
            assert same(state.module.state_dict(), model.state_dict()) and state.synced_at == 2


def test_gold_reward_kinds_and_bad_config(scored_table, policy):
    from alol_ray.config import load_config
    from alol_ray.errors import ConfigError

    model, tok = policy
    losses = {}
    for name in ("gold_delta", "gold_s", "gold_p"):
        method, batch = batch_for(scored_table, name, tok, 4)
        with torch.no_grad():
            losses[name], _ = method.compute(model, batch, method.make_params(RunConfig().train), None)
    # GOLD-p's returns are larger than GOLD-s's (log p - b >= c vs p <= 1), and both weigh more than delta's 1.
    assert losses["gold_p"] > losses["gold_s"] > 0 and losses["gold_delta"] > 0
    with pytest.raises(ConfigError, match="train.gold.reward"):
        load_config(None, ["train.gold.reward=q"])


# ------------------------------------------------------------------------------- Ray Train smoke


# dpo_ref_free: same path, checked in-process; dpo: the slow tier (the e2e tier's `alol demo` in
# test_compare.py trains it on Ray through the CLI).
@pytest.mark.parametrize("name", [pytest.param("dpo", marks=pytest.mark.slow), "pro", "gold"])
def test_baseline_trains_a_few_steps_on_ray(name, ray_local, scored_table, tiny_policy_dir, tmp_path):
    from safetensors.torch import load_file

    from alol_ray.train.trainer import BEST_DIR, SUMMARY_FILE, fit

    cfg = RunConfig()
    cfg.model.max_prompt_tokens, cfg.model.max_response_tokens = MAX_PROMPT, MAX_RESPONSE
    tc = dataclasses.replace(cfg.train, algo=name, steps=3, batch_size=4, lr=3e-3, eval_every=0, checkpoint_every=3,
                             log_every=1, num_workers=1, cpus_per_worker=1,
                             gold=dataclasses.replace(cfg.train.gold, sync_every=2))
    run_dir = str(tmp_path / f"{name}-s0")
    out = fit(cfg, method=get_method(name), train_cfg=tc, table=scored_table, policy_path=tiny_policy_dir,
              work_dir=run_dir)
    assert out.total_steps == 3 and out.best_step == 3
    with open(os.path.join(run_dir, "metrics.jsonl")) as fh:
        lines = [json.loads(line) for line in fh]
    assert [m["train/step"] for m in lines] == [1, 2, 3]
    assert all(math.isfinite(m["loss/policy"]) for m in lines)
    assert os.path.exists(os.path.join(run_dir, SUMMARY_FILE))
    before = load_file(os.path.join(tiny_policy_dir, "model.safetensors"))
    after = load_file(os.path.join(run_dir, BEST_DIR, "model.safetensors"))
    changed = max(float((after[k].float() - before[k].float()).abs().max()) for k in before)
    assert changed > 1e-4, f"{name}: parameters did not move"
    assert np.isfinite(changed)
