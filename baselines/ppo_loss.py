"""PPO for language models (Schulman et al. 2017, arXiv 1707.06347; Ziegler et al. 2019, arXiv 1909.08593)
as pure functions of tensors, with the semantics of TRL 0.7.1 that the A-LoL paper's PPO baseline used.

Shapes: B = rollouts, T = response tokens (right-padded); ``mask`` [B, T] is 1.0 on real response tokens.

    per-token reward   r_t = -kl_coef * (log pi_old(y_t) - log pi_ref(y_t))   (+ score at the last real token)
    GAE                delta_t = r_t + gamma * V_{t+1} - V_t,   A_t = delta_t + gamma * lam * A_{t+1}
                       (V and A are 0 after the last real token); returns R_t = A_t + V_t
    whitening          A <- (A - mean(A)) / sqrt(var(A) + 1e-8) over the real tokens (unbiased var)
    policy loss        mean_t max(-A_t * rho_t, -A_t * clip(rho_t, 1 - eps, 1 + eps)),  rho = pi / pi_old
    value loss         0.5 * mean_t max((V_t - R_t)^2, (clip(V_t, V_old - eps_v, V_old + eps_v) - R_t)^2)
    KL coefficient     adaptive (Ziegler et al.): beta <- beta * (1 + clip(KL / target - 1, -0.2, 0.2) * n / horizon)

Means are over the real tokens of the batch. Every reduction takes an optional ``all_reduce`` (a
function that sums a tensor over data-parallel workers in place of returning it), so statistics such
as the whitening moments are those of the global batch, not of one worker's shard.

Imports torch only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch

AllReduce = Optional[Callable[[torch.Tensor], torch.Tensor]]  # sums a tensor over workers


def _sum(x: torch.Tensor, all_reduce: AllReduce) -> torch.Tensor:
    return all_reduce(x) if all_reduce is not None else x


def masked_mean(x: torch.Tensor, mask: torch.Tensor, all_reduce: AllReduce = None) -> torch.Tensor:
    """Mean of ``x`` over positions where ``mask`` > 0 (over all workers with ``all_reduce``)."""
    real = (mask > 0).to(x.dtype)
    stats = _sum(torch.stack([(torch.where(mask > 0, x, torch.zeros_like(x))).sum(), real.sum()]), all_reduce)
    return stats[0] / stats[1].clamp(min=1.0)


def masked_moments(x: torch.Tensor, mask: torch.Tensor, all_reduce: AllReduce = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, unbiased variance) of ``x`` over the real positions, detached."""
    x = x.detach()
    real = (mask > 0).to(x.dtype)
    xm = torch.where(mask > 0, x, torch.zeros_like(x))
    stats = _sum(torch.stack([xm.sum(), (xm * xm).sum(), real.sum()]), all_reduce)
    total, squares, n = stats[0], stats[1], stats[2]
    if float(n) < 2:
        raise ValueError(f"whitening needs at least 2 real tokens, got {int(n)}")
    mean = total / n
    var = (squares / n - mean * mean).clamp(min=0.0) * n / (n - 1)  # Bessel: TRL's masked_var(unbiased=True)
    return mean, var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True,
                  all_reduce: AllReduce = None) -> torch.Tensor:
    """``(x - mean) / sqrt(var + 1e-8)`` over the real positions (mean added back if not ``shift_mean``);
    0 at padding."""
    mean, var = masked_moments(x, mask, all_reduce)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        out = out + mean
    return torch.where(mask > 0, out, torch.zeros_like(out))


