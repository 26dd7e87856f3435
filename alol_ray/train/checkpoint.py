"""What a training checkpoint holds, and the HF export of the chosen one.

    <checkpoint>/model/            save_pretrained of the policy (full weights, or the LoRA adapter) + tokenizer;
                                   a module that is not a Hugging Face model (the reward model's head on cached
                                   features): its state dict as model/model.safetensors
    <checkpoint>/optimizer.pt      optimizer.state_dict() (tensors and numbers only: loaded with weights_only)
    <checkpoint>/trainer_state.json step, sampler identity, best val reward so far, total steps

No scheduler or RNG state is stored because neither has any: the learning rate is a pure function of the
step (``worker_loop.learning_rate``), the sampler draws from ``(seed, step)`` and the torch RNG (dropout, if
enabled) is re-seeded from ``(seed, step, rank)`` at every step. Resuming at step s therefore continues
exactly as the uninterrupted run would.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

import torch

from alol_ray.models import ADAPTER_CONFIG, is_adapter, load_policy

MODEL_DIR = "model"
WEIGHTS_FILE = "model.safetensors"  # in model/: what save_pretrained writes for an unsharded model
OPTIMIZER_FILE = "optimizer.pt"
STATE_FILE = "trainer_state.json"


def unwrap(model):
    """The policy inside a DDP wrapper."""
    return getattr(model, "module", model)


def save_checkpoint(folder: str, model, tokenizer, optimizer, state: dict[str, Any]) -> str:
    """Write model, optimizer and trainer state into ``folder`` (rank 0 only); ``tokenizer`` may be None."""
    model_dir = os.path.join(folder, MODEL_DIR)
    os.makedirs(model_dir, exist_ok=True)
    policy = unwrap(model)
    if hasattr(policy, "save_pretrained"):
        policy.save_pretrained(model_dir, safe_serialization=True)
    else:
        # lazy: safetensors (only the reward model's bare head takes this path)
        from safetensors.torch import save_file

        save_file({k: v.detach().cpu().contiguous() for k, v in policy.state_dict().items()},
                  os.path.join(model_dir, WEIGHTS_FILE))
    if tokenizer is not None:
        tokenizer.save_pretrained(model_dir)
    torch.save(optimizer.state_dict(), os.path.join(folder, OPTIMIZER_FILE))
    with open(os.path.join(folder, STATE_FILE), "w", encoding="utf-8") as fh:
        json.dump(state, fh, indent=2)
    return folder


def read_state(folder: str) -> dict[str, Any]:
    with open(os.path.join(folder, STATE_FILE), encoding="utf-8") as fh:
        return json.load(fh)


def load_weights(module, model_dir: str) -> None:
    """A checkpoint's model/ weights into ``module`` in place, by state-dict keys (every key must match):
    the reward model's head or classifier, built first from its backbone."""
    # lazy: safetensors (the policies are loaded by build_policy, not here)
    from safetensors.torch import load_file

    module.load_state_dict(load_file(os.path.join(model_dir, WEIGHTS_FILE)))


def load_optimizer(folder: str, optimizer) -> None:
    state = torch.load(os.path.join(folder, OPTIMIZER_FILE), map_location="cpu", weights_only=True)
    optimizer.load_state_dict(state)


def export_policy(model_dir: str, out_dir: str, *, base_path: str | None = None, dtype: str | None = None,
                  trust_remote_code: bool = False) -> str:
    """An HF folder loadable by transformers and vLLM from a checkpoint's ``model/``.

    Full weights are copied. A LoRA adapter is merged into its base model (loaded from ``base_path``,
    or the adapter's recorded base, in ``dtype`` -- never 4-bit, so QLoRA runs export real weights).
    """
    tmp = out_dir.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    if not is_adapter(model_dir):
        shutil.copytree(model_dir, tmp)
    else:
        # lazy: peft (alol_ray.train.checkpoint imports without it)
        from peft import PeftModel

        if base_path is None:
            with open(os.path.join(model_dir, ADAPTER_CONFIG), encoding="utf-8") as fh:
                base_path = json.load(fh)["base_model_name_or_path"]
        base, tokenizer = load_policy(base_path, dtype=dtype, trust_remote_code=trust_remote_code)
        merged = PeftModel.from_pretrained(base, model_dir).merge_and_unload()
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)  # readers never see a half-written export
    return out_dir
