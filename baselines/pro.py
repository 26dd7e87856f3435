"""Preference Ranking Optimization loss (Song et al., AAAI 2024, arXiv 2306.17492), a pure function.

PRO extends the Bradley-Terry pairwise comparison to a ranking of n responses y^0 > y^1 > ... > y^{n-1}, with
the reward differences as temperatures (as in the PRO and LoL-RL code). With s_i the length-normalised
log-likelihood of y^i and r_i its reward, for each rank k = 0 .. n-2 (0-based, best first):

    T_kj  = r_k - r_j                 for j > k
    T_k+  = max_{j > k} T_kj
    L_k   = log( 1e-10 + exp(s_k * T_k+) + sum_{j > k} exp(s_j * T_kj) ) - s_k * T_k+

    loss  = sum_k L_k  +  sft_weight * (n - 1)^2 * NLL_seq(y^0)

L_k is a softmax cross-entropy picking y^k out of {y^k, ..., y^{n-1}}, with the 1e-10 of the LoL-RL / PRO
code inside the log. It is computed as a logsumexp that includes log(1e-10), which equals the formula
exactly and does not overflow. Rewards are the raw reward-model logits.
"""

from __future__ import annotations

import math

import torch

from alol_ray.losses import masked_logps

_LOG_EPS = math.log(1e-10)  # the 1e-10 inside PRO's log, moved into the logsumexp


def pro_loss(
    token_logps: torch.Tensor,
    mask: torch.Tensor,
    rewards: torch.Tensor,
    sft_weight: float = 0.05,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Batch-mean PRO loss over groups of n ranked responses.

    Args:
        token_logps: [B, n, T] policy per-token log-probs of each response (incl. EOS); grad flows.
            Responses are ordered best first: index 0 is rank 0 (the SFT target).
        mask: [B, n, T] 1.0 for real tokens, 0.0 for padding. Every response must have >= 1 real token.
        rewards: [B, n] rewards of the responses (raw RM logits), in the same order.
        sft_weight: weight of the NLL term on the best response; it is scaled by (n - 1)^2 as in PRO.

    n is fixed per batch: the caller builds groups with the same number of responses (PRO's setting,
    n = 2 for HH pairs). Per-group terms are averaged over the batch.

    Returns:
        (loss, metrics): "loss/policy" (total), "loss/rank" (mean sum_k L_k), "loss/sft" (mean weighted
        NLL term), "nll/seq_mean" (mean NLL_seq of the best response) and "rank/top1_accuracy"
        (fraction of groups whose best response has the highest s).
    """
    if token_logps.dim() != 3 or mask.shape != token_logps.shape:
        raise ValueError(f"token_logps and mask must be [B, n, T]; got {tuple(token_logps.shape)}, {tuple(mask.shape)}")
    batch, n, _ = token_logps.shape
    if rewards.shape != (batch, n):
        raise ValueError(f"rewards must be [B, n] = {(batch, n)}, got {tuple(rewards.shape)}")
    if n < 2:
        raise ValueError(f"PRO needs at least 2 responses per group, got n = {n}")
    lengths = (mask > 0).sum(-1)
    if bool((lengths == 0).any()):
        raise ValueError("every response in a PRO group needs at least one real token (mask row all zero)")

    lp = masked_logps(token_logps, mask)
    seq_logps = lp.sum(-1)  # [B, n]
    scores = seq_logps / lengths.to(lp.dtype)  # s_i, length-normalised
    rewards = rewards.detach().to(lp.dtype)

    rank_loss = torch.zeros(batch, dtype=lp.dtype, device=lp.device)
    log_eps = torch.full((batch, 1), _LOG_EPS, dtype=lp.dtype, device=lp.device)
    for k in range(n - 1):
        temperatures = rewards[:, k : k + 1] - rewards[:, k + 1 :]  # T_kj, j > k: [B, n-k-1]
        top_temperature = temperatures.max(dim=-1, keepdim=True).values  # T_k+
        positive_logit = scores[:, k : k + 1] * top_temperature
        negative_logits = scores[:, k + 1 :] * temperatures
        all_logits = torch.cat([log_eps, positive_logit, negative_logits], dim=-1)
        rank_loss = rank_loss + torch.logsumexp(all_logits, dim=-1) - positive_logit.squeeze(-1)

    best_nll = -seq_logps[:, 0]
    sft_loss = sft_weight * (n - 1) ** 2 * best_nll
    loss = (rank_loss + sft_loss).mean()

    with torch.no_grad():
        metrics = {
            "loss/policy": loss.item(),
            "loss/rank": rank_loss.mean().item(),
            "loss/sft": sft_loss.mean().item(),
            "nll/seq_mean": best_nll.mean().item(),
            "rank/top1_accuracy": (scores.argmax(dim=-1) == 0).float().mean().item(),
        }
    return loss, metrics
