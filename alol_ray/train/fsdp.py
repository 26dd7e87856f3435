"""The sharded strategy (``train.strategy: fsdp``): PyTorch FSDP2 (``fully_shard``) inside Ray Train's worker group.

Each decoder layer (found per family: ``families.decoder_layers``) is one FSDP unit, then the root holds what is
left (embeddings, final norm, LM head). Every worker keeps 1/N of each parameter, of its gradient and of the
optimizer state; a unit's full weights exist only while it runs (all-gathered before its forward and again
before its backward, freed after), and its gradients are reduce-scattered (averaged) as soon as its backward
ends. So the gradients a worker steps with are the DDP average over workers, sharded: the same update as
``Replicated`` up to float summation order (tests/test_fsdp.py checks losses and weights step by step).
LoRA composes: the frozen base and the adapters live in the same units; only the adapters get gradients.

A checkpoint (every rank calls ``save`` with its own folder; Ray Train merges the ranks' folders into one)::

    model/                    the full weights gathered to rank 0, save_pretrained (a consolidated HF folder,
                              or the LoRA adapter): export, evaluation, vLLM and a resume read it as before
    optimizer/                torch.distributed.checkpoint: each rank writes its shard of the optimizer state
                              (__<rank>_0.distcp), rank 0 the .metadata; loaded back shard by shard
    trainer_state.json        rank 0, as for DDP

Gathering ``model/`` needs one full copy of the weights in rank 0's CPU memory at each checkpoint (2 bytes per
parameter in bf16, 4 in fp32); the optimizer state, 2-3x larger, never leaves its shards.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import ContextManager

import torch

from alol_ray.families import decoder_layers
from alol_ray.train import checkpoint as ckpt
from alol_ray.train.memory import PrecisionPolicy, checkpoint_activations

OPTIMIZER_SHARDS_DIR = "optimizer"


class Sharded:
    """FSDP2: parameters, gradients and optimizer state sharded over the workers, one unit per decoder layer."""

    name = "fsdp"
    writes_on_every_rank = True  # each rank writes its optimizer shard

    def __init__(self, world_size: int, precision: PrecisionPolicy, *, gradient_checkpointing: bool = False):
        self.world_size = world_size
        self.precision = precision
        self.gradient_checkpointing = gradient_checkpointing
        self.units: list[torch.nn.Module] = []  # the modules sharded on their own, in order (then the root)

    def wrap(self, model, device):
        # lazy: torch.distributed.fsdp pulls in the distributed stack (alol_ray.train.fsdp imports without it)
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        model.to(device)
        if self.precision.params is not None:
            model.to(self.precision.params)
        if self.gradient_checkpointing:
            checkpoint_activations(model)
        mesh = init_device_mesh(device.type, (self.world_size,))
        # bf16-mixed: the all-gathered copy the layers compute with is bf16, the shards and gradients fp32.
        mp = MixedPrecisionPolicy(param_dtype=self.precision.compute if self.precision.mixed else None,
                                  reduce_dtype=self.precision.reduce)
        self.units = decoder_layers(model)
        for unit in self.units:
            fully_shard(unit, mesh=mesh, mp_policy=mp)
        fully_shard(model, mesh=mesh, mp_policy=mp)
        # FSDP takes the first unit to run forward as the root. Make it the root now: rank 0 may first run a
        # module below it alone (PPO evaluates the policy inside its policy + value head module), which would
        # otherwise make a decoder layer the root and fail the next forward through the whole model.
        get_state = getattr(model, "_get_fsdp_state", None)  # torch's own (private) lazy init, as forward runs it
        if get_state is not None:
            get_state()._lazy_init()
        return model

    def accumulate(self, model, last: bool) -> ContextManager:
        # Gradients are reduce-scattered after every micro-batch and summed in their shards: skipping the sync
        # (set_requires_gradient_sync(False)) would keep a full unsharded gradient on every worker, the very
        # memory FSDP exists to save.
        return contextlib.nullcontext()

    def autocast(self, device) -> ContextManager:
        return contextlib.nullcontext()  # the compute dtype is the all-gathered params' (MixedPrecisionPolicy)

    def clip_grad_norm(self, model, params, max_norm: float) -> float:
        # Sharded gradients are DTensors: the norm is a partial one per rank until full_tensor() sums them.
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)

    def unsharded(self, model) -> ContextManager:
        """Every rank: the full weights stay gathered for the block (rank 0 generates alone with them)."""
        return _gathered(model)

    def save(self, folder, model, tokenizer, optimizer, state) -> None:
        # lazy: the distributed checkpoint stack (alol_ray.train.fsdp imports without it)
        import torch.distributed as dist
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                             get_optimizer_state_dict)

        # Collective: every rank sends its shards, rank 0 receives the full tensors (on CPU).
        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if dist.get_rank() == 0:
            _drop_tied_copies(model, full)
            model_dir = os.path.join(folder, ckpt.MODEL_DIR)
            model.save_pretrained(model_dir, state_dict=full, safe_serialization=True)
            tokenizer.save_pretrained(model_dir)
            with open(os.path.join(folder, ckpt.STATE_FILE), "w", encoding="utf-8") as fh:
                json.dump(state, fh, indent=2)
        del full
        dcp.save({"optimizer": get_optimizer_state_dict(model, optimizer)},
                 checkpoint_id=os.path.join(folder, OPTIMIZER_SHARDS_DIR))

    def load_optimizer(self, folder: str, model, optimizer) -> None:
        # lazy: the distributed checkpoint stack (alol_ray.train.fsdp imports without it)
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

        shards = os.path.join(folder, OPTIMIZER_SHARDS_DIR)
        if not os.path.isdir(shards):
            raise ValueError(f"{folder}: no sharded optimizer state ({OPTIMIZER_SHARDS_DIR}/): "
                             "it was not written by train.strategy=fsdp")
        state = {"optimizer": get_optimizer_state_dict(model, optimizer)}  # this rank's shards, to fill in
        dcp.load(state, checkpoint_id=shards)
        set_optimizer_state_dict(model, optimizer, state["optimizer"])


def _drop_tied_copies(model, state: dict) -> None:
    """Gathered tensors no longer share storage, so save_pretrained would write a tied weight twice (GPT-2's
    lm_head.weight beside transformer.wte.weight): keep the first name of each parameter, as an unsharded save does."""
    names: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), []).append(name)
    for aliases in names.values():
        for alias in aliases[1:]:
            state.pop(alias, None)


@contextlib.contextmanager
def _gathered(model):
    """All FSDP units unsharded, and kept so through any number of forward passes (generation), then resharded."""
    # lazy: torch.distributed.fsdp pulls in the distributed stack (alol_ray.train.fsdp imports without it)
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for unit in units:
        unit.unshard()
        unit.set_reshard_after_forward(False)
    try:
        yield model
    finally:
        for unit in units:
            unit.set_reshard_after_forward(True)
            unit.reshard()
