"""``train.alol``: the config section of the A-LoL family losses (``alol_ray.losses``).

Kept apart from the losses, which import torch only: ``alol_ray.config`` builds ``TrainConfig`` from it without
torch. Each loss declares which of these knobs it reads (``register_loss(..., knobs=...)``), and a run's
fingerprint holds only those (``alol_ray.train.methods.loss_params``): a change of ``kl_beta`` retrains
``a_lol_kl``, not ``a_lol``.
"""

from __future__ import annotations

from dataclasses import dataclass

from alol_ray.errors import ConfigError


@dataclass
class ALoLConfig:
    """Knobs of the A-LoL family losses (alol_ray.losses)."""

    clip: bool = True  # clamp the importance weight to [1 - clip_eps, 1 + clip_eps]; false: unclamped
    # the paper's HHA runs: 0.9 -> [0.1, 1.9]; 0 with clip: the weight is exactly 1 (the reference code's
    # eps 0 means no clamp at all: clip: false here)
    clip_eps: float = 0.9
    kl_beta: float = 0.1  # a_lol_kl: beta * (log pi_theta(y|x) - log pi_ref(y|x))
    r_gold_u: float = 0.1  # r_gold: lower bound u of the per-token weight max(u, pi_theta(y_t))

    def __post_init__(self) -> None:
        if not self.clip_eps >= 0:
            raise ConfigError(f"train.alol.clip_eps must be >= 0, got {self.clip_eps}")
        if not self.kl_beta >= 0:
            raise ConfigError(f"train.alol.kl_beta must be >= 0, got {self.kl_beta}")
        if not 0.0 <= self.r_gold_u <= 1.0:
            raise ConfigError(f"train.alol.r_gold_u must be in [0, 1], got {self.r_gold_u}")
