"""Hand-computed checks of the offline baseline losses: DPO, PRO and GOLD (baselines/*.py).

All tensors are float64 so that 1e-6 tolerances are meaningful.
"""

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from alol_ray.losses import gold_token_weight
from alol_ray.baselines.dpo import dpo_loss
from alol_ray.baselines.gold import StaleCopySync, gold_loss, token_returns
from alol_ray.baselines.pro import pro_loss

TOL = dict(atol=1e-6, rtol=0.0)
REPO_ROOT = Path(__file__).resolve().parents[1]
F64 = torch.float64


def close(actual, expected):
    torch.testing.assert_close(torch.as_tensor(actual, dtype=F64), torch.as_tensor(expected, dtype=F64), **TOL)


def t(values, grad=False):
    return torch.tensor(values, dtype=F64, requires_grad=grad)


# -- DPO ----------------------------------------------------------------------------------------------


def dpo_example(pad=0.0):
    """B = 2 pairs; the chosen response of pair 1 has one padded token.

    policy  chosen   [[-1, -2], [-0.5, PAD]] -> sums [-3.0, -0.5]
            rejected [[-2, -2], [-1, -1]]    -> sums [-4.0, -2.0]
    ref     chosen   [[-1.5, -2], [-1, 0]]   -> sums [-3.5, -1.0]
            rejected [[-1, -2], [-0.5, -1]]  -> sums [-3.0, -1.5]
    """
    return dict(
        chosen_logps=t([[-1.0, -2.0], [-0.5, pad]], grad=True),
        chosen_mask=t([[1.0, 1.0], [1.0, 0.0]]),
        rejected_logps=t([[-2.0, -2.0], [-1.0, -1.0]], grad=True),
        rejected_mask=t([[1.0, 1.0], [1.0, 1.0]]),
        ref_chosen_logps=t([[-1.5, -2.0], [-1.0, 0.0]]),
        ref_rejected_logps=t([[-1.0, -2.0], [-0.5, -1.0]]),
    )


def test_dpo_worked_example():
    """margin = (pi_w - pi_l) - (ref_w - ref_l):
        pair 0: (-3 - -4) - (-3.5 - -3.0) = 1.0 + 0.5 = 1.5
        pair 1: (-0.5 - -2) - (-1.0 - -1.5) = 1.5 - 0.5 = 1.0
    beta = 0.1 -> logits [0.15, 0.1]
    -log sigmoid(0.15) = log(1 + e^-0.15) = log(1.8607080) = 0.6209570
    -log sigmoid(0.1)  = log(1 + e^-0.1)  = log(1.9048374) = 0.6443967
    loss = (0.6209570 + 0.6443967) / 2 = 0.6326769
    implicit rewards beta * (pi - ref): chosen [0.05, 0.05], rejected [-0.1, -0.05];
    margin mean (0.15 + 0.1) / 2 = 0.125; accuracy 1.
    d loss / d chosen_t = -beta * sigmoid(-logit) / B = [-0.05 * 0.4625702, -0.05 * 0.4750208 (real token only)]
    d loss / d rejected_t = + the same.
    """
    ex = dpo_example()
    loss, metrics = dpo_loss(**ex, beta=0.1)
    close(loss, (math.log1p(math.exp(-0.15)) + math.log1p(math.exp(-0.1))) / 2)
    close(loss, 0.6326768539)
    close(metrics["loss/policy"], loss.item())
    close(metrics["reward/chosen"], 0.05)
    close(metrics["reward/rejected"], -0.075)
    close(metrics["reward/margin"], 0.125)
    assert metrics["reward/accuracy"] == 1.0
    grad_w, grad_l = torch.autograd.grad(loss, [ex["chosen_logps"], ex["rejected_logps"]])
    s0, s1 = 1 / (1 + math.exp(0.15)), 1 / (1 + math.exp(0.1))
    close(grad_w, [[-0.05 * s0, -0.05 * s0], [-0.05 * s1, 0.0]])
    close(grad_l, [[0.05 * s0, 0.05 * s0], [0.05 * s1, 0.05 * s1]])


def test_dpo_padding_garbage_and_sequence_level_refs():
    """PAD = nan changes nothing; reference sums [B] (the scored table's ref_logp) == reference tokens [B, T]."""
    clean, _ = dpo_loss(**dpo_example(), beta=0.1)
    ex = dpo_example(pad=float("nan"))
    ex["ref_chosen_logps"] = t([-3.5, -1.0])
    ex["ref_rejected_logps"] = t([-3.0, -1.5])
    loss, _ = dpo_loss(**ex, beta=0.1)
    close(loss, clean)
    (grad,) = torch.autograd.grad(loss, ex["chosen_logps"])
    assert torch.isfinite(grad).all() and grad[1, 1] == 0.0


