"""``train.pro``: PRO's config section (``alol_ray.baselines.pro``, registered in ``alol_ray.baselines.methods``).

A pro run's fingerprint is the ``PROParams`` made from it (``Method.identity``).
"""

from __future__ import annotations

from dataclasses import dataclass

from alol_ray.config_fields import bounded, check_fields


@dataclass
class PROConfig:
    """PRO (alol_ray.baselines.pro)."""

    sft_weight: float = bounded(0.05, ge=0)  # times (n-1)^2 * NLL of the best response

    def __post_init__(self) -> None:
        check_fields(self, "train.pro")
