"""Model families as data: what differs between Llama, Qwen2, Mistral, Gemma, GPT-NeoX and GPT-2 is looked up here,
from the loaded model and tokenizer, and nowhere else.

- the decoder layer (the unit FSDP wraps): the classes in ``model._no_split_modules`` (``decoder_layer_classes``);
- LoRA targets: the linear layers inside a decoder layer, attention and MLP (``lora_target_modules``);
- the BOS a text starts with: ``tokenization.special_prefix``; the pad token: the tokenizer's, else EOS;
- the end-of-turn token: the special token the chat template closes a reply with (``end_of_turn_id``);
- the chat template: ``tokenizer.chat_template``, used under ``model.chat_template`` (``PromptFormat``);
- vLLM's weight names: none to map, vLLM's own ``load_weights`` takes the Hugging Face names and fuses q/k/v and
  gate/up itself (``generation.vllm_engine``).

A new family needs no code here when transformers declares its decoder layer and its chat template closes a reply
with a special token; ``tests/test_families.py`` checks each rule for every family tested.

``PromptFormat`` is how a canonical prompt (text, its turns marked the way the data's chat template marks them,
``### Human:`` / ``### Assistant:`` by default) becomes the policy's prompt ids: as text, after the tokenizer's
special prefix (the default), or, with ``model.chat_template: true``, as the conversation rendered by the policy
tokenizer's own chat template (``apply_chat_template``, generation prompt added). Every stage that feeds a
policy (scoring, training, the value head, generation) encodes through ``tokenization`` with the run's
``PromptFormat``, so all of them see the same ids. Reward models keep their own input format.

No torch at import: the generation driver encodes prompts without it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from alol_ray.config import ChatTemplateConfig
from alol_ray.data.formats import split_turns
from alol_ray.errors import ConfigError

ROLE_USER, ROLE_ASSISTANT, ROLE_SYSTEM = "user", "assistant", "system"
_PROBE_REPLY = "alol probe reply 7"  # an assistant turn whose end the chat template is asked to close


# ---------------------------------------------------------------------------------------------------- model


def decoder_layer_classes(model: Any) -> tuple[type, ...]:
    """The decoder-layer class(es) of a transformers model (``LlamaDecoderLayer``, ``GPTNeoXLayer``, ``GPT2Block``,
    ...): the classes named in ``_no_split_modules`` that occur in the model. These are the units FSDP wraps one
    by one. A peft-wrapped model is looked through. ValueError when the model declares none."""
    base = _unwrap(model)
    names = set(getattr(base, "_no_split_modules", None) or ())
    found: dict[str, type] = {}
    for module in base.modules():
        if type(module).__name__ in names:
            found.setdefault(type(module).__name__, type(module))
    if not found:
        raise ValueError(f"{type(base).__name__} declares no decoder layer (_no_split_modules); "
                         "its decoder layers cannot be found")
    return tuple(found.values())


def decoder_layers(model: Any) -> list:
    """Every decoder-layer module of the model, in order (see ``decoder_layer_classes``)."""
    classes = decoder_layer_classes(model)
    return [m for m in _unwrap(model).modules() if isinstance(m, classes)]


def lora_target_modules(model: Any) -> list[str]:
    """The module names LoRA adapts when ``model.lora.target_modules`` is empty: every linear layer inside a
    decoder layer (attention and MLP projections, as in QLoRA): ``q_proj .. down_proj`` for Llama, Qwen2,
    Mistral and Gemma, ``query_key_value, dense, dense_h_to_4h, dense_4h_to_h`` for GPT-NeoX, ``c_attn, c_proj,
    c_fc`` for GPT-2. Sorted leaf names, as peft matches them."""
    # lazy: torch, transformers (alol_ray.families imports without them)
    import torch
    from transformers.pytorch_utils import Conv1D

    names = set()
    for layer in decoder_layers(model):
        for name, module in layer.named_modules():
            if not name or not isinstance(module, (torch.nn.Linear, Conv1D)) or ".lora_" in f".{name}":
                continue  # peft's own adapter layers (lora_A, lora_B) are not targets
            names.add(name.removesuffix(".base_layer").rsplit(".", 1)[-1])  # peft keeps the wrapped layer there
    if not names:
        raise ValueError(f"{type(_unwrap(model)).__name__}: no linear layer inside its decoder layers for LoRA; "
                         "set model.lora.target_modules")
    return sorted(names)


def _unwrap(model: Any) -> Any:
    """The transformers model under a peft or DDP wrapper."""
    model = getattr(model, "module", model)  # DDP
    get_base = getattr(model, "get_base_model", None)  # peft
    return get_base() if callable(get_base) else model


# ------------------------------------------------------------------------------------------------ tokenizer


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def pad_id(tokenizer: Any) -> int:
    """The id padding is written with: the tokenizer's pad token, else its EOS (padding is masked either way)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def end_of_turn_id(tokenizer: Any) -> Optional[int]:
    """The special token the tokenizer's chat template closes an assistant reply with (``<|im_end|>``,
    ``<|eot_id|>``, ``<end_of_turn>``, or the EOS ``</s>`` of Mistral's template); None without a chat template
    or when the template closes a reply with ordinary text. Found by rendering a probe reply."""
    cached = getattr(tokenizer, "_alol_end_of_turn", False)
    if cached is not False:
        return cached
    found = None
    if has_chat_template(tokenizer):
        messages = [{"role": ROLE_USER, "content": "hello"}, {"role": ROLE_ASSISTANT, "content": _PROBE_REPLY}]
        text = tokenizer.apply_chat_template(messages, tokenize=False)
        at = text.rfind(_PROBE_REPLY)
        if at >= 0:
            after = tokenizer(text[at + len(_PROBE_REPLY):].lstrip(" "), add_special_tokens=False)["input_ids"]
            if after and _is_special(tokenizer, after[0]):
                found = after[0]
    try:
        tokenizer._alol_end_of_turn = found
    except AttributeError:  # a tokenizer that takes no attributes: found again next time
        pass
    return found


