"""Hand-computed checks of PPO's pure pieces (baselines/ppo_loss.py). float64, 1e-6 tolerances."""

import math

import pytest
import torch

from alol_ray.baselines.ppo_loss import (
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


def test_masked_mean_of_nothing_is_zero():
    """No real position: sum 0 over a count clamped to 1 -> 0.0, not 0/0 = nan."""
    assert masked_mean(t([[NAN, 3.0]]), t([[0.0, 0.0]])).item() == 0.0


def test_masked_moments_edges():
    """2 real tokens are enough: [1, 3] -> mean 2, unbiased var ((1 - 2)^2 + (3 - 2)^2) / 1 = 2; fewer is an error.
    A constant [0.1, 0.1, 0.1] has variance exactly 0: E[x^2] - mean^2 rounds to -1.7e-18 in float64 and is
    clamped at 0, never negative."""
    mean, var = masked_moments(t([[1.0, 3.0, 50.0]]), t([[1.0, 1.0, 0.0]]))
    close(mean, 2.0)
    close(var, 2.0)
    with pytest.raises(ValueError, match="^whitening needs at least 2 real tokens, got 1$"):
        masked_moments(t([[1.0, 3.0]]), t([[1.0, 0.0]]))
    _, var = masked_moments(t([[0.1, 0.1, 0.1]]), t([[1.0, 1.0, 1.0]]))
    assert var.item() == 0.0


def test_kl_penalty_and_gae_are_detached_and_gae_defaults_to_gamma_1_lambda_095():
    """Rewards, KL and advantages carry no gradient back to log-probs or values.
    Defaults gamma = 1, lam = 0.95 on one row, rewards [0, 1], values [0.5, 0.2]:
        t=1: delta = 1 - 0.2 = 0.8, A = 0.8;   t=0: delta = 0 + 0.2 - 0.5 = -0.3, A = -0.3 + 0.95 * 0.8 = 0.46"""
    logps, ref = t([[-1.0, -2.0]], grad=True), t([[-1.5, -1.0]], grad=True)
    rewards, kl = kl_penalty_rewards(logps, ref, t([[1.0, 1.0]]), t([1.0]), kl_coef=0.1)
    assert not rewards.requires_grad and not kl.requires_grad
    values = t([[0.5, 0.2]], grad=True)
    adv, ret = gae(t([[0.0, 1.0]], grad=True), values, t([[1.0, 1.0]]))
    assert not adv.requires_grad and not ret.requires_grad
    close(adv, [[0.46, 0.8]])
    close(ret, [[0.96, 1.0]])


def test_policy_metrics_and_default_cliprange():
    """Default eps = 0.2. Log ratios [ln 1.5, ln 0.5] with A = [1, -2] (over 2 real tokens):
        loss = (max(-1.5, -1.2) + max(1.0, 1.6)) / 2 = (-1.2 + 1.6) / 2 = 0.2; both clipped -> clip_frac 1
        approx_kl = mean(0.5 * log_ratio^2) = 0.25 * (ln(1.5)^2 + ln(0.5)^2) = 0.1612150
        ratio_mean = (1.5 + 0.5) / 2 = 1.0
    With all_reduce adding another worker's (sum, count) = (0, 2), the metrics are global means over 4 tokens:
    clip_frac 2/4, approx_kl and ratio_mean halved; the loss stays this worker's mean."""
    old = t([[-1.0, -1.0, -1.0]])
    logps = old + t([[math.log(1.5), math.log(0.5), 7.0]])
    adv, mask = t([[1.0, -2.0, 9.0]]), t([[1.0, 1.0, 0.0]])
    loss, metrics = policy_loss(logps, old, adv, mask)
    kl = 0.25 * (math.log(1.5) ** 2 + math.log(0.5) ** 2)
    close(loss, 0.2)
    assert metrics == pytest.approx({"loss/policy": 0.2, "ppo/clip_frac": 1.0, "ppo/approx_kl": kl,
                                     "ppo/ratio_mean": 1.0}, abs=1e-9)
    _, metrics = policy_loss(logps, old, adv, mask, all_reduce=lambda s: s + t([0.0, 2.0]))
    assert metrics == pytest.approx({"loss/policy": 0.2, "ppo/clip_frac": 0.5, "ppo/approx_kl": kl / 2,
                                     "ppo/ratio_mean": 0.5}, abs=1e-9)


def test_value_metrics_and_default_cliprange():
    """Default c = 0.2; (v, v_old, R) = (1.0, 0.5, 1.0), (2.0, 0.5, 0.0):
        unclipped (v - R)^2 = [0, 4]; clipped (clip(v, 0.3, 0.7) - R)^2 = [0.09, 0.49]
        loss = 0.5 * (0.09 + 4) / 2 = 1.0225; value_clip_frac 1/2; value_error = mean unclipped = 2.0
    all_reduce adding (sum, count) = (0, 2): clip_frac 1/4, value_error 1.0; the loss is unchanged."""
    values, old, ret, mask = t([[1.0, 2.0]]), t([[0.5, 0.5]]), t([[1.0, 0.0]]), t([[1.0, 1.0]])
    loss, metrics = value_loss(values, old, ret, mask)
    assert metrics == pytest.approx({"loss/value": 1.0225, "ppo/value_clip_frac": 0.5, "ppo/value_error": 2.0},
                                    abs=1e-9)
    _, metrics = value_loss(values, old, ret, mask, all_reduce=lambda s: s + t([0.0, 2.0]))
    assert metrics == pytest.approx({"loss/value": 1.0225, "ppo/value_clip_frac": 0.25, "ppo/value_error": 1.0},
                                    abs=1e-9)


def test_ppo_loss_defaults_and_metric_keys():
    """Defaults eps = eps_v = 0.2, vf_coef = 0.1 on the two examples above (policy 0.2, value 1.0225):
    total = 0.2 + 0.1 * 1.0225 = 0.30225; all_reduce reaches both metric sets."""
    old = t([[-1.0, -1.0]])
    logps = old + t([[math.log(1.5), math.log(0.5)]])
    args = (logps, old, t([[1.0, 2.0]]), t([[0.5, 0.5]]), t([[1.0, -2.0]]), t([[1.0, 0.0]]), t([[1.0, 1.0]]))
    total, metrics = ppo_loss(*args)
    close(total, 0.30225)
    assert set(metrics) == {"loss/policy", "ppo/clip_frac", "ppo/approx_kl", "ppo/ratio_mean", "loss/value",
                            "ppo/value_clip_frac", "ppo/value_error", "loss/total"}
    assert metrics["loss/total"] == pytest.approx(0.30225, abs=1e-12)
    _, metrics = ppo_loss(*args, all_reduce=lambda s: s + t([0.0, 2.0]))
    assert (metrics["ppo/clip_frac"], metrics["ppo/value_clip_frac"]) == pytest.approx((0.5, 0.25), abs=1e-12)


def test_kl_controller_defaults():
    """Defaults: coefficient 0.2, target 6, horizon 10000. KL 6.6 -> error 0.1 -> x (1 + 0.1 * 100 / 10000)."""
    ctl = AdaptiveKLController()
    assert (ctl.value, ctl.target, ctl.horizon) == (0.2, 6.0, 10000.0)
    close(ctl.update(6.6, 100), 0.2 * 1.001, atol=1e-12)
    assert FixedKLController().update(3.0, 10) == 0.2


def test_running_moments_edges_and_state():
    """Fresh: mean 0, var 1, count 1e-24 (~0), std 1. An empty batch changes nothing and returns (0, 1).
    One score [4]: count 1e-24 + 1 = 1.0, mean 4, var (1 * 1e-24 + 0 + 16 * 1e-24) / 1 = 1.7e-23; the batch std of
    a single value is 0 and the running std stays 1 (count <= 1). Then [6, 8]: batch (7, sqrt(2));
    all = [4, 6, 8]: mean 6, population var 8/3, unbiased std sqrt(8/3 * 3/2) = 2."""
    m = RunningMoments()
    assert (m.mean, m.var, m.count, m.std) == (0.0, 1.0, 1e-24, 1.0)
    assert m.update([]) == (0.0, 1.0) and m.state_dict() == {"mean": 0.0, "var": 1.0, "count": 1e-24}
    assert m.update([4.0]) == (4.0, 0.0)
    assert m.state_dict() == pytest.approx({"mean": 4.0, "var": 1.7e-23, "count": 1.0}, rel=1e-12, abs=0)
    assert m.std == 1.0
    batch_mean, batch_std = m.update(t([6.0, 8.0]))
    assert (batch_mean, batch_std) == pytest.approx((7.0, math.sqrt(2.0)), abs=1e-12)
    assert m.state_dict() == pytest.approx({"mean": 6.0, "var": 8.0 / 3.0, "count": 3.0}, abs=1e-12)
    assert m.std == pytest.approx(2.0, abs=1e-12)


def test_score_scaling_adds_float32_eps_to_the_std():
    """[1, 2, 3] on fresh moments: mean 2, std 1, factor = 1 + 2^-23 (float32 eps):
    normalised (x - 2) / (1 + 2^-23), scaled x / (1 + 2^-23)."""
    factor = 1.0 + 2.0 ** -23
    close(scale_scores(t([1.0, 2.0, 3.0]), RunningMoments(), normalise=True), [-1 / factor, 0.0, 1 / factor], atol=1e-12)
    close(scale_scores(t([1.0, 2.0, 3.0]), RunningMoments(), normalise=False),
          [1 / factor, 2 / factor, 3 / factor], atol=1e-12)


def test_gae_of_one_token_responses():
    """T = 1: the only token bootstraps from nothing. Rewards [[2], [-1]], values [[0.5], [0.25]]:
    A = r - V = [1.5, -1.25], returns = A + V = r."""
    adv, ret = gae(t([[2.0], [-1.0]]), t([[0.5], [0.25]]), t([[1.0], [1.0]]))
    close(adv, [[1.5], [-1.25]])
    close(ret, [[2.0], [-1.0]])


def test_kl_penalty_error_message_and_scores_of_another_dtype():
    """A row without real tokens (here the second) is refused with its exact message; float64 scores land on
    float32 rewards (cast, no error)."""
    zeros = t([[0.0, 0.0], [0.0, 0.0]])
    with pytest.raises(ValueError, match="^every rollout needs at least one response token$"):
        kl_penalty_rewards(zeros, zeros, t([[1.0, 1.0], [0.0, 0.0]]), t([1.0, 1.0]), 0.2)
    f32 = torch.float32
    logps, ref = torch.tensor([[-1.0, -2.0]], dtype=f32), torch.tensor([[-1.5, -2.0]], dtype=f32)
    rewards, kl = kl_penalty_rewards(logps, ref, torch.tensor([[1.0, 1.0]], dtype=f32), t([3.0]), kl_coef=0.2)
    assert rewards.dtype == f32 and kl.dtype == f32
    close(rewards, [[-0.1, 3.0]])


def test_masked_whiten_of_a_constant_is_zero_and_uses_the_global_moments():
    """A constant row has variance 0: (x - mean) * rsqrt(0 + 1e-8) = 0 exactly (no nan). With an all_reduce
    that adds worker B's [4] to worker A's [1, 2, 3], A is whitened with the moments of [1, 2, 3, 4]."""
    assert masked_whiten(t([[2.0, 2.0, 2.0]]), t([[1.0, 1.0, 1.0]])).tolist() == [[0.0, 0.0, 0.0]]
    s = math.sqrt(5.0 / 3.0 + 1e-8)
    b_stats = t([4.0, 16.0, 1.0])
    out = masked_whiten(t([[1.0, 2.0, 3.0]]), t([[1.0, 1.0, 1.0]]), all_reduce=lambda x: x + b_stats)
    close(out, [[-1.5 / s, -0.5 / s, 0.5 / s]])


def test_policy_loss_gradient_ignores_garbage_at_padding():
    """-inf / nan in the padded slot of old or new log-probs: the loss is that of the real tokens and the
    gradient is finite, exactly 0 at the padded slot (the log ratio there is 0 before exp sees it)."""
    mask = t([[1.0, 0.0]])
    clean = policy_loss(t([[-1.0, -1.0]]), t([[-1.2, -1.0]]), t([[0.5, 0.0]]), mask)[0]
    logps = t([[-1.0, NAN]], grad=True)
    loss, _ = policy_loss(logps, t([[-1.2, -float("inf")]]), t([[0.5, 0.0]]), mask)
    close(loss, clean)
    (grad,) = torch.autograd.grad(loss, logps)
    assert torch.isfinite(grad).all() and grad[0, 1].item() == 0.0


def test_masked_mean_of_one_real_position_is_that_value():
    """One real position: sum 3.5 over a count of 1 (the clamp at 1 only guards an empty mask) -> 3.5."""
    assert masked_mean(t([[3.5, 100.0]]), t([[1.0, 0.0]])).item() == 3.5