def test_dpo_reference_free_and_accuracy():
    """reference_free: margin = pi_w - pi_l = [1.0, 1.5] -> loss = (log(1 + e^-0.1) + log(1 + e^-0.15)) / 2,
    the same two terms as the worked example swapped, = 0.6326769.

    Accuracy counts pairs with chosen reward > rejected reward: swapping chosen/rejected of pair 0 gives
    margins [-1.5, 1.0] -> accuracy 1/2, loss = (log(1 + e^0.15) + log(1 + e^-0.1)) / 2.
    """
    ex = dpo_example()
    ex["ref_chosen_logps"] = ex["ref_rejected_logps"] = None
    loss, metrics = dpo_loss(**ex, beta=0.1, reference_free=True)
    close(loss, 0.6326768539)
    close(metrics["reward/chosen"], 0.1 * (-3.0 - 0.5) / 2)

    ex = dpo_example()
    for key_w, key_l in (("chosen_logps", "rejected_logps"), ("ref_chosen_logps", "ref_rejected_logps")):
        w, l = ex[key_w].detach().clone(), ex[key_l].detach().clone()
        w[0], l[0] = ex[key_l][0].detach(), ex[key_w][0].detach()
        ex[key_w], ex[key_l] = w, l
    ex["chosen_mask"] = t([[1.0, 1.0], [1.0, 0.0]])
    loss, metrics = dpo_loss(**ex, beta=0.1)
    close(loss, (math.log1p(math.exp(0.15)) + math.log1p(math.exp(-0.1))) / 2)
    assert metrics["reward/accuracy"] == 0.5
    with pytest.raises(ValueError, match="reference_free"):
        dpo_loss(**{**dpo_example(), "ref_chosen_logps": None}, beta=0.1)


def test_dpo_default_beta_ties_and_detached_references():
    """beta defaults to 0.1: the worked example's loss 0.6326769 again without passing it.
    A tie is not a correct pair: policy sums [-2, -2], reference sums [-1, -1] give equal implicit rewards
    0.1 * (-2 + 1) = -0.1 on both sides -> accuracy 0, logit 0, loss = -log sigmoid(0) = log 2 = 0.6931472.
    The reference log-probs get no gradient, per token or already summed."""
    loss, _ = dpo_loss(**dpo_example())
    close(loss, 0.6326768539)
    ref_w, ref_l = t([[-0.5, -0.5]], grad=True), t([-1.0], grad=True)
    loss, metrics = dpo_loss(t([[-1.0, -1.0]], grad=True), t([[1.0, 1.0]]), t([[-2.0]], grad=True), t([[1.0]]),
                             ref_w, ref_l)
    close(loss, math.log(2.0))
    assert metrics["reward/accuracy"] == 0.0
    close(metrics["reward/margin"], 0.0)
    loss.backward()
    assert ref_w.grad is None and ref_l.grad is None


def test_dpo_without_references_is_refused_exactly():
    """Missing reference log-probs without reference_free=True: an error with this exact message."""
    ex = dpo_example()
    ex["ref_rejected_logps"] = None
    with pytest.raises(ValueError, match=re.escape(
            "dpo_loss needs ref_chosen_logps and ref_rejected_logps unless reference_free=True") + "$"):
        dpo_loss(**ex)


def test_ipo_worked_example():
    """loss_type="ipo", beta = 0.5 (IPO's tau): h = chosen log-ratio / |y_w| - rejected log-ratio / |y_l|.
        chosen   log-ratios (-3 - -3.5, -0.5 - -1.0) = (0.5, 0.5), tokens (2, 1: pair 1's pad is not counted)
                 -> (0.25, 0.5)
        rejected log-ratios (-4 - -3, -2 - -1.5) = (-1.0, -0.5), tokens (2, 2) -> (-0.5, -0.25)
        h = (0.75, 0.75); 1 / (2 beta) = 1 -> loss = mean((0.75 - 1)^2) = 0.0625
    (counting pair 1's pad would give h_1 = 0.5 and loss (0.0625 + 0.25) / 2 = 0.15625).
    d loss / d h_i = 2 (h_i - 1) / B = -0.25; d h / d chosen_t = 1 / |y_w|, d h / d rejected_t = -1 / |y_l|:
        chosen grads [[-0.125, -0.125], [-0.25, 0]], rejected grads [[0.125, 0.125], [0.125, 0.125]].
    References summed [B] give the same loss (the token count comes from the masks)."""
    ex = dpo_example(pad=float("nan"))
    loss, metrics = dpo_loss(**ex, beta=0.5, loss_type="ipo")
    close(loss, 0.0625)
    close(metrics["loss/policy"], 0.0625)
    grad_w, grad_l = torch.autograd.grad(loss, [ex["chosen_logps"], ex["rejected_logps"]])
    close(grad_w, [[-0.125, -0.125], [-0.25, 0.0]])
    close(grad_l, [[0.125, 0.125], [0.125, 0.125]])
    ex["ref_chosen_logps"], ex["ref_rejected_logps"] = t([-3.5, -1.0]), t([-3.0, -1.5])
    close(dpo_loss(**ex, beta=0.5, loss_type="ipo")[0], 0.0625)