def _is_special(tokenizer: Any, token_id: int) -> bool:
    if token_id in set(tokenizer.all_special_ids):
        return True
    added = getattr(tokenizer, "added_tokens_decoder", {}).get(token_id)
    return bool(added is not None and getattr(added, "special", False))


# ------------------------------------------------------------------------------------------------- prompts


@dataclass(frozen=True)
class PromptFormat:
    """How canonical prompts become the policy's ids (see the module docs).

    chat_template: render the prompt's turns with the policy tokenizer's chat template (generation prompt added);
                   False = the prompt text after the tokenizer's special prefix (BOS where it has one)
    markers:       how the canonical prompt marks its turns (the data's chat template), to find them again
    """

    chat_template: bool = False
    markers: ChatTemplateConfig = field(default_factory=ChatTemplateConfig)


TEXT = PromptFormat()  # the default: prompts as text


def prompt_format(cfg: Any) -> PromptFormat:
    """The run's PromptFormat: ``model.chat_template``, with the turn markers of the data's chat template
    (``data.sources[*].template``; the run config checks that the sources agree on one)."""
    if not cfg.model.chat_template:
        return TEXT
    return PromptFormat(chat_template=True, markers=cfg.data.sources[0].template)


def prompt_identity(cfg: Any) -> tuple:
    """The run's prompt format as a stage fingerprint takes it: nothing for prompts as text (so fingerprints made
    before chat templates existed stay valid), the format under ``model.chat_template``."""
    fmt = prompt_format(cfg)
    return (fmt,) if fmt.chat_template else ()


def check_chat_template(tokenizer: Any, fmt: PromptFormat, where: str) -> None:
    """ConfigError (one line) when ``fmt`` asks for a chat template that the tokenizer of ``where`` lacks."""
    if fmt.chat_template and not has_chat_template(tokenizer):
        raise ConfigError(f"model.chat_template=true, but the tokenizer of {where} has no chat template; "
                          "set model.chat_template=false (prompts as text) or use a model whose tokenizer has one")


def prompt_messages(prompt: str, markers: ChatTemplateConfig) -> list[dict[str, str]]:
    """A canonical prompt as chat messages: its turns found by ``markers`` (text before the first marker, such as
    the data template's system line, becomes a system message); a prompt without markers is one user turn."""
    turns = split_turns(prompt, markers)
    if not turns:
        return [{"role": ROLE_USER, "content": prompt.strip()}]
    messages = []
    before = prompt.split(markers.human, 1)[0].split(markers.assistant, 1)[0].strip()
    if before:
        messages.append({"role": ROLE_SYSTEM, "content": before})
    messages += [{"role": ROLE_USER if human else ROLE_ASSISTANT, "content": text} for human, text in turns]
    return messages


