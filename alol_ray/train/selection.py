"""Checkpoint selection by validation reward (the paper's selection): greedy replies to val prompts, scored.

Runs on the rank-0 training worker with the model being trained: a plain ``model.generate`` (left
padding, greedy) is cheaper there than shipping weights to Generator actors. Prompt encoding and reply
post-processing are the generation package's, so the replies match what ``alol eval`` would produce.
"""

from __future__ import annotations

import numpy as np
import torch

from alol_ray import columns as C
from alol_ray.families import TEXT, PromptFormat, stop_ids
from alol_ray.generation.common import context_length, encode_prompts, prompt_budget
from alol_ray.generation.postprocess import postprocess


def greedy_replies(model, tokenizer, prompts: list[str], *, max_prompt_tokens: int, max_new_tokens: int,
                   stop: list[str], batch_size: int = 32, fmt: PromptFormat = TEXT) -> list[str]:
    """Greedy replies, cut at the first stop string (and at EOS, or the chat template's end of turn under
    ``fmt``). The model is put in eval mode and restored."""
    unwrapped = getattr(model, "module", model)  # DDP: generate on the wrapped model, without a collective
    budget = prompt_budget(max_prompt_tokens, max_new_tokens, context_length(unwrapped.config))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(unwrapped.parameters()).device
    ends = stop_ids(tokenizer, fmt)
    was_training = unwrapped.training
    unwrapped.eval()
    replies: list[str] = []
    try:
        for start in range(0, len(prompts), batch_size):
            encoded = encode_prompts(tokenizer, prompts[start:start + batch_size], budget, fmt)
            width = max(len(ids) for ids in encoded)
            input_ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
            attention_mask = torch.zeros((len(encoded), width), dtype=torch.long)
            for row, ids in enumerate(encoded):  # left padding: decoding starts at one position for all rows
                input_ids[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
                attention_mask[row, width - len(ids):] = 1
            with torch.inference_mode():
                out = unwrapped.generate(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                                         max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad_id,
                                         eos_token_id=ends,
                                         use_cache=True,  # training turns the cache off in the model config
                                         # FSDP: rank 0 generates alone, with the weights gathered for it
                                         # (transformers would otherwise wait for every rank at each token)
                                         synced_gpus=False)
            for ids in out[:, width:].tolist():
                end = next((i for i, token in enumerate(ids) if token in ends), None)
                if end is not None:
                    ids = ids[:end]
                replies.append(postprocess(tokenizer.decode(ids, skip_special_tokens=True), stop))
    finally:
        unwrapped.train(was_training)
    return replies


def evaluate_policy(model, tokenizer, prompts: list[str], reward_fn, *, max_prompt_tokens: int,
                    max_new_tokens: int, stop: list[str], batch_size: int = 32,
                    fmt: PromptFormat = TEXT) -> tuple[dict[str, float], list[str]]:
    """Mean validation reward of greedy replies: metrics ``val/reward``, ``val/reward/<component>``,
    ``val/words``; also returns the replies."""
    replies = greedy_replies(model, tokenizer, prompts, max_prompt_tokens=max_prompt_tokens,
                             max_new_tokens=max_new_tokens, stop=stop, batch_size=batch_size, fmt=fmt)
    scored = reward_fn(prompts, replies)
    metrics = {"val/reward": float(np.nanmean(scored[C.REWARD]))}
    for column, values in scored.items():
        if column.startswith(C.REWARD_PREFIX):
            metrics[f"val/{column}"] = float(np.nanmean(values))
    metrics["val/words"] = float(np.mean([len(r.split()) for r in replies])) if replies else 0.0
    return metrics, replies
