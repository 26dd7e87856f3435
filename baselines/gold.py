"""GOLD loss (Pang & He, "Text Generation by Learning from Demonstrations", ICLR 2021, arXiv 2009.07839).

GOLD treats the demonstrations as off-policy trajectories and follows the importance-weighted policy
gradient, one weight per token, both factors detached:

    loss = sum_t  b1_t * b2_t * NLL_t
    b1_t = clamp(pi~(y_t | x, y_<t), u, 1)            pi~ = a stale copy of pi, re-synced every k updates
    b2_t = Q^(s_t, y_t) = sum_{t' >= t} gamma^(t'-t) r_t'   (over at most ``horizon`` future tokens)

with per-token rewards from the frozen MLE model p_MLE (here: the reference model whose token log-probs
the scored table holds):

    GOLD-delta:  b2_t = 1 (every demonstration token is rewarded; the loss is the b1-weighted NLL)
    GOLD-s:      r_t = max(p_MLE(y_t), c)
    GOLD-p:      r_t = max(log p_MLE(y_t) - b, c)   b = lower bound of log p_MLE, so r_t >= 0 mostly

``c`` truncates each reward from below (the authors' ``trunc_min``, 0.1) so b2 stays positive; their
scripts use b = -60 for GOLD-p and a 5-token future horizon. Tokens past the end of a response give no
reward. LoL-RL's ``r_gold`` (alol_ray.losses) keeps b1 and replaces b2 by the sequence reward; both share
``gold_token_weight``.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from alol_ray.losses import compute_dtype, gold_token_weight, masked_logps

REWARD_KINDS = ("delta", "s", "p")


def token_returns(rewards: torch.Tensor, gamma: float = 1.0, horizon: int | None = None) -> torch.Tensor:
    """[B, T] per-token rewards -> [B, T] returns ``sum_{t'=t}^{t+horizon} gamma^(t'-t) r_t'``.

    ``horizon`` None means up to the end of the sequence; padded positions must already hold 0. Computed
    as one matmul with an upper-triangular discount matrix (T is a response length, so T^2 is small).
    """
    length = rewards.shape[-1]
    steps = torch.arange(length, device=rewards.device)
    offset = steps[None, :] - steps[:, None]  # offset[t, t'] = t' - t
    in_window = offset >= 0
    if horizon is not None:
        in_window &= offset <= horizon
    discount = torch.where(
        in_window,
        torch.full((length, length), gamma, dtype=rewards.dtype, device=rewards.device) ** offset.clamp(min=0),
        torch.zeros((), dtype=rewards.dtype, device=rewards.device),
    )
    return rewards @ discount.T


def gold_loss(
    logps: torch.Tensor,
    mask: torch.Tensor,
    stale_logps: torch.Tensor | None,
    mle_logps: torch.Tensor | None = None,
    u: float = 0.1,
    reward_kind: str = "s",
    lower_bound_b: float = -60.0,
    truncation_c: float = 0.1,
    gamma: float = 1.0,
    horizon: int | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Batch mean over examples of ``sum_t b1_t * b2_t * NLL_t``.

    Args:
        logps: [B, T] current policy per-token log-probs of the demonstration tokens (incl. EOS); grad flows.
        mask: [B, T] 1.0 for real tokens, 0.0 for padding.
        stale_logps: [B, T] log-probs under the stale copy pi~ (see StaleCopySync); None -> current, detached.
        mle_logps: [B, T] log-probs under the frozen MLE model p_MLE; needed unless reward_kind = "delta".
        u: lower bound of b1 (the paper tries 0.1, 0.15, 0.2).
        reward_kind: "delta", "s" or "p" (see the module docstring).
        lower_bound_b: b of GOLD-p.
        truncation_c: c, the lower truncation of every per-token reward of GOLD-s / GOLD-p.
        gamma: discount of the return b2.
        horizon: how many future tokens b2 looks at beyond t (None: to the end of the response).

    Returns:
        (loss, metrics): "loss/policy", "nll/seq_mean", "gold_weight/mean" (b1 over real tokens) and
        "gold_return/mean" (b2 over real tokens).
    """
    if reward_kind not in REWARD_KINDS:
        raise ValueError(f"reward_kind must be one of {REWARD_KINDS}, got {reward_kind!r}")
    if logps.dim() != 2 or mask.shape != logps.shape:
        raise ValueError(f"logps and mask must both be [B, T]; got {tuple(logps.shape)} and {tuple(mask.shape)}")
    if horizon is not None and horizon < 0:
        raise ValueError(f"horizon must be >= 0 or None, got {horizon}")
    real = mask > 0
    lp = masked_logps(logps, mask)
    b1 = gold_token_weight(logps if stale_logps is None else stale_logps, u, mask).to(lp.dtype)

    if reward_kind == "delta":
        b2 = real.to(lp.dtype)
    else:
        if mle_logps is None:
            raise ValueError(f"GOLD-{reward_kind} needs mle_logps (per-token log-probs of the MLE model)")
        mle = masked_logps(compute_dtype(mle_logps.detach()), mask).to(lp.dtype).clamp(max=0.0)
        reward = torch.exp(mle) if reward_kind == "s" else mle - lower_bound_b
        reward = torch.where(real, reward.clamp(min=truncation_c), torch.zeros_like(reward))
        b2 = token_returns(reward, gamma, horizon)

    per_example = (b1 * b2 * -lp).sum(-1)
    loss = per_example.mean()
    with torch.no_grad():
        metrics = {
            "loss/policy": loss.item(),
            "nll/seq_mean": (-lp.sum(-1)).mean().item(),
            "gold_weight/mean": b1[real].mean().item(),
            "gold_return/mean": b2[real].mean().item(),
        }
    return loss, metrics


class StaleCopySync:
    """GOLD's pi~: a frozen copy of the policy whose weights are re-copied every ``every`` updates.

    The stale copy keeps b1 from chasing the parameters it weights (Pang & He 2021, Algorithm 1; like
    the target network of deep Q-learning). Pure torch: the training loop computes ``stale_logps`` with
    ``self.module`` under ``torch.no_grad()`` and calls ``maybe_sync(step)`` after each optimizer step.
    """

    def __init__(self, source: nn.Module, every: int):
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.source = source
        self.every = every
        self.module = copy.deepcopy(source)
        self.module.requires_grad_(False)
        self.module.eval()
        self.synced_at = 0  # the optimizer step at which the copy was last taken

    def maybe_sync(self, step: int) -> bool:
        """Re-copy the source weights if ``every`` steps have passed since the last copy; True if it did."""
        if step - self.synced_at < self.every:
            return False
        self.sync(step)
        return True

    @torch.no_grad()
    def sync(self, step: int) -> None:
        """Copy the source weights into the stale module now."""
        self.module.load_state_dict(self.source.state_dict())
        self.synced_at = step
