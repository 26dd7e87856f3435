"""``train.dpo``: DPO's config section (``alol_ray.baselines.dpo``, registered in ``alol_ray.baselines.methods``).

A dpo run's fingerprint is the ``DPOParams`` made from it (``Method.identity``): a change here retrains dpo
only. Kept apart from the loss, which imports torch only.
"""

from __future__ import annotations

from dataclasses import dataclass

from alol_ray.errors import ConfigError


DPO_LOSS_TYPES = ("sigmoid", "ipo")  # alol_ray.baselines.dpo.LOSS_TYPES (config imports no torch)


@dataclass
class DPOConfig:
    """DPO (alol_ray.baselines.dpo)."""

    beta: float = 0.1  # the implicit reward's temperature; IPO's tau for loss_type ipo
    reference_free: bool = False  # drop the reference term (then the table needs no reference log-probs)
    # sigmoid: DPO's -log sigmoid(beta * margin); ipo: IPO's (margin / |y| - 1 / (2 beta))^2, as TRL computes it
    loss_type: str = "sigmoid"

    def __post_init__(self) -> None:
        if not self.beta > 0:
            raise ConfigError(f"train.dpo.beta must be > 0, got {self.beta}")
        if self.loss_type not in DPO_LOSS_TYPES:
            raise ConfigError(f"train.dpo.loss_type must be one of {list(DPO_LOSS_TYPES)}, got '{self.loss_type}'")
