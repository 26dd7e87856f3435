"""Hand-computed checks of PPO's pure pieces (baselines/ppo_loss.py). float64, 1e-6 tolerances."""

import math

import pytest
import torch

from baselines.ppo_loss import (
    AdaptiveKLController,
    FixedKLController,
    RunningMoments,
    gae,
    kl_penalty_rewards,
    masked_mean,
    masked_moments,
    masked_whiten,
    policy_loss,
    ppo_loss,
    scale_scores,
    value_loss,
)

F64 = torch.float64
NAN = float("nan")


def t(values, grad=False):
    return torch.tensor(values, dtype=F64, requires_grad=grad)


def close(actual, expected, atol=1e-6):
    torch.testing.assert_close(torch.as_tensor(actual, dtype=F64), torch.as_tensor(expected, dtype=F64),
                               atol=atol, rtol=0.0)


def test_kl_penalty_rewards_put_the_score_on_the_last_real_token():
    """kl = logp - ref = [[0.5, -1, 0], [1, 0, pad]]; kl_coef 0.2 -> -0.2 * kl = [[-0.1, 0.2, 0], [-0.2, 0, 0]];
    scores [2, -1] land on the last real token: row 0 at t=2, row 1 at t=1 (t=2 is padding)."""
    logps = t([[-1.0, -2.0, -0.5], [-1.0, -1.0, 5.0]])
    ref = t([[-1.5, -1.0, -0.5], [-2.0, -1.0, -3.0]])
    mask = t([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    rewards, kl = kl_penalty_rewards(logps, ref, mask, t([2.0, -1.0]), kl_coef=0.2)
    close(kl, [[0.5, -1.0, 0.0], [1.0, 0.0, 0.0]])
    close(rewards, [[-0.1, 0.2, 2.0], [-0.2, -1.0, 0.0]])


def test_kl_penalty_rejects_an_empty_response():
    with pytest.raises(ValueError, match="at least one response token"):
        kl_penalty_rewards(t([[0.0]]), t([[0.0]]), t([[0.0]]), t([1.0]), 0.2)


def test_gae_gamma_1_lambda_095_by_hand():
    """Row 0 (3 real tokens), rewards [0, 0, 1], values [0.5, 0.2, 0.4]:
        t=2: delta = 1 + 0 - 0.4 = 0.6                 A = 0.6
        t=1: delta = 0 + 0.4 - 0.2 = 0.2               A = 0.2 + 0.95 * 0.6 = 0.77
        t=0: delta = 0 + 0.2 - 0.5 = -0.3              A = -0.3 + 0.95 * 0.77 = 0.4315
        returns = A + V = [0.9315, 0.97, 1.0]
    Row 1 (2 real tokens, garbage 9 / 7 in the padded slot), rewards [0.5, 1], values [0.1, 0.3]:
        t=1: delta = 1 + 0 - 0.3 = 0.7 (no bootstrap from padding)   A = 0.7
        t=0: delta = 0.5 + 0.3 - 0.1 = 0.7                           A = 0.7 + 0.95 * 0.7 = 1.365
        returns = [1.465, 1.0, 0]"""
    rewards = t([[0.0, 0.0, 1.0], [0.5, 1.0, 9.0]])
    values = t([[0.5, 0.2, 0.4], [0.1, 0.3, 7.0]])
    mask = t([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=0.95)
    close(adv, [[0.4315, 0.77, 0.6], [1.365, 0.7, 0.0]])
    close(ret, [[0.9315, 0.97, 1.0], [1.465, 1.0, 0.0]])


def test_gae_with_discount():
    """gamma 0.5, lam 1 on rewards [0, 2], values [1, 1]: t=1 delta = 2 - 1 = 1, A = 1;
    t=0 delta = 0 + 0.5 * 1 - 1 = -0.5, A = -0.5 + 0.5 * 1 = 0."""
    adv, ret = gae(t([[0.0, 2.0]]), t([[1.0, 1.0]]), t([[1.0, 1.0]]), gamma=0.5, lam=1.0)
    close(adv, [[0.0, 1.0]])
    close(ret, [[1.0, 2.0]])


def test_masked_whiten_uses_real_tokens_and_unbiased_variance():
    """Real values [1, 2, 3, 4]: mean 2.5, unbiased var (2.25 + 0.25 + 0.25 + 2.25) / 3 = 5/3,
    sqrt = 1.2909944 -> [-1.1618950, -0.3872983, 0.3872983, 1.1618950]; padding -> 0."""
    x = t([[1.0, 2.0, 3.0], [4.0, 100.0, NAN]])
    mask = t([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    s = math.sqrt(5.0 / 3.0 + 1e-8)
    close(masked_whiten(x, mask), [[-1.5 / s, -0.5 / s, 0.5 / s], [1.5 / s, 0.0, 0.0]])
    close(masked_whiten(x, mask, shift_mean=False), [[-1.5 / s + 2.5, -0.5 / s + 2.5, 0.5 / s + 2.5],
                                                     [1.5 / s + 2.5, 0.0, 0.0]])
    close(masked_mean(x, mask), 2.5)


def test_whitening_moments_over_two_workers_equal_the_global_ones():
    """Worker A holds [1, 2, 3], worker B [4]; summing (sum, sum of squares, count) over both gives the
    moments of [1, 2, 3, 4] (an all_reduce that adds B's statistics simulates the collective)."""
    a, mask_a = t([[1.0, 2.0, 3.0]]), t([[1.0, 1.0, 1.0]])
    b_stats = t([4.0, 16.0, 1.0])
    mean, var = masked_moments(a, mask_a, all_reduce=lambda s: s + b_stats)
    close(mean, 2.5)
    close(var, 5.0 / 3.0)
    b_mean_stats = t([4.0, 1.0])
    close(masked_mean(a, mask_a, all_reduce=lambda s: s + b_mean_stats), 2.5)


def test_clipped_surrogate_by_hand():
    """eps = 0.2. Per token (ratio, A) -> unclipped -A*rho, clipped -A*clip(rho), max:
        (1.5,  1): -1.5, -1.2 -> -1.2   clip active
        (0.5,  1): -0.5, -0.8 -> -0.5
        (1.5, -2):  3.0,  2.4 ->  3.0
        (0.5, -2):  1.0,  1.6 ->  1.6   clip active
        padding (ratio e^30, A 5): ignored
    loss = (-1.2 - 0.5 + 3.0 + 1.6) / 4 = 0.725; clip_frac 2/4.
    d loss / d logp_t = -A * rho / 4 where unclipped wins, else 0: [0, -0.125, 0.75, 0, 0]."""
    old = t([[-1.0, -1.0, -1.0, -1.0, -1.0]])
    log_ratio = t([[math.log(1.5), math.log(0.5), math.log(1.5), math.log(0.5), 30.0]])
    logps = (old + log_ratio).detach().requires_grad_(True)
    adv = t([[1.0, 1.0, -2.0, -2.0, 5.0]])
    mask = t([[1.0, 1.0, 1.0, 1.0, 0.0]])
    loss, metrics = policy_loss(logps, old, adv, mask, cliprange=0.2)
    close(loss, 0.725)
    assert metrics["ppo/clip_frac"] == pytest.approx(0.5, abs=1e-12)
    loss.backward()
    close(logps.grad, [[0.0, -0.125, 0.75, 0.0, 0.0]])


def test_policy_loss_at_ratio_one_is_minus_mean_advantage():
    """rho = 1 everywhere: loss = -mean(A) = -(1 - 3) / 2 = 1, nothing clipped, approx_kl 0."""
    lp = t([[-0.3, -0.7]])
    loss, metrics = policy_loss(lp, lp, t([[1.0, -3.0]]), t([[1.0, 1.0]]), cliprange=0.2)
    close(loss, 1.0)
    assert metrics["ppo/clip_frac"] == 0.0 and metrics["ppo/approx_kl"] == 0.0


def test_clipped_value_loss_by_hand():
    """c = 0.2. (v, v_old, R) -> (v - R)^2, (clip(v, v_old +- c) - R)^2, max:
        (1.0, 0.5, 1.0): 0,    (0.7 - 1)^2 = 0.09 -> 0.09   clipped wins
        (0.6, 0.5, 1.0): 0.16, 0.16               -> 0.16
        (0.0, 0.5, 0.0): 0,    0.3^2 = 0.09       -> 0.09   clipped wins
        (2.0, 0.5, 0.0): 4,    0.7^2 = 0.49       -> 4.0
    loss = 0.5 * (0.09 + 0.16 + 0.09 + 4) / 4 = 0.5425; value_clip_frac 2/4."""
    values = t([[1.0, 0.6, 0.0, 2.0, 3.0]], grad=True)
    old = t([[0.5, 0.5, 0.5, 0.5, 0.0]])
    ret = t([[1.0, 1.0, 0.0, 0.0, -9.0]])
    mask = t([[1.0, 1.0, 1.0, 1.0, 0.0]])
    loss, metrics = value_loss(values, old, ret, mask, cliprange_value=0.2)
    close(loss, 0.5425)
    assert metrics["ppo/value_clip_frac"] == pytest.approx(0.5, abs=1e-12)
    loss.backward()  # gradient only where the unclipped term wins: 0.5 * 2 (v - R) / 4
    close(values.grad, [[0.0, 0.5 * 2 * (0.6 - 1.0) / 4, 0.0, 0.5 * 2 * 2.0 / 4, 0.0]])


def test_ppo_loss_is_policy_plus_vf_coef_times_value():
    lp, old = t([[-1.0, -2.0]], grad=True), t([[-1.2, -1.9]])
    v, old_v, ret, adv, mask = t([[0.3, 0.1]], grad=True), t([[0.2, 0.2]]), t([[1.0, 0.5]]), t([[0.4, -0.6]]), t([[1.0, 1.0]])
    total, metrics = ppo_loss(lp, old, v, old_v, adv, ret, mask, cliprange=0.2, cliprange_value=0.2, vf_coef=0.1)
    pg, _ = policy_loss(lp, old, adv, mask, 0.2)
    vf, _ = value_loss(v, old_v, ret, mask, 0.2)
    close(total, pg + 0.1 * vf)
    assert metrics["loss/total"] == pytest.approx(float((pg + 0.1 * vf).detach()), abs=1e-12)


def test_adaptive_kl_controller_by_hand():
    """init 0.2, target 6, horizon 10000, 16 rollouts per update:
        KL 9   -> error clip(0.5) = 0.2  -> x (1 + 0.2 * 16 / 10000) = x 1.00032 -> 0.200064
        KL 3   -> error clip(-0.5) = -0.2 -> x 0.99968                     -> 0.200064 * 0.99968
        KL 6.6 -> error 0.1               -> x 1.00016"""
    ctl = AdaptiveKLController(0.2, 6.0, 10000)
    close(ctl.update(9.0, 16), 0.200064)
    close(ctl.update(3.0, 16), 0.200064 * 0.99968)
    close(ctl.update(6.6, 16), 0.200064 * 0.99968 * 1.00016)
    assert FixedKLController(0.3).update(100.0, 16) == 0.3


def test_running_moments_and_score_scaling():
    """[1, 2, 3]: mean 2, unbiased std 1. Adding [5]: all = [1, 2, 3, 5], mean 2.75,
    unbiased var (1.75^2 + 0.75^2 + 0.25^2 + 2.25^2) / 3 = 8.75 / 3."""
    m = RunningMoments()
    batch_mean, batch_std = m.update([1.0, 2.0, 3.0])
    assert (batch_mean, batch_std) == pytest.approx((2.0, 1.0), abs=1e-9)
    assert (m.mean, m.std) == pytest.approx((2.0, 1.0), abs=1e-9)
    m.update([5.0])
    assert (m.mean, m.std) == pytest.approx((2.75, math.sqrt(8.75 / 3)), abs=1e-9)
    fresh = RunningMoments()
    close(scale_scores(t([1.0, 2.0, 3.0]), fresh, normalise=True), [-1.0, 0.0, 1.0], atol=1e-6)
    fresh = RunningMoments()
    close(scale_scores(t([1.0, 2.0, 3.0]), fresh, normalise=False), [1.0, 2.0, 3.0], atol=1e-6)
    close(scale_scores(t([1.0, 2.0]), None, normalise=True), [1.0, 2.0])
