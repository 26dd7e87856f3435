"""How a training loop spreads the policy over its workers: the parallel strategy.

The worker loop owns the order of things (resume, learning rate, evaluate, checkpoint, micro-batches, clip,
step, log); the strategy owns everything that depends on how the weights live on the workers:

    wrap(model, device)                   -> the model the loop trains (replicated: DDP; sharded: FSDP)
    accumulate(model, last)               -> context for one micro-batch's backward (no gradient sync
                                             before the last micro-batch of an optimizer step)
    autocast(device)                      -> context for the forward pass (the compute dtype)
    clip_grad_norm(model, params, max)    -> the global gradient norm, clipped to max (logged either way)
    save(folder, model, tokenizer, optimizer, state)
                                          -> write one checkpoint; called on every rank, ``folder`` is None on
                                             the ranks that write nothing (``writes_on_every_rank``)
    load_optimizer(folder, model, optimizer)
                                          -> restore the optimizer from a checkpoint (the weights are loaded
                                             when the policy is built, before ``wrap``)

A checkpoint's layout is documented in ``alol_ray.train.checkpoint``; whatever a strategy writes, the
checkpoint's ``model/`` folder stays loadable by ``build_policy`` and ``checkpoint.export_policy``.
"""

from __future__ import annotations

import contextlib
from typing import Any, ContextManager, Optional, Protocol

import torch

from alol_ray.train import checkpoint as ckpt


class Strategy(Protocol):
    name: str
    writes_on_every_rank: bool  # True: every rank writes its part of a checkpoint (sharded state)

    def wrap(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module: ...

    def accumulate(self, model: torch.nn.Module, last: bool) -> ContextManager: ...

    def autocast(self, device: torch.device) -> ContextManager: ...

    def clip_grad_norm(self, model: torch.nn.Module, params: list, max_norm: float) -> float: ...

    def save(self, folder: Optional[str], model, tokenizer, optimizer, state: dict[str, Any]) -> None: ...

    def load_optimizer(self, folder: str, model, optimizer) -> None: ...


class Replicated:
    """Every worker holds the whole policy; gradients are all-reduced by DDP (Ray Train's ``prepare_model``)
    once per optimizer step. One copy of the checkpoint, written by rank 0."""

    name = "ddp"
    writes_on_every_rank = False

    def __init__(self, world_size: int, *, move_to_device: bool = True, bf16_autocast: bool = False):
        self.world_size = world_size
        self.move_to_device = move_to_device  # False for 4-bit weights: placed when loaded, they cannot move
        self.bf16_autocast = bf16_autocast  # train.bf16 on CUDA

    def wrap(self, model, device):
        # lazy: ray (alol_ray.train.strategy imports without it)
        import ray.train.torch

        return ray.train.torch.prepare_model(model, move_to_device=self.move_to_device)

    def accumulate(self, model, last: bool) -> ContextManager:
        # DDP all-reduces gradients in backward; skip it on all but the last micro-batch of a step.
        if last or self.world_size == 1 or not hasattr(model, "no_sync"):
            return contextlib.nullcontext()
        return model.no_sync()

    def autocast(self, device) -> ContextManager:
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.bf16_autocast and device.type == "cuda")

    def clip_grad_norm(self, model, params, max_norm: float) -> float:
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm))

    def save(self, folder, model, tokenizer, optimizer, state) -> None:
        if folder is not None:
            ckpt.save_checkpoint(folder, model, tokenizer, optimizer, state)

    def load_optimizer(self, folder: str, model, optimizer) -> None:
        ckpt.load_optimizer(folder, optimizer)


def make_strategy(tc, world_size: int, *, load_in_4bit: bool = False) -> Strategy:
    """The strategy a training job's config asks for (``tc``: TrainConfig)."""
    return Replicated(world_size, move_to_device=not load_in_4bit, bf16_autocast=bool(tc.bf16))
