"""``train.pro``: PRO's config section (``alol_ray.baselines.pro``, registered in ``alol_ray.baselines.methods``).

A pro run's fingerprint is the ``PROParams`` made from it (``Method.identity``).
"""

from __future__ import annotations

from dataclasses import dataclass

from alol_ray.errors import ConfigError


@dataclass
class PROConfig:
    """PRO (alol_ray.baselines.pro)."""

    sft_weight: float = 0.05  # times (n-1)^2 * NLL of the best response

    def __post_init__(self) -> None:
        if not self.sft_weight >= 0:
            raise ConfigError(f"train.pro.sft_weight must be >= 0, got {self.sft_weight}")