def test_dpo_loss_types_are_the_config_choices():
    """The loss knows exactly the loss types the config section accepts; anything else is refused by both."""
    from alol_ray.baselines.dpo_config import DPO_LOSS_TYPES, DPOConfig
    from alol_ray.errors import ConfigError
    from alol_ray.baselines.dpo import LOSS_TYPES

    assert LOSS_TYPES == DPO_LOSS_TYPES == ("sigmoid", "ipo")
    with pytest.raises(ValueError, match="loss_type must be one of"):
        dpo_loss(**dpo_example(), loss_type="hinge")
    with pytest.raises(ConfigError, match=r"train.dpo.loss_type must be one of \['sigmoid', 'ipo'\], got 'hinge'"):
        DPOConfig(loss_type="hinge")


def test_dpo_float64_references_do_not_upcast_a_float32_policy():
    """References in float64 (per token [B, T] or summed [B]) are cast to the policy's float32: the loss is
    float32 and equals the float64 worked example's."""
    ex = dpo_example()
    f32 = torch.float32
    kwargs = {k: (v.detach().to(f32) if k in ("chosen_logps", "rejected_logps") else v) for k, v in ex.items()}
    expected, _ = dpo_loss(**ex)
    loss, _ = dpo_loss(**kwargs)
    assert loss.dtype == f32
    close(loss, expected)
    kwargs["ref_chosen_logps"], kwargs["ref_rejected_logps"] = t([-3.5, -1.0]), t([-3.0, -1.5])
    loss, _ = dpo_loss(**kwargs)
    assert loss.dtype == f32
    close(loss, expected)


# -- PRO ----------------------------------------------------------------------------------------------


def test_pro_n2_worked_example():
    """B = 1, n = 2, T = 2. Best response tokens [-1, -1] -> s_0 = -1, NLL_seq = 2;
    second [-2, -4] -> s_1 = -3. Rewards [2.0, 0.5] -> T_01 = T_0+ = 1.5.

        L_0 = log(1e-10 + e^(s_0 * 1.5) + e^(s_1 * 1.5)) - s_0 * 1.5
            = log(1e-10 + e^-1.5 + e^-4.5) + 1.5
            = log(1e-10 + 0.2231302 + 0.0111090) + 1.5 = -1.4514126 + 1.5 = 0.0485874
        sft = 0.05 * (n - 1)^2 * NLL_seq(best) = 0.05 * 1 * 2 = 0.1
        loss = 0.1485874

    Gradient (Z = 1e-10 + e^a + e^b, a = 1.5 s_0, b = 1.5 s_1; ds_i / dlp = 1 / len_i = 1/2):
        d/d lp_0t = 1.5 * (e^a / Z - 1) / 2 - 0.05,   d/d lp_1t = 1.5 * e^b / Z / 2
    """
    logps = t([[[-1.0, -1.0], [-2.0, -4.0]]], grad=True)
    mask = torch.ones(1, 2, 2, dtype=F64)
    loss, metrics = pro_loss(logps, mask, t([[2.0, 0.5]]), sft_weight=0.05)
    rank = math.log(1e-10 + math.exp(-1.5) + math.exp(-4.5)) + 1.5
    close(loss, rank + 0.1)
    close(loss, 0.1485874)
    close(metrics["loss/rank"], rank)
    close(metrics["loss/sft"], 0.1)
    close(metrics["nll/seq_mean"], 2.0)
    assert metrics["rank/top1_accuracy"] == 1.0
    (grad,) = torch.autograd.grad(loss, logps)
    z = 1e-10 + math.exp(-1.5) + math.exp(-4.5)
    g0 = 1.5 * (math.exp(-1.5) / z - 1) / 2 - 0.05
    g1 = 1.5 * math.exp(-4.5) / z / 2
    close(grad, [[[g0, g0], [g1, g1]]])