def kl_penalty_rewards(logps: torch.Tensor, ref_logps: torch.Tensor, mask: torch.Tensor, scores: torch.Tensor,
                       kl_coef: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards ``-kl_coef * (logps - ref_logps)`` with ``scores`` [B] added at each row's last real
    token; also returns the per-token KL estimate ``logps - ref_logps``. Both [B, T], 0 at padding."""
    kl = torch.where(mask > 0, logps.detach() - ref_logps.detach(), torch.zeros_like(logps))
    rewards = -kl_coef * kl
    lengths = (mask > 0).sum(-1)
    if bool((lengths == 0).any()):
        raise ValueError("every rollout needs at least one response token")
    last = lengths - 1  # right padding: the last real token
    rewards = rewards.scatter_add(1, last.unsqueeze(1), scores.detach().to(rewards.dtype).unsqueeze(1))
    return rewards, kl


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimates and returns, both [B, T] and 0 at padding.

    Values and rewards after a row's last real token count as 0, so the last real token bootstraps from
    nothing (the episode ends there). ``returns = advantages + values`` (before whitening).
    """
    real = (mask > 0).to(values.dtype)
    values = values.detach() * real
    rewards = rewards.detach() * real
    advantages = torch.zeros_like(values)
    last = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        next_value = values[:, t + 1] if t + 1 < values.shape[1] else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = delta + gamma * lam * last
        advantages[:, t] = last
    advantages = advantages * real
    return advantages, (advantages + values) * real


def policy_loss(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                cliprange: float = 0.2, all_reduce: AllReduce = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped surrogate ``mean_t max(-A rho, -A clip(rho, 1-eps, 1+eps))``; ``logps`` carry the gradient."""
    log_ratio = torch.where(mask > 0, logps - old_logps.detach(), torch.zeros_like(logps))
    ratio = torch.exp(log_ratio)
    advantages = advantages.detach()
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        metrics = {
            "loss/policy": float(loss.detach()),
            "ppo/clip_frac": float(masked_mean((clipped > unclipped).to(logps.dtype), mask, all_reduce)),
            "ppo/approx_kl": float(masked_mean(0.5 * log_ratio * log_ratio, mask, all_reduce)),
            "ppo/ratio_mean": float(masked_mean(ratio, mask, all_reduce)),
        }
    return loss, metrics


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               cliprange_value: float = 0.2, all_reduce: AllReduce = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped value loss ``0.5 * mean_t max((V - R)^2, (clip(V, V_old - c, V_old + c) - R)^2)``."""
    old_values, returns = old_values.detach(), returns.detach()
    clipped_values = torch.clamp(values, old_values - cliprange_value, old_values + cliprange_value)
    unclipped_loss = (values - returns) ** 2
    clipped_loss = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped_loss, clipped_loss), mask)
    with torch.no_grad():
        metrics = {
            "loss/value": float(loss.detach()),
            "ppo/value_clip_frac": float(masked_mean((clipped_loss > unclipped_loss).to(values.dtype), mask, all_reduce)),
            "ppo/value_error": float(masked_mean(unclipped_loss, mask, all_reduce)),
        }
    return loss, metrics


def ppo_loss(logps: torch.Tensor, old_logps: torch.Tensor, values: torch.Tensor, old_values: torch.Tensor,
             advantages: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, *, cliprange: float = 0.2,
             cliprange_value: float = 0.2, vf_coef: float = 0.1,
             all_reduce: AllReduce = None) -> tuple[torch.Tensor, dict[str, float]]:
    """``policy_loss + vf_coef * value_loss`` and both losses' metrics (``loss/total`` added)."""
    pg, pg_metrics = policy_loss(logps, old_logps, advantages, mask, cliprange, all_reduce)
    vf, vf_metrics = value_loss(values, old_values, returns, mask, cliprange_value, all_reduce)
    loss = pg + vf_coef * vf
    return loss, {**pg_metrics, **vf_metrics, "loss/total": float(loss.detach())}


# ------------------------------------------------------------------------------------- controllers


@dataclass
class AdaptiveKLController:
    """Ziegler et al. (2019) eq. 2: keeps the measured KL near ``target`` by scaling the coefficient by
    ``1 + clip(KL / target - 1, -0.2, 0.2) * n_steps / horizon`` after each rollout of ``n_steps`` rows."""

    value: float = 0.2
    target: float = 6.0
    horizon: float = 10000.0

    def update(self, current_kl: float, n_steps: int) -> float:
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon
        return self.value


@dataclass
class FixedKLController:
    value: float = 0.2

    def update(self, current_kl: float, n_steps: int) -> float:
        return self.value


@dataclass
class RunningMoments:
    """Running mean and (unbiased) std of every score seen so far (TRL's score scaling/normalisation):
    batches are merged with the parallel-variance formula (Chan et al.)."""

    mean: float = 0.0
    var: float = 1.0  # population variance of all values seen
    count: float = 1e-24

    def update(self, values) -> tuple[float, float]:
        """Merge a batch; returns that batch's (mean, unbiased std)."""
        x = torch.as_tensor(values, dtype=torch.float64).flatten()
        n = float(x.numel())
        if n == 0:
            return self.mean, self.std
        batch_mean = float(x.mean())
        batch_var = float(((x - batch_mean) ** 2).mean())
        delta = batch_mean - self.mean
        total = self.count + n
        self.var = (self.var * self.count + batch_var * n + delta * delta * self.count * n / total) / total
        self.mean += delta * n / total
        self.count = total
        return batch_mean, math.sqrt(batch_var * n / (n - 1)) if n > 1 else 0.0

    @property
    def std(self) -> float:
        """Unbiased std of all values seen."""
        return math.sqrt(self.var * self.count / (self.count - 1)) if self.count > 1 else 1.0

    def state_dict(self) -> dict:
        return {"mean": self.mean, "var": self.var, "count": self.count}


def scale_scores(scores: torch.Tensor, moments: Optional[RunningMoments], normalise: bool) -> torch.Tensor:
    """TRL's ``use_score_scaling`` (divide by the running std) and ``use_score_norm`` (also subtract the
    running mean); ``moments`` None leaves the scores as they are. The batch is merged first."""
    if moments is None:
        return scores
    moments.update(scores)
    factor = moments.std + torch.finfo(torch.float32).eps
    return (scores - moments.mean) / factor if normalise else scores / factor
