"""The one tokenisation of (prompt, response) pairs: training, reference scoring and the value head.

A pair becomes ``prompt_ids + response_ids`` where

- the prompt is the tokenizer's special prefix (BOS for LLaMA-family tokenizers, nothing for GPT-2 or
  Pythia) followed by its text, LEFT-truncated to ``max_prompt_tokens`` (the end of a dialogue is what the
  reply answers); or, under ``model.chat_template`` (a ``families.PromptFormat``), its conversation rendered by
  the tokenizer's chat template (``families.chat_prompt_ids``), and
- the response is encoded without special tokens, RIGHT-truncated to ``max_response_tokens - 1`` and
  followed by EOS (under a chat template: its end-of-turn token, ``families.response_end_id``). That last token
  is a response token like any other: it is scored, so a policy learns when to stop (A-LoL / LoL-RL sum the NLL
  over the response tokens including the appended EOS).

Everything that needs log-probabilities of responses goes through ``collate`` + ``response_token_logps``
so that the training loss, the precomputed reference log-probs and the importance ratios line up token
for token.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Optional

from alol_ray.families import TEXT, PromptFormat, chat_prompt_ids, response_end_id

if TYPE_CHECKING:  # torch is imported where tensors are made: a tokenizer needs no torch
    import torch


def special_prefix(tokenizer) -> list[int]:
    """The special ids the tokenizer puts before a text, the way it defines them: [BOS] for LLaMA-family
    tokenizers, nothing for GPT-2 or Pythia. Found by encoding a text with and without special tokens."""
    cached = getattr(tokenizer, "_alol_special_prefix", None)
    if cached is not None:
        return list(cached)
    plain = tokenizer("x", add_special_tokens=False)["input_ids"]
    full = tokenizer("x", add_special_tokens=True)["input_ids"]
    prefix: list[int] = []
    for start in range(len(full) - len(plain) + 1):
        if full[start:start + len(plain)] == plain:
            prefix = list(full[:start])
            break
    try:
        tokenizer._alol_special_prefix = tuple(prefix)
    except AttributeError:  # a tokenizer that takes no attributes: computed again next time
        pass
    return prefix


def encode_prompt(tokenizer, prompt: str, max_prompt_tokens: int, fmt: Optional[PromptFormat] = None) -> list[int]:
    """A prompt's ids as every part of alol-ray feeds it to a policy: the tokenizer's special prefix (BOS where
    it has one) and the text's ids, LEFT-truncated so that the whole fits ``max_prompt_tokens`` (the end of a
    dialogue is what the reply answers; the BOS stays first). Under a chat-template ``fmt``: the conversation
    as the tokenizer's chat template renders it (``families.chat_prompt_ids``)."""
    if fmt is not None and fmt.chat_template:
        return chat_prompt_ids(tokenizer, prompt, fmt.markers, max_prompt_tokens)
    prefix = special_prefix(tokenizer)
    room = max_prompt_tokens - len(prefix)
    if room < 1:
        raise ValueError(f"max_prompt_tokens={max_prompt_tokens} leaves no room after the special tokens {prefix}")
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    return prefix + list(ids[-room:])


def encode_pair(tokenizer, prompt: str, response: str, max_prompt_tokens: int,
                max_response_tokens: int, fmt: Optional[PromptFormat] = None) -> tuple[list[int], list[int]]:
    """Token ids of one (prompt, response) pair: (prompt ids from ``encode_prompt``, response ids ending in EOS,
    or in the chat template's end-of-turn token under a chat-template ``fmt``)."""
    if max_prompt_tokens < 1 or max_response_tokens < 1:
        raise ValueError("max_prompt_tokens and max_response_tokens must be >= 1")
    end = response_end_id(tokenizer, fmt or TEXT)
    prompt_ids = encode_prompt(tokenizer, prompt, max_prompt_tokens, fmt)
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"][: max_response_tokens - 1]
    return prompt_ids, list(response_ids) + [end]