def pro3_example(pad=0.0):
    """n = 3: best [-1, -1] (s = -1, NLL 2), second [-3, -1] (s = -2), third [-0.5, PAD] (s = -0.5, 1 token)."""
    logps = t([[[-1.0, -1.0], [-3.0, -1.0], [-0.5, pad]]], grad=True)
    mask = t([[[1.0, 1.0], [1.0, 1.0], [1.0, 0.0]]])
    return logps, mask, t([[3.0, 1.0, 0.0]])


def test_pro_n3_worked_example():
    """s = [-1, -2, -0.5], rewards [3, 1, 0].

    k = 0: T_01 = 2, T_02 = 3, T_0+ = 3
        L_0 = log(1e-10 + e^(-1*3) + e^(-2*2) + e^(-0.5*3)) + 3
            = log(1e-10 + 0.0497871 + 0.0183156 + 0.2231302) + 3 = -1.2336321 + 3 = 1.7663679
    k = 1: T_12 = 1 = T_1+
        L_1 = log(1e-10 + e^(-2*1) + e^(-0.5*1)) + 2
            = log(1e-10 + 0.1353353 + 0.6065307) + 2 = -0.2985867 + 2 = 1.7014133
    sft = 0.05 * (3 - 1)^2 * 2 = 0.4
    loss = 1.7663679 + 1.7014133 + 0.4 = 3.8677812
    top-1 accuracy 0: the third response has the highest s (-0.5).
    """
    logps, mask, rewards = pro3_example()
    loss, metrics = pro_loss(logps, mask, rewards)
    e = math.exp
    l0 = math.log(1e-10 + e(-3) + e(-4) + e(-1.5)) + 3
    l1 = math.log(1e-10 + e(-2) + e(-0.5)) + 2
    close(loss, l0 + l1 + 0.4)
    close(loss, 3.8677812)
    close(metrics["loss/sft"], 0.4)
    assert metrics["rank/top1_accuracy"] == 0.0


def test_pro_padding_garbage_and_batch_mean():
    """PAD = nan gives the same loss and a finite gradient (0 at PAD); a batch of the n=3 group and a copy
    with rewards [3, 2, 0] is the mean of the two single-group losses."""
    clean, _ = pro_loss(*pro3_example())
    logps, mask, rewards = pro3_example(pad=float("nan"))
    loss, _ = pro_loss(logps, mask, rewards)
    close(loss, clean)
    (grad,) = torch.autograd.grad(loss, logps)
    assert torch.isfinite(grad).all() and grad[0, 2, 1] == 0.0

    logps, mask, rewards = pro3_example()
    other_rewards = t([[3.0, 2.0, 0.0]])
    single_other, _ = pro_loss(logps, mask, other_rewards)
    batch, _ = pro_loss(logps.repeat(2, 1, 1), mask.repeat(2, 1, 1), torch.cat([rewards, other_rewards]))
    close(batch, (clean + single_other) / 2)


def test_pro_epsilon_is_exact_and_numerics_are_stable():
    """The 1e-10 matters when all terms are tiny: s = [-20, -30], rewards [1, 0] (T = 1):
        L = log(1e-10 + e^-20 + e^-30) + 20 = log(1e-10 e^20 + 1 + e^-10) = log(1.4852 + ...) = 0.39558
    (without the 1e-10 it would be log(1 + e^-10) = 4.5e-5). sft_weight 0 isolates L.

    Unsorted rewards [0, 50] with s = [-10, -20] make T negative and s*T = 500, 1000: a naive exp
    overflows; the logsumexp form gives L = log(1e-10 + e^500 + e^1000) - 500 = 500 (to 1e-6)."""
    loss, _ = pro_loss(t([[[-20.0], [-30.0]]]), torch.ones(1, 2, 1, dtype=F64), t([[1.0, 0.0]]), sft_weight=0.0)
    close(loss, math.log(1e-10 * math.exp(20) + 1 + math.exp(-10)))
    loss, _ = pro_loss(t([[[-10.0], [-20.0]]]), torch.ones(1, 2, 1, dtype=F64), t([[0.0, 50.0]]), sft_weight=0.0)
    assert torch.isfinite(loss)
    close(loss, 500.0)


def test_pro_rejects_bad_shapes():
    with pytest.raises(ValueError, match="at least 2"):
        pro_loss(t([[[-1.0]]]), torch.ones(1, 1, 1, dtype=F64), t([[1.0]]))
    with pytest.raises(ValueError, match="rewards must be"):
        pro_loss(t([[[-1.0], [-2.0]]]), torch.ones(1, 2, 1, dtype=F64), t([1.0, 0.0]))
    with pytest.raises(ValueError, match="at least one real token"):
        pro_loss(t([[[-1.0], [-2.0]]]), t([[[1.0], [0.0]]]), t([[1.0, 0.0]]))