def chat_prompt_ids(tokenizer: Any, prompt: str, markers: ChatTemplateConfig, max_tokens: int) -> list[int]:
    """The prompt's ids as the chat template renders its conversation (generation prompt added), within
    ``max_tokens``: the oldest turns go first (a system message stays), then the start of the last user turn,
    the way text prompts are truncated on the left. The template's own tokens (BOS included) are in the text
    it renders, so no special tokens are added on top."""
    if not has_chat_template(tokenizer):
        raise ConfigError("model.chat_template=true, but the policy's tokenizer has no chat template; "
                          "set model.chat_template=false")
    messages = prompt_messages(prompt, markers)
    ids = _render(tokenizer, messages)
    while len(ids) > max_tokens and _drop_oldest_exchange(messages):
        ids = _render(tokenizer, messages)
    if len(ids) <= max_tokens:
        return ids
    # One turn left and still too long: keep the end of its text.
    last = messages[-1]
    text_ids = tokenizer(last["content"], add_special_tokens=False)["input_ids"]
    for _ in range(8):  # decoding and re-encoding may shift a token: shorten until the rendering fits
        overflow = len(ids) - max_tokens
        if overflow <= 0:
            return ids
        if overflow >= len(text_ids):
            break
        text_ids = text_ids[overflow:]
        last["content"] = tokenizer.decode(text_ids, skip_special_tokens=True)
        ids = _render(tokenizer, messages)
    raise ValueError(f"max_prompt_tokens={max_tokens} leaves no room for the prompt's text after the chat "
                     f"template's own {len(ids) - len(text_ids)} tokens; raise model.max_prompt_tokens")


def _render(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _drop_oldest_exchange(messages: list[dict[str, str]]) -> bool:
    """Drop the oldest exchange (everything before the second user turn, a system message kept); False when the
    last user turn is the only one left."""
    start = 1 if messages and messages[0]["role"] == ROLE_SYSTEM else 0
    users = [i for i in range(start, len(messages)) if messages[i]["role"] == ROLE_USER]
    if len(users) < 2:
        return False
    del messages[start:users[1]]
    return True


def response_end_id(tokenizer: Any, fmt: PromptFormat) -> int:
    """The token every response ends with (scored and trained like any response token): the chat template's
    end-of-turn token under ``model.chat_template``, else EOS."""
    if fmt.chat_template:
        end = end_of_turn_id(tokenizer)
        if end is not None:
            return end
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos token; every response must end with one")
    return tokenizer.eos_token_id


def stop_ids(tokenizer: Any, fmt: PromptFormat) -> list[int]:
    """Token ids that end a generated reply: the response's end token first (``response_end_id``), then EOS."""
    ids = [response_end_id(tokenizer, fmt)]
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


@dataclass(frozen=True)
class FamilyRules:
    """What ``describe`` found for one model and tokenizer (logged once per training run; read by tests)."""

    model_type: str
    decoder_layer: tuple[str, ...]
    lora_targets: tuple[str, ...]
    tied_embeddings: bool
    eos_id: Optional[int]
    pad_id: Optional[int]
    end_of_turn_id: Optional[int]
    chat_template: bool

    def summary(self) -> str:
        """One line for the logs."""
        return (f"{self.model_type}: decoder layer {'/'.join(self.decoder_layer)}, LoRA targets "
                f"{','.join(self.lora_targets)}, {'tied' if self.tied_embeddings else 'untied'} embeddings, eos "
                f"{self.eos_id}, pad {self.pad_id}, end of turn {self.end_of_turn_id}, "
                f"{'a' if self.chat_template else 'no'} chat template")


def describe(model: Any, tokenizer: Any) -> FamilyRules:
    """Every family rule of a loaded model and tokenizer, in one record (the BOS a text starts with is
    ``tokenization.special_prefix``)."""
    base = _unwrap(model)
    return FamilyRules(
        model_type=str(getattr(base.config, "model_type", type(base).__name__)),
        decoder_layer=tuple(c.__name__ for c in decoder_layer_classes(base)),
        lora_targets=tuple(lora_target_modules(base)),
        tied_embeddings=bool(getattr(base.config, "tie_word_embeddings", False)),
        eos_id=tokenizer.eos_token_id,
        pad_id=tokenizer.pad_token_id,
        end_of_turn_id=end_of_turn_id(tokenizer),
        chat_template=has_chat_template(tokenizer),
    )
