"""``train.gold``: GOLD's config section (``alol_ray.baselines.gold``, registered in ``alol_ray.baselines.methods``).

A gold run's fingerprint is the ``GOLDParams`` made from it (``Method.identity``); R-GOLD's ``u`` is
``train.alol.r_gold_u``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from alol_ray.config_fields import bounded, check_fields

GOLDReward = Literal["delta", "s", "p"]


@dataclass
class GOLDConfig:
    """GOLD (alol_ray.baselines.gold, Pang & He 2021)."""

    u: float = bounded(0.1, ge=0, le=1)  # per-token weight max(u, pi~(y_t)) from the stale copy
    sync_every: int = bounded(20, ge=1)  # updates between re-syncs of the stale copy
    reward: GOLDReward = "s"  # per-token reward from p_MLE (= pi_ref): delta | s (p) | p (log p - b)
    lower_bound_b: float = -60.0  # GOLD-p: b, the lower bound of log p_MLE
    truncation_c: float = 0.1  # GOLD-s/-p: each per-token reward is truncated below at c
    horizon: Optional[int] = bounded(5, ge=0)  # return over this many future tokens (null = to the end)

    def __post_init__(self) -> None:
        check_fields(self, "train.gold")