def test_pro_shape_errors_exactly():
    """Each shape error names what it got."""
    ones = torch.ones(1, 2, 2, dtype=F64)
    with pytest.raises(ValueError, match=re.escape("token_logps and mask must be [B, n, T]; got (1, 2, 2), (1, 2, 1)")):
        pro_loss(ones, torch.ones(1, 2, 1, dtype=F64), t([[1.0, 0.0]]))
    with pytest.raises(ValueError, match=re.escape("token_logps and mask must be [B, n, T]; got (2, 2), (2, 2)")):
        pro_loss(ones[0], ones[0], t([[1.0, 0.0]]))
    with pytest.raises(ValueError, match=re.escape("rewards must be [B, n] = (1, 2), got (1, 3)")):
        pro_loss(ones, ones, t([[1.0, 0.0, 0.0]]))
    with pytest.raises(ValueError, match=re.escape("PRO needs at least 2 responses per group, got n = 1")):
        pro_loss(ones[:, :1], ones[:, :1], t([[1.0]]))


def test_pro_metric_keys_and_top1_accuracy_per_group():
    """Two groups, scores s = [[-1, -3], [-3, -1]]: the best response is the top scorer in the first group only,
    so top-1 accuracy is 1/2 (per group, not over the flattened scores). The metrics are exactly these five."""
    logps = t([[[-1.0, -1.0], [-2.0, -4.0]], [[-2.0, -4.0], [-1.0, -1.0]]])
    loss, metrics = pro_loss(logps, torch.ones(2, 2, 2, dtype=F64), t([[2.0, 0.5], [2.0, 0.5]]))
    assert set(metrics) == {"loss/policy", "loss/rank", "loss/sft", "nll/seq_mean", "rank/top1_accuracy"}
    assert metrics["loss/policy"] == loss.item()
    assert metrics["rank/top1_accuracy"] == 0.5


def test_pro_epsilon_term_in_the_loss_dtype_and_rewards_follow_the_log_probs():
    """s = [-100, -200], rewards [1, 0]: every other term is below e^-77, so L = log(1e-10) + 100 in float64
    to 1e-12 (log(1e-10) rounded to float32 would be 6e-7 off). float64 rewards with float32 log-probs give a
    float32 loss. An all-zero mask row is refused with its exact message."""
    loss, _ = pro_loss(t([[[-100.0], [-200.0]]]), torch.ones(1, 2, 1, dtype=F64), t([[1.0, 0.0]]), sft_weight=0.0)
    assert loss.dtype == F64
    torch.testing.assert_close(loss, t(math.log(1e-10) + 100.0), atol=1e-12, rtol=0.0)
    f32 = torch.float32
    loss, _ = pro_loss(torch.tensor([[[-1.0, -1.0], [-2.0, -4.0]]], dtype=f32), torch.ones(1, 2, 2, dtype=f32),
                       t([[2.0, 0.5]]))
    assert loss.dtype == f32
    close(loss, 0.1485874)
    with pytest.raises(ValueError, match=re.escape(
            "every response in a PRO group needs at least one real token (mask row all zero)") + "$"):
        pro_loss(t([[[-1.0], [-2.0]]]), t([[[1.0], [0.0]]]), t([[1.0, 0.0]]))


def test_pro_loss_dtype_does_not_follow_the_default_dtype():
    """float32 inputs give a float32 loss even where torch's default float dtype is float64."""
    f32 = torch.float32
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        loss, _ = pro_loss(torch.tensor([[[-1.0, -1.0], [-2.0, -4.0]]], dtype=f32), torch.ones(1, 2, 2, dtype=f32),
                           torch.tensor([[2.0, 0.5]], dtype=f32))
    finally:
        torch.set_default_dtype(default)
    assert loss.dtype == f32
    close(loss, 0.1485874)


# -- GOLD ---------------------------------------------------------------------------------------------

# B = 1, T = 3: logps [-1, -2, -0.5] (NLL_t = [1, 2, 0.5]);
# stale pi~ probs [0.3, 0.05, 1.0] -> b1 = clamp(., 0.1, 1) = [0.3, 0.1, 1.0] with u = 0.1.
LOGPS = [[-1.0, -2.0, -0.5]]
STALE = [[math.log(0.3), math.log(0.05), 0.0]]