@dataclass
class PolicyBatch:
    """A right-padded batch of (prompt + response) sequences. B = batch, L = longest prompt+response,
    R = longest response (incl. EOS).

    input_ids:        [B, L] long, prompt then response ids, padded with the pad id
    attention_mask:   [B, L] long, 1 on real tokens
    response_index:   [B, R] long, where each response token sits in the *targets* ``input_ids[:, 1:]``
                      (equivalently: the logit position that predicts it); 0 at padding
    response_mask:    [B, R] float, 1.0 on real response tokens (EOS included), 0.0 at padding
    prompt_lengths:   [B] long
    response_lengths: [B] long, response tokens incl. EOS
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    response_index: torch.Tensor
    response_mask: torch.Tensor
    prompt_lengths: torch.Tensor
    response_lengths: torch.Tensor

    def to(self, device) -> "PolicyBatch":
        return PolicyBatch(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def __len__(self) -> int:
        return self.input_ids.shape[0]


def collate(pairs: list[tuple[list[int], list[int]]], pad_id: int) -> PolicyBatch:
    """Right-pad encoded pairs (from ``encode_pair``) into a ``PolicyBatch``."""
    import torch  # lazy: the prompt encoders above are used by torch-free code (the generation driver)

    if not pairs:
        raise ValueError("collate: empty batch")
    for prompt_ids, response_ids in pairs:
        # The first response token is predicted from the last prompt token: a prompt must exist.
        if not prompt_ids or not response_ids:
            raise ValueError("collate: every pair needs at least one prompt and one response token")
    batch = len(pairs)
    seq_len = max(len(p) + len(r) for p, r in pairs)
    resp_len = max(len(r) for _, r in pairs)
    input_ids = torch.full((batch, seq_len), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((batch, seq_len), dtype=torch.long)
    response_index = torch.zeros((batch, resp_len), dtype=torch.long)
    response_mask = torch.zeros((batch, resp_len), dtype=torch.float32)
    for b, (prompt_ids, response_ids) in enumerate(pairs):
        n_p, n_r = len(prompt_ids), len(response_ids)
        input_ids[b, : n_p + n_r] = torch.tensor(list(prompt_ids) + list(response_ids), dtype=torch.long)
        attention_mask[b, : n_p + n_r] = 1
        # Token at input position n_p + j is target number n_p + j - 1.
        response_index[b, :n_r] = torch.arange(n_p - 1, n_p - 1 + n_r)
        response_mask[b, :n_r] = 1.0
    return PolicyBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        response_index=response_index,
        response_mask=response_mask,
        prompt_lengths=torch.tensor([len(p) for p, _ in pairs], dtype=torch.long),
        response_lengths=torch.tensor([len(r) for _, r in pairs], dtype=torch.long),
    )


def response_token_logps(model, batch: PolicyBatch) -> torch.Tensor:
    """log pi(y_t | x, y_<t) of every response token: [B, R] float32, exactly 0.0 at padding.

    Differentiable when called with grad enabled. With ``z = logits at the position that predicts y_t``,
    ``log pi(y_t) = z[y_t] - logsumexp(z)``: only the response positions' logits are made ([B, R, V], see
    ``response_logits``), never a [B, L, V] log-softmax.
    """
    picked, _ = response_logits(model, batch)
    return logps_from_logits(picked.float(), batch)


def logps_from_logits(picked: torch.Tensor, batch: PolicyBatch,
                      log_norm: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Token log-probs [B, R] from the response positions' logits ``picked`` [B, R, V] (float32): ``z[y_t] -
    logsumexp(z)`` (``log_norm``: that logsumexp, when the caller has it), exactly 0.0 at padding."""
    import torch  # lazy: see collate

    targets = batch.input_ids[:, 1:].gather(1, batch.response_index)  # [B, R]
    if log_norm is None:
        log_norm = torch.logsumexp(picked, dim=-1)
    token_logps = picked.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - log_norm
    # where, not multiply: a NaN/inf at a padded position must not leak into sums or gradients.
    return torch.where(batch.response_mask > 0, token_logps, torch.zeros_like(token_logps))


