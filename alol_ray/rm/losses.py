"""Reward-model losses: pure functions of tensors returning (loss, metrics). torch only.

    regression: distil an existing reward  L = mean_i (r_i - y_i)^2
    pairwise:   Bradley-Terry on preference pairs (Christiano et al. 2017; Ouyang et al. 2022, eq. 1)
                L = mean_k -log sigmoid(r_chosen_k - r_rejected_k),  chosen = the lower rank of one prompt
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F


def regression_loss(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """MSE. pred, target: [B] (target already z-scored when the trainer standardises)."""
    loss = F.mse_loss(pred, target)
    return loss, {"loss/mse": float(loss.detach())}


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """-log sigmoid(r_chosen - r_rejected), averaged over pairs. r_chosen, r_rejected: [P].

    softplus(-d) == -log sigmoid(d) without overflow for large |d|.
    """
    margin = r_chosen - r_rejected
    loss = F.softplus(-margin).mean()
    with torch.no_grad():
        acc = (margin > 0).float().mean() + 0.5 * (margin == 0).float().mean()
    return loss, {"loss/bt": float(loss.detach()), "pairs/accuracy": float(acc), "pairs/margin": float(margin.detach().mean())}


LOSSES: dict[str, Callable] = {"regression": regression_loss, "pairwise": bradley_terry_loss}