def gold(kind, mle=None, **kwargs):
    logps = t(LOGPS, grad=True)
    loss, metrics = gold_loss(logps, torch.ones(1, 3, dtype=F64), t(STALE), None if mle is None else t(mle),
                              u=0.1, reward_kind=kind, **kwargs)
    return loss, torch.autograd.grad(loss, logps)[0], metrics


def test_gold_delta():
    """GOLD-delta: b2 = 1, loss = sum_t b1_t NLL_t = 0.3 * 1 + 0.1 * 2 + 1.0 * 0.5 = 1.0; grad = -b1."""
    loss, grad, metrics = gold("delta")
    close(loss, 1.0)
    close(grad, [[-0.3, -0.1, -1.0]])
    close(metrics["gold_weight/mean"], 1.4 / 3)
    close(metrics["gold_return/mean"], 1.0)


def test_gold_s():
    """GOLD-s: p_MLE = [0.5, 0.05, 0.9], c = 0.1 -> r = [0.5, 0.1 (truncated), 0.9]
    b2 = return-to-go = [1.5, 1.0, 0.9]
    loss = 0.3 * 1.5 * 1 + 0.1 * 1.0 * 2 + 1.0 * 0.9 * 0.5 = 0.45 + 0.2 + 0.45 = 1.1; grad = -b1 * b2.
    """
    loss, grad, metrics = gold("s", mle=[[math.log(0.5), math.log(0.05), math.log(0.9)]])
    close(loss, 1.1)
    close(grad, [[-0.45, -0.1, -0.9]])
    close(metrics["gold_return/mean"], (1.5 + 1.0 + 0.9) / 3)


def test_gold_p():
    """GOLD-p: log p_MLE = [-1, -6, -0.5], b = -5, c = 0.1 -> r = max(log p - b, c) = [4, 0.1 (-1 truncated), 4.5]
    b2 = [8.6, 4.6, 4.5]; loss = 0.3 * 8.6 + 0.1 * 4.6 * 2 + 1.0 * 4.5 * 0.5 = 2.58 + 0.92 + 2.25 = 5.75.
    """
    loss, grad, _ = gold("p", mle=[[-1.0, -6.0, -0.5]], lower_bound_b=-5.0, truncation_c=0.1)
    close(loss, 5.75)
    close(grad, [[-0.3 * 8.6, -0.1 * 4.6, -1.0 * 4.5]])


def test_gold_discount_and_horizon():
    """GOLD-s with gamma = 0.5 and horizon = 1: b2_t = r_t + 0.5 r_{t+1} with r = [0.5, 0.1, 0.9]
    -> b2 = [0.55, 0.55, 0.9]; loss = 0.3 * 0.55 + 0.1 * 0.55 * 2 + 0.9 * 0.5 = 0.165 + 0.11 + 0.45 = 0.725.
    token_returns alone: r = [1, 2, 3, 4], gamma = 0.5, horizon = 2 -> [1 + 1 + 0.75, 2 + 1.5 + 1, 3 + 2, 4]."""
    loss, _, _ = gold("s", mle=[[math.log(0.5), math.log(0.05), math.log(0.9)]], gamma=0.5, horizon=1)
    close(loss, 0.725)
    close(token_returns(t([[1.0, 2.0, 3.0, 4.0]]), gamma=0.5, horizon=2), [[2.75, 4.5, 5.0, 4.0]])
    close(token_returns(t([[1.0, 2.0, 3.0, 4.0]])), [[10.0, 9.0, 7.0, 4.0]])


