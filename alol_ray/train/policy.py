"""The trainable policy and its optimizer, as every trainer builds them (the offline loop and PPO).

    model, tokenizer = build_policy(cfg.model, train_cfg, "runs/x/train/reference-s0/best", None, device)
    optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], train_cfg)
"""

from __future__ import annotations

from typing import Optional

import torch

from alol_ray.families import lora_target_modules
from alol_ray.models import adapter_base, is_adapter, load_4bit, load_policy
from alol_ray.storage import node_local


def build_policy(model_cfg, train_cfg, policy_path: str, checkpoint_model_dir: Optional[str], device):
    """The trainable policy: from the checkpoint if resuming, else the starting weights; LoRA if enabled.

    A starting policy that is itself a LoRA adapter is trained further as that adapter (with LoRA on), or
    merged into its base for full fine-tuning (LoRA off). A storage URI (``storage.shared``) is read from
    this node's cache.
    """
    policy_path = node_local(policy_path)
    lora = model_cfg.lora
    dtype = model_cfg.weight_dtype(device.type == "cuda")
    trust = model_cfg.trust_remote_code
    base_path, start_adapter = adapter_base(policy_path)
    if not lora.enabled:
        if checkpoint_model_dir:
            model, tokenizer = load_policy(checkpoint_model_dir, dtype=dtype, trust_remote_code=trust)
        else:
            model, tokenizer = load_policy(base_path, dtype=dtype, trust_remote_code=trust)
            if start_adapter:
                # lazy: peft (alol_ray.train.policy imports without it)
                import peft

                model = peft.PeftModel.from_pretrained(model, start_adapter).merge_and_unload()
                model.requires_grad_(True)  # peft froze the base weights; full fine-tuning trains them all
    else:
        import peft  # LoRA runs need peft

        if lora.load_in_4bit:
            model, tokenizer = load_4bit(base_path, model_cfg, device)
        else:
            model, tokenizer = load_policy(base_path, dtype=dtype, trust_remote_code=trust)
        adapter = checkpoint_model_dir if checkpoint_model_dir and is_adapter(checkpoint_model_dir) else start_adapter
        if adapter:
            model = peft.PeftModel.from_pretrained(model, adapter, is_trainable=True)
        else:
            # The family's linear layers (families.lora_target_modules) unless the config names them.
            targets = list(lora.target_modules) or lora_target_modules(model)
            model = peft.get_peft_model(model, peft.LoraConfig(
                r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets,
                task_type="CAUSAL_LM"))
    if train_cfg.disable_dropout:
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
    model.config.use_cache = False  # training forward passes need no KV cache
    return model, tokenizer


def make_optimizer(params, tc, lr: Optional[float] = None):
    """The optimizer ``train.optimizer`` names (``lr`` overrides ``train.lr``, e.g. PPO's own)."""
    lr = tc.lr if lr is None else lr
    if tc.optimizer == "paged_adamw_32bit":  # the paper's QLoRA optimizer; bitsandbytes, CUDA only
        # lazy: bitsandbytes is optional (alol-ray[gpu])
        import bitsandbytes as bnb

        return bnb.optim.PagedAdamW32bit(params, lr=lr, weight_decay=tc.weight_decay)
    if tc.optimizer == "sgd":  # plain (momentum) SGD: the update is linear in the gradient
        return torch.optim.SGD(params, lr=lr, momentum=tc.momentum, weight_decay=tc.weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=tc.weight_decay)