# Attribute a model instance carries once ``response_logits`` has checked whether its forward honours
# ``logits_to_keep`` as [B, R] positions.
_KEEPS_POSITIONS = "_alol_logits_to_keep_positions"


def response_logits(model, batch: PolicyBatch, **forward_kwargs) -> tuple[torch.Tensor, Any]:
    """The logits at the response positions, [B, R, V] in the model's dtype (row b, column j: the logits that
    predict response token j of sequence b; padded columns hold position 0's), and the forward's whole output
    (``forward_kwargs`` go to the forward: ``output_hidden_states=True`` for PPO's value head).

    The LM head runs on those B x R positions alone where the model's forward takes ``logits_to_keep`` as a
    [B, R] tensor of positions (transformers 5's causal LMs): its matmul over the prompt positions, the
    [B, L, V] logits and their gradient are never made (prompts are most of a sequence; the head of a small
    model is a fifth of its forward). Other forwards give the full logits, gathered here. Which one a model
    does is checked on its first call, against the full logits, and remembered on the model.
    """
    index = batch.response_index
    inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
    keeps = getattr(model, _KEEPS_POSITIONS, None)
    if keeps is None:
        keeps = _keeps_positions(model, inputs, index)
        try:
            setattr(model, _KEEPS_POSITIONS, keeps)
        except AttributeError:  # a model that takes no attributes: checked again next time
            pass
    if keeps:
        out = model(**inputs, **forward_kwargs, logits_to_keep=index)
        return out.logits, out
    out = model(**inputs, **forward_kwargs)
    logits = out.logits  # [B, L, V]
    return logits.gather(1, index.unsqueeze(-1).expand(-1, -1, logits.shape[-1])), out


def _keeps_positions(model, inputs: dict, index: torch.Tensor) -> bool:
    """Whether ``model(**inputs, logits_to_keep=index)`` gives the full logits' rows at ``index``: older
    transformers read a tensor there as 1-D positions (or not at all), a remote-code model may not take it.
    Both forwards draw the same dropout masks (the same seed, the caller's RNG state left as it was)."""
    import torch  # lazy: see collate

    devices = [index.device.index or 0] if index.device.type == "cuda" else []
    with torch.no_grad(), torch.random.fork_rng(devices=devices):
        torch.manual_seed(0)
        full = model(**inputs).logits
        torch.manual_seed(0)
        try:
            kept = model(**inputs, logits_to_keep=index).logits
        except (TypeError, ValueError, IndexError, RuntimeError):
            return False
        if kept.shape != (*index.shape, full.shape[-1]):
            return False
        expected = full.gather(1, index.unsqueeze(-1).expand(-1, -1, full.shape[-1])).float()
        # loose enough for another summation order in bf16, far tighter than the logits of another position
        tol = 1e-2 if full.dtype in (torch.float16, torch.bfloat16) else 1e-4
        return bool(torch.allclose(kept.float(), expected, rtol=tol, atol=tol * float(expected.abs().max())))


def prompt_batch(tokenizer, prompts: list[str], max_prompt_tokens: int,
                 fmt: Optional[PromptFormat] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts alone, encoded like ``encode_pair`` (same ``fmt``) and right-padded: (input_ids, attention_mask),
    both [B, P] long. The value head reads the reference policy's hidden states of these."""
    import torch  # lazy: see collate

    if max_prompt_tokens < 1:
        raise ValueError("max_prompt_tokens must be >= 1")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encoded = [encode_prompt(tokenizer, p, max_prompt_tokens, fmt) for p in prompts]
    if any(len(ids) == 0 for ids in encoded):
        raise ValueError("prompt_batch: empty prompt")
    width = max(len(ids) for ids in encoded)
    input_ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for b, ids in enumerate(encoded):
        input_ids[b, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[b, : len(ids)] = 1
    return input_ids, attention_mask