def test_gold_padding_gives_no_future_reward():
    """Batch of the GOLD-s row (per-example 1.1) and a padded row:
        logps [-0.5, -1.0, PAD], stale probs [0.5, 0.02, PAD] -> b1 = [0.5, 0.1]
        p_MLE [0.8, 0.6, PAD=0.99] -> r = [0.8, 0.6, 0] (padding earns nothing) -> b2 = [1.4, 0.6]
        per-example = 0.5 * 1.4 * 0.5 + 0.1 * 0.6 * 1.0 = 0.35 + 0.06 = 0.41
        loss = (1.1 + 0.41) / 2 = 0.755   (a leaked PAD reward would give b2 = [2.39, 1.59])
    Garbage (nan) in logps / stale at PAD changes nothing.
    """
    nan = float("nan")
    logps = t([LOGPS[0], [-0.5, -1.0, nan]], grad=True)
    mask = t([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    stale = t([STALE[0], [math.log(0.5), math.log(0.02), nan]])
    mle = t([[math.log(0.5), math.log(0.05), math.log(0.9)], [math.log(0.8), math.log(0.6), math.log(0.99)]])
    loss, _ = gold_loss(logps, mask, stale, mle, u=0.1, reward_kind="s")
    close(loss, 0.755)
    (grad,) = torch.autograd.grad(loss, logps)
    assert torch.isfinite(grad).all() and grad[1, 2] == 0.0
    close(grad[1, :2], [-0.5 * 1.4 / 2, -0.1 * 0.6 / 2])


def test_gold_without_stale_uses_current_detached_and_shares_weight_helper():
    """stale_logps None -> b1 = gold_token_weight(logps): with p = e^[-1, -2, -0.5] = [0.368, 0.135, 0.607]
    (all above u = 0.1) the delta loss is 0.3678794 * 1 + 0.1353353 * 2 + 0.6065307 * 0.5 = 0.9418153."""
    logps = t(LOGPS, grad=True)
    loss, _ = gold_loss(logps, torch.ones(1, 3, dtype=F64), None, u=0.1, reward_kind="delta")
    close(loss, math.exp(-1) + 2 * math.exp(-2) + 0.5 * math.exp(-0.5))
    w = gold_token_weight(logps, 0.1)
    (grad,) = torch.autograd.grad(loss, logps)
    close(grad, -w)  # b1 is detached: the gradient is -b1, not d(b1 * NLL)


def test_gold_weight_never_outside_u_and_1():
    """Random stale log-probs from -30 to 0: every b1 in [u, 1] for the paper's u values."""
    g = torch.Generator().manual_seed(0)
    logps = -torch.rand(8, 16, generator=g, dtype=F64) * 30
    for u in (0.1, 0.15, 0.2):
        _, metrics = gold_loss(logps, torch.ones_like(logps), logps, u=u, reward_kind="delta")
        w = gold_token_weight(logps, u)
        assert u <= w.min().item() and w.max().item() <= 1.0
        assert u <= metrics["gold_weight/mean"] <= 1.0


def test_gold_argument_errors():
    with pytest.raises(ValueError, match="reward_kind"):
        gold("q")
    with pytest.raises(ValueError, match="needs mle_logps"):
        gold("s")


def test_gold_defaults_are_gold_s_with_the_authors_constants():
    """Defaults: u = 0.1, GOLD-s, c = 0.1, gamma = 1, no horizon: the GOLD-s example's 1.1 without arguments.
    GOLD-p with the default b = -60: r = log p - b = [59, 54, 59.5] -> b2 = [172.5, 113.5, 59.5];
    loss = 0.3 * 172.5 * 1 + 0.1 * 113.5 * 2 + 1.0 * 59.5 * 0.5 = 51.75 + 22.7 + 29.75 = 104.2."""
    logps, mask = t(LOGPS, grad=True), torch.ones(1, 3, dtype=F64)
    loss, _ = gold_loss(logps, mask, t(STALE), t([[math.log(0.5), math.log(0.05), math.log(0.9)]]))
    close(loss, 1.1)
    loss, _ = gold_loss(logps, mask, t(STALE), t([[-1.0, -6.0, -0.5]]), reward_kind="p")
    close(loss, 104.2)


def test_gold_mle_log_probs_are_capped_at_0_and_detached():
    """A p_MLE log-prob a rounding error above 0 (1e-3) counts as log 1 = 0: GOLD-s r = [1, 1, 1] -> b2 = [3, 2, 1],
    loss = 0.3 * 3 * 1 + 0.1 * 2 * 2 + 1.0 * 1 * 0.5 = 1.8 (uncapped, e^0.001 = 1.0010005 would give 1.8022);
    GOLD-p with b = -5: r = [5, 5, 5] -> b2 = [15, 10, 5], loss = 4.5 + 2 + 2.5 = 9.0.
    The MLE model's log-probs get no gradient."""
    mle = t([[1e-3, 1e-3, 1e-3]], grad=True)
    loss, _, _ = gold("s", mle=mle.detach().tolist())
    close(loss, 1.8)
    loss, _, _ = gold("p", mle=[[1e-3, 1e-3, 1e-3]], lower_bound_b=-5.0)
    close(loss, 9.0)
    loss, _ = gold_loss(t(LOGPS, grad=True), torch.ones(1, 3, dtype=F64), t(STALE), mle, reward_kind="s")
    loss.backward()
    assert mle.grad is None


def test_gold_horizon_zero_and_argument_errors_exactly():
    """horizon = 0: b2_t = r_t alone = [0.5, 0.1, 0.9] -> loss = 0.3 * 0.5 + 0.1 * 0.1 * 2 + 0.9 * 0.5 = 0.62.
    A negative horizon, a [B, n, T] input and an unknown kind are errors naming the value."""
    loss, _, _ = gold("s", mle=[[math.log(0.5), math.log(0.05), math.log(0.9)]], horizon=0)
    close(loss, 0.62)
    with pytest.raises(ValueError, match="^horizon must be >= 0 or None, got -1$"):
        gold("s", mle=[[0.0, 0.0, 0.0]], horizon=-1)
    with pytest.raises(ValueError, match=re.escape("logps and mask must both be [B, T]; got (1, 1, 3) and (1, 1, 3)")):
        gold_loss(t([LOGPS]), torch.ones(1, 1, 3, dtype=F64), None, reward_kind="delta")
    with pytest.raises(ValueError, match=re.escape("reward_kind must be one of ('delta', 's', 'p'), got 'q'")):
        gold("q")
    with pytest.raises(ValueError, match="^GOLD-p needs mle_logps"):
        gold("p")


def test_gold_loss_dtype_follows_the_policy_and_metrics_exactly():
    """float32 log-probs with float64 stale and MLE log-probs: b1 and b2 are cast to float32, so the loss is
    float32 (the float64 loss up to float32 rounding). B = 2, T = 3 (one padded slot): the metrics are exactly
    these four, and nll/seq_mean is the mean over examples of the summed NLL: rows [-1, -2, -0.5] and
    [-0.5, -1, PAD] -> (3.5 + 1.5) / 2 = 2.5."""
    f32 = torch.float32
    logps = torch.tensor([[-1.0, -2.0, -0.5], [-0.5, -1.0, 0.0]], dtype=f32)
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]], dtype=f32)
    stale, mle = t([[-1.0, -2.0, -0.5], [-0.5, -1.0, 0.0]]), t([[-0.5, -0.5, -0.5], [-0.5, -0.5, 0.0]])
    for kind in ("s", "p", "delta"):
        loss, metrics = gold_loss(logps, mask, stale, mle, reward_kind=kind)
        assert loss.dtype == f32, kind
        expected, _ = gold_loss(logps.double(), mask.double(), stale, mle, reward_kind=kind)
        torch.testing.assert_close(loss.double(), expected, atol=0.0, rtol=1e-6)
    assert set(metrics) == {"loss/policy", "nll/seq_mean", "gold_weight/mean", "gold_return/mean"}
    assert metrics["loss/policy"] == loss.item()
    close(metrics["nll/seq_mean"], 2.5)


