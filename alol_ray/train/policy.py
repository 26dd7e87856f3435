"""The trainable policy and its optimizer, as every trainer builds them (the offline loop and PPO).

    model, tokenizer = build_policy(cfg.model, train_cfg, "runs/x/train/reference-s0/best", None, device)
    optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], train_cfg)
"""

from __future__ import annotations

import os
from typing import Optional

import torch

from alol_ray.errors import ConfigError
from alol_ray.models import load_policy, load_tokenizer
from alol_ray.train.checkpoint import ADAPTER_CONFIG, is_adapter


def adapter_base(path: str) -> tuple[str, Optional[str]]:
    """(base model, adapter) when ``path`` is a peft adapter (a folder or hub repo with adapter_config.json,
    like timdettmers/qlora-hh-rlhf-7b), else (path, None)."""
    if os.path.isdir(path) and not os.path.exists(os.path.join(path, ADAPTER_CONFIG)):
        return path, None
    try:
        import peft  # only adapter starts need peft

        config = peft.PeftConfig.from_pretrained(path)
    except Exception:  # not an adapter (or not reachable): load it as a plain model
        return path, None
    return config.base_model_name_or_path, path


def weight_dtype(model_cfg, on_gpu: bool) -> str:
    """The dtype the policy's weights are loaded in. Full fine-tuning keeps fp32 master weights (bf16 only
    through autocast); a frozen LoRA base may be stored in bf16 on GPU."""
    if model_cfg.dtype != "auto":
        return model_cfg.dtype
    return "bfloat16" if model_cfg.lora.enabled and on_gpu else "float32"


def build_policy(model_cfg, train_cfg, policy_path: str, checkpoint_model_dir: Optional[str], device):
    """The trainable policy: from the checkpoint if resuming, else the starting weights; LoRA if enabled.

    A starting policy that is itself a LoRA adapter is trained further as that adapter (with LoRA on), or
    merged into its base for full fine-tuning (LoRA off).
    """
    lora = model_cfg.lora
    dtype = weight_dtype(model_cfg, device.type == "cuda")
    trust = model_cfg.trust_remote_code
    base_path, start_adapter = adapter_base(policy_path)
    if not lora.enabled:
        if checkpoint_model_dir:
            model, tokenizer = load_policy(checkpoint_model_dir, dtype=dtype, trust_remote_code=trust)
        else:
            model, tokenizer = load_policy(base_path, dtype=dtype, trust_remote_code=trust)
            if start_adapter:
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
            model = peft.get_peft_model(model, peft.LoraConfig(
                r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                target_modules=list(lora.target_modules) or None, task_type="CAUSAL_LM"))
    if train_cfg.disable_dropout:
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
    model.config.use_cache = False  # training forward passes need no KV cache
    return model, tokenizer


def load_4bit(path: str, model_cfg, device):
    """QLoRA base: 4-bit NF4 weights through bitsandbytes (CUDA only)."""
    if device.type != "cuda":
        raise ConfigError("model.lora.load_in_4bit (QLoRA) needs a CUDA GPU: set train.use_gpu=true, or disable it")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ConfigError("model.lora.load_in_4bit needs bitsandbytes: pip install bitsandbytes") from None
    import peft
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=quant, device_map={"": device.index or 0},
                                                 trust_remote_code=model_cfg.trust_remote_code, dtype=torch.bfloat16)
    model = peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return model, load_tokenizer(path, trust_remote_code=model_cfg.trust_remote_code)


def make_optimizer(params, tc, lr: Optional[float] = None):
    """The optimizer ``train.optimizer`` names (``lr`` overrides ``train.lr``, e.g. PPO's own)."""
    lr = tc.lr if lr is None else lr
    if tc.optimizer == "paged_adamw_32bit":  # the paper's QLoRA optimizer; bitsandbytes, CUDA only
        import bitsandbytes as bnb

        return bnb.optim.PagedAdamW32bit(params, lr=lr, weight_decay=tc.weight_decay)
    if tc.optimizer == "sgd":  # plain (momentum) SGD: the update is linear in the gradient
        return torch.optim.SGD(params, lr=lr, momentum=tc.momentum, weight_decay=tc.weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=tc.weight_decay)
