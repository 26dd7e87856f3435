"""Which training units each optimizer step draws: samplers by name, seeded, resumable and sharded.

A *unit* is what a method trains on at once: a row (A-LoL family), a preference pair or a ranked list
(later baselines). Samplers only see one number per unit:

- ``good_priority``: with replacement, p proportional to the positive advantage A+ (A-LoL's priority
  sampling; rows with A <= 0 are never drawn), or to the reward for wbc / r_gold / r_lol.
- ``good_random``: uniform over the units with positive advantage, shuffled epoch by epoch.
- ``uniform``: every unit, shuffled epoch by epoch.
- ``auto``: ``good_priority`` for methods whose loss is weighted by advantage or reward, else ``uniform``.

Every draw is a pure function of ``(seed, step)``: resuming at step s draws exactly what an
uninterrupted run draws, so a sampler's checkpoint state is just its identity (name, seed, batch size
and a digest of the weights, checked on resume). A step's *global* batch is drawn once and each worker
takes its contiguous slice, so 2 workers x 4 units see the same 8 units as 1 worker x 8.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

SAMPLERS = ("good_priority", "good_random", "uniform")

# Separate random streams for with-replacement draws (per step) and epoch permutations (per epoch).
_STEP_STREAM, _EPOCH_STREAM = 0, 1


def resolve_sampler(name: str, sample_weight: str) -> str:
    """The concrete sampler for a config value; ``auto`` follows the method's sample weight."""
    if name == "auto":
        return "uniform" if sample_weight == "none" else "good_priority"
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler '{name}'; expected auto or one of {list(SAMPLERS)}")
    return name


def needs_advantage(name: str, sample_weight: str) -> bool:
    """True when the sampler ``name`` (for a method with ``sample_weight``) draws by the advantage column:
    ``good_random``, and ``good_priority`` unless the method is weighted by reward (then it draws by reward)."""
    name = resolve_sampler(name, sample_weight)
    return name == "good_random" or (name == "good_priority" and sample_weight != "reward")


def positive_fraction(advantage: np.ndarray) -> float:
    """Fraction of units with A > 0: the paper scales the step budget of the A-LoL family by it."""
    advantage = np.asarray(advantage, dtype=np.float64)
    return float((advantage > 0).mean()) if advantage.size else 0.0


def scaled_steps(steps: int, fraction: float) -> int:
    """``steps * fraction`` rounded, at least 1."""
    return max(1, int(round(steps * fraction)))


@dataclass
class Sampler:
    """Draws unit indices for each optimizer step.

    ``weights`` [n_units]: with replacement (``replacement=True``), the unnormalised probabilities; else
    the units with weight > 0 form the support that is shuffled epoch by epoch.
    """

    name: str
    weights: np.ndarray
    batch_size: int  # global: units per optimizer step over all workers
    seed: int
    replacement: bool
    _support: np.ndarray = field(init=False, repr=False)
    _probs: np.ndarray = field(init=False, repr=False)
    _perm_cache: dict = field(init=False, repr=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.weights = np.asarray(self.weights, dtype=np.float64)
        if self.batch_size < 1:
            raise ValueError("sampler batch_size must be >= 1")
        if not np.all(np.isfinite(self.weights)) or np.any(self.weights < 0):
            raise ValueError(f"sampler '{self.name}': weights must be finite and >= 0")
        self._support = np.flatnonzero(self.weights > 0)
        if self._support.size == 0:
            raise ValueError(f"sampler '{self.name}': no unit has a positive weight (nothing to train on)")
        scaled = self.weights / self.weights.max()  # max first: a sum of huge weights must not overflow
        self._probs = scaled / scaled.sum()

    @property
    def n_units(self) -> int:
        return int(self.weights.size)

    @property
    def support_size(self) -> int:
        """Units that can be drawn at all."""
        return int(self._support.size)

    def global_batch(self, step: int) -> np.ndarray:
        """Indices of the ``batch_size`` units of optimizer step ``step`` (all workers together)."""
        if self.replacement:
            rng = np.random.default_rng([self.seed, _STEP_STREAM, step])
            return rng.choice(self.n_units, size=self.batch_size, replace=True, p=self._probs)
        positions = np.arange(step * self.batch_size, (step + 1) * self.batch_size)
        m = self._support.size
        out = np.empty(self.batch_size, dtype=np.int64)
        for epoch in np.unique(positions // m):
            sel = positions // m == epoch
            out[sel] = self._permutation(int(epoch))[positions[sel] % m]
        return out

    def shard(self, step: int, rank: int, world_size: int) -> np.ndarray:
        """This worker's contiguous slice of the step's global batch."""
        if self.batch_size % world_size:
            raise ValueError(f"batch_size {self.batch_size} is not divisible by {world_size} workers")
        per = self.batch_size // world_size
        return self.global_batch(step)[rank * per:(rank + 1) * per]

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._perm_cache:
            rng = np.random.default_rng([self.seed, _EPOCH_STREAM, epoch])
            self._perm_cache = {epoch: self._support[rng.permutation(self._support.size)]}  # keep one epoch
        return self._perm_cache[epoch]

    def digest(self) -> str:
        return hashlib.sha256(np.ascontiguousarray(self.weights).tobytes()).hexdigest()[:16]

    def state_dict(self) -> dict:
        """What a checkpoint records; the position is the step, stored next to it."""
        return {"name": self.name, "seed": self.seed, "batch_size": self.batch_size,
                "replacement": self.replacement, "n_units": self.n_units, "digest": self.digest()}

    def check_state(self, state: dict) -> None:
        """Refuse to resume onto a different table, sampler, seed or batch size."""
        mine = self.state_dict()
        diff = sorted(k for k in mine if state.get(k) != mine[k])
        if diff:
            raise ValueError(
                f"checkpoint sampler state differs in {diff} (checkpoint {[state.get(k) for k in diff]}, "
                f"now {[mine[k] for k in diff]}): the table or config changed since the checkpoint"
            )


def make_sampler(name: str, sample_weight: str, *, batch_size: int, seed: int,
                 advantage: np.ndarray | None = None, reward: np.ndarray | None = None,
                 n_units: int | None = None) -> Sampler:
    """Build the sampler ``name`` (``auto`` resolved with the method's ``sample_weight``).

    ``advantage`` / ``reward`` [n_units] are the per-unit columns; ``good_priority`` uses A+ when the
    method is advantage-weighted (or unweighted), max(R, 0) when it is reward-weighted.
    """
    name = resolve_sampler(name, sample_weight)

    def need(column, what):
        if column is None:
            raise ValueError(f"sampler '{name}' needs the {what} column of the scored table")
        return np.asarray(column, dtype=np.float64)

    if name == "good_priority":
        if sample_weight == "reward":
            weights = np.clip(need(reward, "reward"), 0.0, None)
        else:
            weights = np.clip(need(advantage, "advantage"), 0.0, None)
        return Sampler(name, weights, batch_size, seed, replacement=True)
    if name == "good_random":
        weights = (need(advantage, "advantage") > 0).astype(np.float64)
        return Sampler(name, weights, batch_size, seed, replacement=False)
    if n_units is None:
        n_units = len(advantage if advantage is not None else need(reward, "reward"))
    return Sampler(name, np.ones(n_units), batch_size, seed, replacement=False)
