"""``train.gold``: GOLD's config section (``alol_ray.baselines.gold``, registered in ``alol_ray.baselines.methods``).

A gold run's fingerprint is the ``GOLDParams`` made from it (``Method.identity``); R-GOLD's ``u`` is
``train.alol.r_gold_u``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from alol_ray.errors import ConfigError


GOLD_REWARDS = ("delta", "s", "p")


@dataclass
class GOLDConfig:
    """GOLD (alol_ray.baselines.gold, Pang & He 2021)."""

    u: float = 0.1  # per-token weight max(u, pi~(y_t)) from the stale copy
    sync_every: int = 20  # updates between re-syncs of the stale copy
    reward: str = "s"  # per-token reward from p_MLE (= pi_ref): delta | s (p) | p (log p - b)
    lower_bound_b: float = -60.0  # GOLD-p: b, the lower bound of log p_MLE
    truncation_c: float = 0.1  # GOLD-s/-p: each per-token reward is truncated below at c
    horizon: Optional[int] = 5  # return over this many future tokens (null = to the end)

    def __post_init__(self) -> None:
        if self.reward not in GOLD_REWARDS:
            raise ConfigError(f"train.gold.reward must be one of {list(GOLD_REWARDS)}, got '{self.reward}'")
        if not 0.0 <= self.u <= 1.0:
            raise ConfigError(f"train.gold.u must be in [0, 1], got {self.u}")
        if self.sync_every < 1:
            raise ConfigError(f"train.gold.sync_every must be >= 1, got {self.sync_every}")
        if self.horizon is not None and self.horizon < 0:
            raise ConfigError(f"train.gold.horizon must be >= 0 or null, got {self.horizon}")
