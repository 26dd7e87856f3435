"""What a training worker does to fit its policy in memory, whatever the strategy: the precision policy and
activation (gradient) checkpointing. The memory model these feed is in docs/memory.md.

    policy = precision_policy(tc.precision, on_gpu=True, bf16_on_gpu=tc.bf16)
    policy.params, policy.compute, policy.reduce          # torch dtypes
    checkpoint_activations(model)                         # before the strategy wraps the model

``train.precision``:

    fp32        params fp32 (as ``model.dtype`` loads them), compute fp32, gradients reduced in fp32
    bf16-mixed  params fp32 (the master copy the optimizer updates), compute bf16 (DDP: autocast; FSDP: the
                all-gathered copy is bf16), gradients reduced in fp32
    bf16        params bf16 (the model is cast; optimizer state follows the params), compute bf16, gradients
                reduced in bf16: half the memory of fp32 for everything, at bf16's 8-bit mantissa for the updates
    auto        bf16-mixed on GPU when ``train.bf16`` (the default), else fp32 (what the CPU tests run)

bf16 autocast works on CPU too (slowly), so every policy is testable without a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from alol_ray.families import decoder_layers

PRECISIONS = ("auto", "fp32", "bf16", "bf16-mixed")


@dataclass(frozen=True)
class PrecisionPolicy:
    name: str  # fp32 | bf16 | bf16-mixed (auto resolved)
    params: Optional[torch.dtype]  # the dtype the trained weights are cast to; None = as loaded (model.dtype)
    compute: torch.dtype  # forward/backward matmuls
    reduce: torch.dtype  # gradient all-reduce (DDP) / reduce-scatter (FSDP)

    @property
    def mixed(self) -> bool:
        """Compute in a narrower dtype than the params (autocast for DDP, a cast all-gather for FSDP)."""
        return self.name == "bf16-mixed"


def precision_policy(name: str, *, on_gpu: bool, bf16_on_gpu: bool = True) -> PrecisionPolicy:
    """The policy ``train.precision`` names; ``auto``: bf16-mixed on GPU when ``train.bf16``, else fp32."""
    if name == "auto":
        name = "bf16-mixed" if on_gpu and bf16_on_gpu else "fp32"
    if name == "fp32":
        return PrecisionPolicy(name, None, torch.float32, torch.float32)
    if name == "bf16-mixed":
        return PrecisionPolicy(name, None, torch.bfloat16, torch.float32)
    if name == "bf16":
        return PrecisionPolicy(name, torch.bfloat16, torch.bfloat16, torch.bfloat16)
    raise ValueError(f"train.precision must be one of {PRECISIONS}, got '{name}'")


def checkpoint_activations(model: torch.nn.Module) -> None:
    """Recompute each decoder layer's activations in backward instead of keeping them (transformers'
    per-layer gradient checkpointing, non-reentrant: it composes with DDP, FSDP2 and frozen LoRA bases).
    Activation memory drops from every layer's intermediates to one layer's plus each layer's input, at the
    cost of one more forward pass per step. Losses and gradients are unchanged (dropout's RNG is replayed)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft
    if not getattr(base, "supports_gradient_checkpointing", False):
        raise ValueError(f"{type(base).__name__} does not support gradient checkpointing "
                         "(set train.gradient_checkpointing=false)")
    base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    layers = decoder_layers(base)
    if not layers or not all(getattr(layer, "gradient_checkpointing", False) for layer in layers):
        raise ValueError(f"{type(base).__name__}: gradient checkpointing did not reach every decoder layer")
