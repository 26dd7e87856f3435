"""``ppo``: the online PPO baseline's config section (``alol_ray.baselines.ppo``).

A top-level section (not under ``train``) because PPO also reads ``train.*`` for its resources and seed; its
fingerprint takes this whole section (``alol_ray.pipeline``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from alol_ray.errors import ConfigError


@dataclass
class PPOConfig:
    """The online PPO baseline (`alol train --algo ppo`, baselines/ppo.py); defaults follow TRL 0.7.1 as the
    A-LoL paper ran it. Resources: train.num_workers / use_gpu and ``cpus_per_worker`` for the update,
    generation.* (and ``generation_cpus``) for the rollout Generator, reference_cpus / reference_gpus for the
    frozen pi_ref actor. All of them must fit the cluster at once: a local Ray that cannot hold them is an
    error before any work starts (a cluster may autoscale, so there it is only logged)."""

    iterations: int = 100  # rollout -> update rounds
    rollout_size: int = 16  # prompts sampled and answered per iteration (TRL batch_size)
    mini_batch_size: int = 4  # rollouts per optimizer step, over all workers
    ppo_epochs: int = 4  # passes over each rollout
    # mini-batches per optimizer step (gradients averaged): the reference PPO run (TRL 0.7.1, batch 16, mini-batch
    # 4, gradient accumulation 4) takes one step per epoch, 4 per iteration
    grad_accum: int = 4
    lr: float = 1.41e-5  # AdamW (TRL default); tiny CPU policies want ~1e-4
    init_kl_coef: float = 0.2
    adaptive_kl: bool = True  # Ziegler et al. controller; false = fixed init_kl_coef
    target_kl: float = 6.0
    kl_horizon: float = 10000.0
    cliprange: float = 0.2  # policy ratio clip
    cliprange_value: float = 0.2  # value prediction clip around the rollout's values
    vf_coef: float = 0.1
    gamma: float = 1.0
    lam: float = 0.95
    whiten: bool = True  # whiten advantages over the rollout (all workers)
    score_scaling: bool = True  # divide scores by their running std (TRL use_score_scaling)
    score_norm: bool = True  # also subtract the running mean (TRL use_score_norm)
    temperature: float = 1.0  # rollout sampling
    top_p: float = 0.95
    max_new_tokens: int = 128
    eval_every: int = 10  # iterations between greedy val-reward evaluations (+ the last); 0 = never
    eval_at_start: bool = True  # also evaluate the starting policy (the curve's first point; not exportable)
    checkpoint_every: int = 10  # iterations between checkpoints (evaluated iterations always checkpoint)
    reference_cpus: float = 1.0  # the frozen pi_ref actor that scores rollouts
    reference_gpus: float = 0.0
    cpus_per_worker: Optional[float] = None  # CPUs per PPO train worker; None = train.cpus_per_worker
    generation_cpus: Optional[float] = None  # CPUs per rollout Generator engine; None = generation.cpus_per_engine
    reward_service: bool = False  # score rollouts through the Ray Serve deployment (serve.*) instead of in-process

    def __post_init__(self) -> None:
        if min(self.iterations, self.rollout_size, self.mini_batch_size, self.ppo_epochs, self.max_new_tokens) < 1:
            raise ConfigError("ppo.iterations, rollout_size, mini_batch_size, ppo_epochs, max_new_tokens must be >= 1")
        if self.rollout_size % self.mini_batch_size:
            raise ConfigError(f"ppo.rollout_size ({self.rollout_size}) must be a multiple of ppo.mini_batch_size "
                              f"({self.mini_batch_size})")
        if self.grad_accum < 1 or (self.rollout_size // self.mini_batch_size) % self.grad_accum:
            raise ConfigError(f"ppo.grad_accum ({self.grad_accum}) must divide the mini-batches per epoch "
                              f"(ppo.rollout_size / ppo.mini_batch_size = {self.rollout_size // self.mini_batch_size})")
        if self.init_kl_coef < 0 or self.target_kl <= 0 or self.kl_horizon <= 0:
            raise ConfigError("ppo.init_kl_coef must be >= 0, ppo.target_kl and ppo.kl_horizon > 0")
        if not 0 < self.cliprange < 1 or self.cliprange_value <= 0 or self.vf_coef < 0:
            raise ConfigError("ppo.cliprange must be in (0, 1), ppo.cliprange_value > 0, ppo.vf_coef >= 0")
        if not 0 <= self.gamma <= 1 or not 0 <= self.lam <= 1:
            raise ConfigError("ppo.gamma and ppo.lam must be in [0, 1]")
        if self.temperature <= 0 or not 0 < self.top_p <= 1:
            raise ConfigError("ppo.temperature must be > 0 (rollouts are sampled) and ppo.top_p in (0, 1]")
        if self.eval_every < 0 or self.checkpoint_every < 1 or self.lr <= 0:
            raise ConfigError("ppo.eval_every must be >= 0, ppo.checkpoint_every >= 1, ppo.lr > 0")
        if self.reference_cpus < 0 or self.reference_gpus < 0:
            raise ConfigError("ppo.reference_cpus and ppo.reference_gpus must be >= 0")
        if any(v is not None and v <= 0 for v in (self.cpus_per_worker, self.generation_cpus)):
            raise ConfigError("ppo.cpus_per_worker and ppo.generation_cpus must be > 0 (or null)")
