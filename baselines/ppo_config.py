"""``ppo``: the online PPO baseline's config section (``alol_ray.baselines.ppo``).

A top-level section (not under ``train``) because PPO also reads ``train.*`` for its resources and seed; its
fingerprint takes this whole section (``alol_ray.pipeline``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from alol_ray.config_fields import bounded, check_fields
from alol_ray.errors import ConfigError


@dataclass
class PPOConfig:
    """The online PPO baseline (`alol train --algo ppo`, baselines/ppo.py); defaults follow TRL 0.7.1 as the
    A-LoL paper ran it. Resources: train.num_workers / use_gpu and ``cpus_per_worker`` for the update,
    generation.* (and ``generation_cpus``) for the rollout Generator, reference_cpus / reference_gpus for the
    frozen pi_ref actor. All of them must fit the cluster at once: a local Ray that cannot hold them is an
    error before any work starts (a cluster may autoscale, so there it is only logged)."""

    iterations: int = bounded(100, ge=1)  # rollout -> update rounds
    rollout_size: int = bounded(16, ge=1)  # prompts sampled and answered per iteration (TRL batch_size)
    mini_batch_size: int = bounded(4, ge=1)  # rollouts per optimizer step, over all workers
    ppo_epochs: int = bounded(4, ge=1)  # passes over each rollout
    # mini-batches per optimizer step (gradients averaged): the reference PPO run (TRL 0.7.1, batch 16, mini-batch
    # 4, gradient accumulation 4) takes one step per epoch, 4 per iteration
    grad_accum: int = bounded(4, ge=1)
    lr: float = bounded(1.41e-5, gt=0)  # AdamW (TRL default); tiny CPU policies want ~1e-4
    init_kl_coef: float = bounded(0.2, ge=0)
    adaptive_kl: bool = True  # Ziegler et al. controller; false = fixed init_kl_coef
    target_kl: float = bounded(6.0, gt=0)
    kl_horizon: float = bounded(10000.0, gt=0)
    cliprange: float = bounded(0.2, gt=0, lt=1)  # policy ratio clip
    cliprange_value: float = bounded(0.2, gt=0)  # value prediction clip around the rollout's values
    vf_coef: float = bounded(0.1, ge=0)
    gamma: float = bounded(1.0, ge=0, le=1)
    lam: float = bounded(0.95, ge=0, le=1)
    whiten: bool = True  # whiten advantages over the rollout (all workers)
    score_scaling: bool = True  # divide scores by their running std (TRL use_score_scaling)
    score_norm: bool = True  # also subtract the running mean (TRL use_score_norm)
    temperature: float = bounded(1.0, gt=0)  # rollout sampling (rollouts are sampled: > 0)
    top_p: float = bounded(0.95, gt=0, le=1)
    max_new_tokens: int = bounded(128, ge=1)
    eval_every: int = bounded(10, ge=0)  # iterations between greedy val-reward evaluations (+ the last); 0 = never
    eval_at_start: bool = True  # also evaluate the starting policy (the curve's first point; not exportable)
    checkpoint_every: int = bounded(10, ge=1)  # iterations between checkpoints (evaluated ones always checkpoint)
    reference_cpus: float = bounded(1.0, ge=0)  # the frozen pi_ref actor that scores rollouts
    reference_gpus: float = bounded(0.0, ge=0)
    cpus_per_worker: Optional[float] = bounded(None, gt=0)  # CPUs per PPO train worker; None = train.cpus_per_worker
    # CPUs per rollout Generator engine; None = generation.cpus_per_engine
    generation_cpus: Optional[float] = bounded(None, gt=0)
    reward_service: bool = False  # score rollouts through the Ray Serve deployment (serve.*) instead of in-process

    def __post_init__(self) -> None:
        check_fields(self, "ppo")
        if self.rollout_size % self.mini_batch_size:
            raise ConfigError(f"ppo.rollout_size ({self.rollout_size}) must be a multiple of ppo.mini_batch_size "
                              f"({self.mini_batch_size})")
        if (self.rollout_size // self.mini_batch_size) % self.grad_accum:
            raise ConfigError(f"ppo.grad_accum ({self.grad_accum}) must divide the mini-batches per epoch "
                              f"(ppo.rollout_size / ppo.mini_batch_size = {self.rollout_size // self.mini_batch_size})")
