"""``train.dpo``: DPO's config section (``alol_ray.baselines.dpo``, registered in ``alol_ray.baselines.methods``).

A dpo run's fingerprint is the ``DPOParams`` made from it (``Method.identity``): a change here retrains dpo
only. Kept apart from the loss, which imports torch only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from alol_ray.config_fields import bounded, check_fields

DPOLossType = Literal["sigmoid", "ipo"]
DPO_LOSS_TYPES = get_args(DPOLossType)  # alol_ray.baselines.dpo.LOSS_TYPES (config imports no torch)


@dataclass
class DPOConfig:
    """DPO (alol_ray.baselines.dpo)."""

    beta: float = bounded(0.1, gt=0)  # the implicit reward's temperature; IPO's tau for loss_type ipo
    reference_free: bool = False  # drop the reference term (then the table needs no reference log-probs)
    # sigmoid: DPO's -log sigmoid(beta * margin); ipo: IPO's (margin / |y| - 1 / (2 beta))^2, as TRL computes it
    loss_type: DPOLossType = "sigmoid"

    def __post_init__(self) -> None:
        check_fields(self, "train.dpo")