def test_token_returns_stay_on_the_rewards_device():
    """Every tensor token_returns builds lives on the rewards' device: on the meta device (no data, shapes and
    devices only) nothing is created on the CPU, which would be an error there."""
    returns = token_returns(torch.zeros(2, 3, dtype=F64, device="meta"), gamma=0.5, horizon=1)
    assert returns.device.type == "meta" and returns.shape == (2, 3) and returns.dtype == F64


def test_stale_copy_every_step_and_error():
    """every = 1 re-syncs after each step; every = 0 is refused with its value."""
    policy = nn.Linear(2, 1)
    stale = StaleCopySync(policy, every=1)
    assert stale.maybe_sync(1) and stale.synced_at == 1
    assert not stale.maybe_sync(1)
    with pytest.raises(ValueError, match="^every must be >= 1, got 0$"):
        StaleCopySync(policy, every=0)


def test_stale_copy_sync_every_k_steps():
    """every = 3: the copy equals the policy at step 0; after SGD steps 1 and 2 it is stale (differs);
    maybe_sync(3) re-copies (equal again, synced_at = 3); steps 4, 5 stale; 6 re-copies."""
    torch.manual_seed(0)
    policy = nn.Linear(3, 2)
    stale = StaleCopySync(policy, every=3)
    opt = torch.optim.SGD(policy.parameters(), lr=0.1)

    def same():
        return all(torch.equal(a, b) for a, b in zip(policy.state_dict().values(), stale.module.state_dict().values()))

    assert same() and stale.synced_at == 0
    assert all(not p.requires_grad for p in stale.module.parameters())
    assert not stale.module.training
    for step in range(1, 7):
        opt.zero_grad()
        policy(torch.ones(1, 3)).sum().backward()
        opt.step()
        synced = stale.maybe_sync(step)
        assert synced == (step % 3 == 0)
        assert same() == synced, step
        assert stale.synced_at == (step // 3) * 3
    with pytest.raises(ValueError):
        StaleCopySync(policy, every=0)


# -- import hygiene -----------------------------------------------------------------------------------


def test_baseline_losses_import_no_ray_or_vllm():
    code = ("import alol_ray.baselines.dpo, alol_ray.baselines.pro, alol_ray.baselines.gold, sys; "
            "assert 'ray' not in sys.modules and 'vllm' not in sys.modules")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
