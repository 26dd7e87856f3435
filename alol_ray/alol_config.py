"""``train.alol``: the config section of the A-LoL family losses (``alol_ray.losses``).

Kept apart from the losses, which import torch only: ``alol_ray.config`` builds ``TrainConfig`` from it without
torch. Each loss declares which of these knobs it reads (``register_loss(..., knobs=...)``), and a run's
fingerprint holds only those (``alol_ray.train.methods.loss_params``): a change of ``kl_beta`` retrains
``a_lol_kl``, not ``a_lol``.
"""

from __future__ import annotations

from dataclasses import dataclass

from alol_ray.config_fields import bounded, check_fields


@dataclass
class ALoLConfig:
    """Knobs of the A-LoL family losses (alol_ray.losses)."""

    clip: bool = True  # clamp the importance weight to [1 - clip_eps, 1 + clip_eps]; false: unclamped
    # the paper's HHA runs: 0.9 -> [0.1, 1.9]; 0 with clip: the weight is exactly 1 (the reference code's
    # eps 0 means no clamp at all: clip: false here)
    clip_eps: float = bounded(0.9, ge=0)
    kl_beta: float = bounded(0.1, ge=0)  # a_lol_kl: beta * (log pi_theta(y|x) - log pi_ref(y|x))
    r_gold_u: float = bounded(0.1, ge=0, le=1)  # r_gold: lower bound u of the per-token weight max(u, pi_theta(y_t))

    def __post_init__(self) -> None:
        check_fields(self, "train.alol")
