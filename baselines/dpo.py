"""Direct Preference Optimization loss (Rafailov et al., NeurIPS 2023, arXiv 2305.18290), a pure function.

Eq. 7 of the paper:

    L_DPO = -E[ log sigmoid( beta * ( (log pi(y_w|x) - log pi(y_l|x)) - (log pi_ref(y_w|x) - log pi_ref(y_l|x)) ) ) ]

Sequence log-probs are sums over the response tokens including the appended EOS, padding excluded (as in
LoL-RL's DPO baseline, beta = 0.1). ``reference_free`` drops the reference term (pi_ref uniform).

``loss_type="ipo"`` is IPO (Azar et al., AISTATS 2024, arXiv 2310.12036), Eq. 17 with beta as its tau:

    L_IPO = E[ ( h - 1 / (2 * beta) )^2 ],
    h = (log pi(y_w|x) - log pi_ref(y_w|x)) / |y_w| - (log pi(y_l|x) - log pi_ref(y_l|x)) / |y_l|

with each log-ratio divided by its response's token count |y| (EOS included): the normalisation TRL's
``DPOTrainer(loss_type="ipo")`` uses, which its authors confirmed with IPO's authors; without it the
squared loss grows with the response length.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from alol_ray.losses import compute_dtype, sequence_logps

LOSS_TYPES = ("sigmoid", "ipo")


def _reference_sequence_logps(ref: torch.Tensor, mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reference log pi_ref(y|x) as [B]: token log-probs [B, T] are summed over ``mask``; [B] passes through."""
    if ref.dim() == 1:
        return compute_dtype(ref.detach()).to(like.dtype)
    return sequence_logps(ref.detach(), mask).to(like.dtype)


def dpo_loss(
    chosen_logps: torch.Tensor,
    chosen_mask: torch.Tensor,
    rejected_logps: torch.Tensor,
    rejected_mask: torch.Tensor,
    ref_chosen_logps: torch.Tensor | None,
    ref_rejected_logps: torch.Tensor | None,
    beta: float = 0.1,
    reference_free: bool = False,
    loss_type: str = "sigmoid",
) -> tuple[torch.Tensor, dict[str, float]]:
    """Batch-mean DPO (or IPO) loss and its metrics.

    Args:
        chosen_logps: [B, Tw] policy per-token log-probs of the preferred response y_w (grad flows).
        chosen_mask: [B, Tw] 1.0 for real tokens (incl. EOS), 0.0 for padding.
        rejected_logps: [B, Tl] policy per-token log-probs of the dispreferred response y_l.
        rejected_mask: [B, Tl].
        ref_chosen_logps: reference log-probs of y_w, per token [B, Tw] (summed over ``chosen_mask``) or
            already summed [B] (the scored table's ``ref_logp``). Ignored (may be None) if reference_free.
        ref_rejected_logps: same for y_l.
        beta: temperature of the implicit reward beta * log(pi / pi_ref).
        reference_free: use 0 for the reference log-ratio.
        loss_type: "sigmoid" (DPO, Eq. 7) or "ipo" (IPO, Eq. 17 on token-count-normalised log-ratios, see the
            module docstring).

    Returns:
        (loss, metrics): metrics "loss/policy", "reward/chosen", "reward/rejected", "reward/margin" (batch
        means of the implicit rewards beta * (log pi - log pi_ref) and of their difference) and
        "reward/accuracy" (fraction of pairs with chosen reward > rejected reward).
    """
    policy_chosen = sequence_logps(chosen_logps, chosen_mask)
    policy_rejected = sequence_logps(rejected_logps, rejected_mask)
    if reference_free:
        ref_chosen = torch.zeros_like(policy_chosen)
        ref_rejected = torch.zeros_like(policy_rejected)
    else:
        if ref_chosen_logps is None or ref_rejected_logps is None:
            raise ValueError("dpo_loss needs ref_chosen_logps and ref_rejected_logps unless reference_free=True")
        ref_chosen = _reference_sequence_logps(ref_chosen_logps, chosen_mask, policy_chosen)
        ref_rejected = _reference_sequence_logps(ref_rejected_logps, rejected_mask, policy_rejected)

    if loss_type == "sigmoid":
        logits = beta * ((policy_chosen - policy_rejected) - (ref_chosen - ref_rejected))
        loss = -F.logsigmoid(logits).mean()
    elif loss_type == "ipo":
        chosen_tokens = chosen_mask.sum(dim=-1).clamp(min=1.0).to(policy_chosen.dtype)
        rejected_tokens = rejected_mask.sum(dim=-1).clamp(min=1.0).to(policy_rejected.dtype)
        h = (policy_chosen - ref_chosen) / chosen_tokens - (policy_rejected - ref_rejected) / rejected_tokens
        loss = ((h - 1.0 / (2.0 * beta)) ** 2).mean()
    else:
        raise ValueError(f"dpo_loss: loss_type must be one of {list(LOSS_TYPES)}, got {loss_type!r}")

    with torch.no_grad():
        reward_chosen = beta * (policy_chosen - ref_chosen)
        reward_rejected = beta * (policy_rejected - ref_rejected)
        metrics = {
            "loss/policy": loss.item(),
            "reward/chosen": reward_chosen.mean().item(),
            "reward/rejected": reward_rejected.mean().item(),
            "reward/margin": (reward_chosen - reward_rejected).mean().item(),
            "reward/accuracy": (reward_chosen > reward_rejected).float().mean().item(),
        }
    return loss, metrics
