"""What both engines share: prompt encoding under the model's context length, seeds, dtypes.

Both engines receive the same token ids for a prompt (encoded here, not by the engine), so the only
difference between them is the forward pass and the sampler.
"""

from __future__ import annotations

from typing import Any, Optional

from alol_ray.errors import ConfigError
from alol_ray.families import PromptFormat
from alol_ray.tokenization import encode_prompt, special_prefix


def context_length(model_config: Any) -> Optional[int]:
    """The longest sequence the model can attend over (GPT-2 ``n_positions`` and its aliases)."""
    for name in ("n_positions", "max_position_embeddings", "n_ctx", "seq_length", "max_seq_len"):
        value = getattr(model_config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def prompt_budget(max_prompt_tokens: int, max_new_tokens: int, n_positions: Optional[int]) -> int:
    """How many prompt tokens fit: prompt + new tokens must stay within the model's positions."""
    budget = max_prompt_tokens
    if n_positions is not None:
        budget = min(budget, n_positions - max_new_tokens)
    if budget < 1:
        raise ConfigError(
            f"generation.max_new_tokens={max_new_tokens} leaves no room for a prompt in the model's "
            f"{n_positions} positions; lower generation.max_new_tokens"
        )
    return budget


def encode_prompts(tokenizer, prompts: list[str], budget: int, fmt: Optional[PromptFormat] = None) -> list[list[int]]:
    """Prompt ids exactly as training sees them (``tokenization.encode_prompt``: the tokenizer's special prefix,
    BOS where it has one, then the text LEFT-truncated; or the chat template's rendering under ``fmt``), within
    ``budget`` tokens."""
    if fmt is not None and fmt.chat_template:
        return [encode_prompt(tokenizer, p, budget, fmt) for p in prompts]
    prefix = special_prefix(tokenizer)
    room = budget - len(prefix)
    if room < 1:
        raise ConfigError(f"a prompt budget of {budget} tokens leaves no room after the special tokens {prefix}")
    encoded = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]  # one batched call
    empty = [i for i, ids in enumerate(encoded) if not ids]
    if empty:
        raise ValueError(f"prompt(s) at position {empty[:5]} encode to no tokens")
    return [prefix + list(ids)[-room:] for ids in encoded]


def request_seed(seed: int, index: int) -> int:
    """The sampling seed of the prompt (or batch) that starts at global position ``index``.

    Seeds depend on the position in the caller's list, never on which engine runs it, so the
    number of engines does not change what is sampled.
    """
    return (seed * 1_000_003 + index) % (2**31 - 1)


def torch_dtype_name(dtype: str, on_gpu: bool) -> str:
    """generation.dtype with 'auto' resolved: bf16 on GPU, fp32 on CPU."""
    if dtype == "auto":
        return "bfloat16" if on_gpu else "float32"
    return dtype


def policy_weight_shapes(model: Any) -> tuple[dict[str, tuple], set[str]]:
    """(every state-dict name -> shape, the names an update must carry) of an HF model.

    The names an update must carry are the model's distinct parameters: a tied copy (GPT-2's
    ``lm_head.weight``, which ``save_pretrained`` leaves out) and buffers may be absent.
    """
    shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    return shapes, {name for name, _ in model.named_parameters()}


def check_weights(shapes: dict[str, tuple], required: set[str], given: dict[str, tuple]) -> None:
    """Raise ValueError (one line) unless ``given`` (name -> shape) is a complete set of the policy's weights.

    Checked before any weight is copied: an engine must never be left half-updated.
    """
    unknown = sorted(set(given) - set(shapes))
    if unknown:
        raise ValueError(f"{len(unknown)} weight name(s) are not in the running policy, e.g. {unknown[:3]} "
                         "(expected the policy's Hugging Face names, as in model.state_dict())")
    missing = sorted(required - set(given))
    if missing:
        raise ValueError(f"{len(missing)} of the policy's {len(required)} parameters are missing, "
                         f"e.g. {missing[:3]} (an update carries every parameter)")
    wrong = [f"{name} {tuple(shape)} != {shapes[name]}" for name, shape in given.items()
             if tuple(shape) != shapes[name]]
    if wrong:
        raise ValueError(f"{len(wrong)} weight shape(s) differ from the running policy's, e.g. {wrong[:2]} "
                         "(another architecture?)")
