"""The transformers engine: ``model.generate`` on one batch at a time (KV cache, left padding).

Runs in a Ray actor (see ``generator.Generator``) on CPU, or on a GPU when the actor holds one.
Each call generates one batch; its sampling seed is derived from the batch's position in the
caller's prompt list, so a fixed ``generation.seed`` reproduces the same replies.
"""

from __future__ import annotations

import os
from typing import Optional

from alol_ray.config import GenerationConfig
from alol_ray.families import TEXT, PromptFormat, check_chat_template, stop_ids
from alol_ray.generation.common import (
    check_weights,
    context_length,
    encode_prompts,
    policy_weight_shapes,
    prompt_budget,
    request_seed,
    torch_dtype_name,
)
from alol_ray.generation.postprocess import GenerationOutput, find_stop, finish_output
from alol_ray.storage import node_local


class _StopOnText:
    """Ends a row once a stop string appears in its *generated* text.

    transformers' own ``stop_strings`` also match across the prompt boundary (a prompt ending in ':'
    plus '::' matches ':::'); vLLM checks the output only, and so does this criterion.
    """

    def __init__(self, tokenizer, stops, prompt_width: int):
        self.tokenizer, self.stops, self.width = tokenizer, list(stops), prompt_width

    def __call__(self, input_ids, scores, **kwargs):
        # lazy: torch (alol_ray.generation.hf_engine imports without it)
        import torch

        texts = self.tokenizer.batch_decode(input_ids[:, self.width:], skip_special_tokens=True)
        return torch.tensor([find_stop(t, self.stops) is not None for t in texts], device=input_ids.device)


class TransformersEngine:
    """One policy loaded with transformers; ``generate`` one batch of prompts per call."""

    name = "transformers"

    def __init__(self, model_path: str, gen_cfg: GenerationConfig, max_prompt_tokens: int,
                 num_threads: Optional[int] = None, device: str = "cpu",
                 prompt_format: Optional[PromptFormat] = None):
        """``device``: the Generator's choice, a hint only: this actor runs on CUDA when ``gpus_per_engine`` > 0 and
        it sees a GPU."""
        # lazy: torch (alol_ray.generation.hf_engine imports without it)
        import torch

        if num_threads:
            torch.set_num_threads(max(1, int(num_threads)))
        self.cfg = gen_cfg
        self.max_prompt_tokens = max_prompt_tokens
        self.prompt_format = prompt_format or TEXT
        self.device = "cuda" if gen_cfg.gpus_per_engine > 0 and torch.cuda.is_available() else "cpu"
        self.dtype = torch_dtype_name(gen_cfg.dtype, self.device == "cuda")
        self.model = None
        self.load_weights(model_path)

    def load_weights(self, model_path: str) -> dict:
        """Load (or replace) the policy from an HF folder written by ``save_pretrained``."""
        # lazy: alol_ray.models (torch, transformers) (alol_ray.generation.hf_engine imports without them)
        from alol_ray.models import load_policy

        model_path = node_local(model_path)  # a storage URI: read from this node's cache
        model, tokenizer = load_policy(model_path, dtype=self.dtype, trust_remote_code=self.cfg.trust_remote_code,
                                       device=self.device)
        model.eval()
        check_chat_template(tokenizer, self.prompt_format, model_path)
        self.model, self.tokenizer, self.model_path = model, tokenizer, model_path
        self.stop_ids = stop_ids(tokenizer, self.prompt_format)  # EOS, or the chat template's end of turn first
        self.weights_version = 0
        self.n_positions = context_length(model.config)
        self.budget = prompt_budget(self.max_prompt_tokens, self.cfg.max_new_tokens, self.n_positions)
        return self.info()

    def update_weights(self, weights: dict) -> dict:
        """Copy a full set of new weights (name -> CPU tensor, the policy's HF names) into the loaded model."""
        # lazy: torch (alol_ray.generation.hf_engine imports without it)
        import torch

        check_weights(*policy_weight_shapes(self.model), {name: tuple(t.shape) for name, t in weights.items()})
        with torch.no_grad():
            self.model.load_state_dict(weights, strict=False)  # strict=False: a tied copy may be absent
        self.weights_version += 1
        return self.info()

    def info(self) -> dict:
        return {"engine": self.name, "device": self.device, "dtype": self.dtype, "model": self.model_path,
                "weights_version": self.weights_version, "n_positions": self.n_positions,
                "prompt_budget": self.budget, "pid": os.getpid()}

    def generate(self, prompts: list[str], start_index: int = 0) -> list[GenerationOutput]:
        """Replies to ``prompts`` (one batch); ``start_index`` = position of ``prompts[0]`` in the caller's list."""
        # lazy: torch, transformers (alol_ray.generation.hf_engine imports without them)
        import torch
        from transformers import GenerationConfig as HFGenerationConfig

        if not prompts:
            return []
        tok, cfg = self.tokenizer, self.cfg
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        encoded = encode_prompts(tok, prompts, self.budget, self.prompt_format)
        # Left padding: every row's last prompt token sits at the same position, where decoding starts.
        width = max(len(ids) for ids in encoded)
        input_ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(encoded), width), dtype=torch.long)
        for row, ids in enumerate(encoded):
            input_ids[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, width - len(ids):] = 1
        sample = cfg.temperature > 0
        hf_cfg = HFGenerationConfig(
            max_new_tokens=cfg.max_new_tokens,
            do_sample=sample,
            temperature=cfg.temperature if sample else None,
            top_p=cfg.top_p if sample else None,
            top_k=0 if sample else None,  # vLLM's default: no top-k cut (transformers' own default is 50)
            eos_token_id=self.stop_ids,
            pad_token_id=pad_id,
            use_cache=True,
        )
        stopping = [_StopOnText(tok, cfg.stop, width)] if cfg.stop else None
        with torch.random.fork_rng(devices=[] if self.device == "cpu" else None), torch.inference_mode():
            torch.manual_seed(request_seed(cfg.seed, start_index))
            out = self.model.generate(
                input_ids=input_ids.to(self.device),
                attention_mask=attention_mask.to(self.device),
                generation_config=hf_cfg,
                stopping_criteria=stopping,
            )
        new_tokens = out[:, width:].tolist()

        def decode(ids: list[int]) -> str:
            return tok.decode(ids, skip_special_tokens=True)

        return [finish_output(ids, decode=decode, eos_id=self.stop_ids, stops=cfg.stop, pad_id=pad_id)
                for ids in new_tokens]

    def ping(self) -> bool:
        return True
