"""Conversational sources: chat messages (``[{role, content}, ...]``) as users and TRL's datasets hold them.

- ``messages``:   one record = one conversation ending with the assistant's reply (the response); the turns
                  before it are the prompt. Optional ``reward``, ``rank``, ``prompt_id``, ``split``, ``id`` as in
                  ``rows``: records of one prompt form one group. (TRL's conversational language-modeling format.)
- ``chat_pairs``: TRL's conversational preference format: ``prompt`` (messages ending with a user turn),
                  ``chosen`` and ``rejected`` (one assistant message each), or, without ``prompt``, ``chosen`` and
                  ``rejected`` as whole conversations that differ only in the last reply. Optional
                  ``reward: [r_chosen, r_rejected]``. Chosen is rank 0.

Roles are ``system`` (first only), ``user`` and ``assistant``. The prompt's turns are rendered through the
source's chat template (``### Human:`` / ``### Assistant:`` by default; a system message takes the place of the
template's system line) into the canonical prompt string, from which ``model.chat_template`` finds them again
(``families.prompt_messages``). Each message's text goes through the formats' shared text check
(``formats.require_text``); what is found is reported like any other format's problem, one line each:
``file:line: field: message [reason]``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

from alol_ray.config import ChatTemplateConfig, FieldsConfig
from alol_ray.data import formats
from alol_ray.data.formats import FieldError, Row, render_turns, require_text

SYSTEM, USER, ASSISTANT = "system", "user", "assistant"
ROLES = (SYSTEM, USER, ASSISTANT)
FORMAT_MESSAGES, FORMAT_CHAT_PAIRS = "messages", "chat_pairs"


def _messages(value: Any, field: str) -> list[tuple[str, str]]:
    """A list of ``{role, content}`` objects -> (role, text) pairs, each checked; a system message only first."""
    if value is None:
        raise FieldError(field, "missing_field", "missing field")
    if not isinstance(value, list) or not value:
        raise FieldError(field, "wrong_type", "expected a non-empty list of {role, content} messages")
    out = []
    for i, message in enumerate(value):
        where = f"{field}[{i}]"
        if not isinstance(message, dict):
            raise FieldError(where, "wrong_type", f"expected a {{role, content}} object, got {type(message).__name__}")
        role = require_text(message, "role", f"{where}.role")
        if role not in ROLES:
            raise FieldError(f"{where}.role", "bad_role", f"role {role!r} is not one of {', '.join(ROLES)}")
        if role == SYSTEM and i > 0:
            raise FieldError(f"{where}.role", "bad_role", "a system message can only come first")
        out.append((role, require_text(message, "content", f"{where}.content", empty_reason="empty_turn")))
    return out


def _prompt_text(turns: list[tuple[str, str]], field: str, template: ChatTemplateConfig) -> str:
    """The prompt's turns (ending with the user's) rendered as the canonical prompt string."""
    system = turns[0][1] if turns and turns[0][0] == SYSTEM else None
    dialogue = turns[1:] if system is not None else turns
    if not dialogue or dialogue[-1][0] != USER:
        raise FieldError(field, "no_user_turn", "the prompt does not end with a user turn")
    if system is not None:
        template = dataclasses.replace(template, system=system)
    return render_turns([(role == USER, text) for role, text in dialogue], template)


def _split_reply(turns: list[tuple[str, str]], field: str) -> tuple[list[tuple[str, str]], str]:
    """(the turns before the reply, the reply): the conversation must end with an assistant message."""
    if turns[-1][0] != ASSISTANT:
        raise FieldError(field, "no_final_reply", "the conversation does not end with an assistant reply")
    return turns[:-1], turns[-1][1]


def messages_format(values: dict[str, Any], fields: FieldsConfig, template: ChatTemplateConfig) -> list[Row]:
    turns = _messages(values.get(fields.messages), fields.messages)
    before, reply = _split_reply(turns, fields.messages)
    flat = dict(values)
    flat[fields.prompt] = _prompt_text(before, fields.messages, template)
    flat[fields.response] = reply
    return formats.FORMATS["rows"](flat, fields, template)  # reward, rank, prompt_id, split, id: as in `rows`


def _one_reply(values: dict[str, Any], key: str) -> str:
    turns = _messages(values.get(key), key)
    if len(turns) != 1 or turns[0][0] != ASSISTANT:
        raise FieldError(key, "no_final_reply", f"expected one assistant message (the reply), got "
                                                f"{'/'.join(role for role, _ in turns)}")
    return turns[0][1]


def chat_pairs_format(values: dict[str, Any], fields: FieldsConfig, template: ChatTemplateConfig) -> list[Row]:
    prompt, chosen, rejected = _chat_pair(values, fields, template)
    flat = dict(values)
    flat.update({fields.prompt: prompt, fields.chosen: chosen, fields.rejected: rejected})
    return formats.FORMATS["pairs"](flat, fields, template)  # reward [r_chosen, r_rejected], prompt_id: as in `pairs`


def _chat_pair(values: dict[str, Any], fields: FieldsConfig, template: ChatTemplateConfig) -> tuple[str, str, str]:
    if values.get(fields.prompt) is not None:
        prompt = _prompt_text(_messages(values[fields.prompt], fields.prompt), fields.prompt, template)
        return prompt, _one_reply(values, fields.chosen), _one_reply(values, fields.rejected)
    # Implicit prompt: two whole conversations that share everything but the last reply.
    before_c, chosen = _split_reply(_messages(values.get(fields.chosen), fields.chosen), fields.chosen)
    before_r, rejected = _split_reply(_messages(values.get(fields.rejected), fields.rejected), fields.rejected)
    if before_c != before_r:
        raise FieldError(fields.rejected, "inconsistent_prompt", "chosen and rejected differ before the last reply")
    return _prompt_text(before_c, fields.chosen, template), chosen, rejected


FORMATS = {FORMAT_MESSAGES: messages_format, FORMAT_CHAT_PAIRS: chat_pairs_format}
formats.FORMATS.update(FORMATS)  # registered with the text formats: convert_record reads every format from there


def detect(values: dict[str, Any], fields: FieldsConfig) -> Optional[str]:
    """The conversational format of a record (its fields hold message lists), None for a text record."""
    if fields.messages in values:
        return FORMAT_MESSAGES
    if any(isinstance(values.get(key), list) and values[key] and isinstance(values[key][0], dict)
           for key in (fields.prompt, fields.chosen, fields.rejected)):
        return FORMAT_CHAT_PAIRS
    return None


def record_prompt(fmt: str, values: dict[str, Any], fields: FieldsConfig,
                  template: ChatTemplateConfig) -> tuple[Optional[str], str]:
    """A conversational record's (prompt_id or None, prompt) for an evaluation prompt set: a ``messages`` record
    may hold the prompt alone (ending with the user's turn) or a whole conversation (its last reply is dropped)."""
    if fmt == FORMAT_MESSAGES:
        turns = _messages(values.get(fields.messages), fields.messages)
        before = turns[:-1] if turns[-1][0] == ASSISTANT else turns
        pid = values.get(fields.prompt_id) if fields.prompt_id else None
        return (None if pid is None else str(pid)), _prompt_text(before, fields.messages, template)
    if values.get(fields.prompt) is not None:
        return None, _prompt_text(_messages(values[fields.prompt], fields.prompt), fields.prompt, template)
    before, _ = _split_reply(_messages(values.get(fields.chosen), fields.chosen), fields.chosen)
    return None, _prompt_text(before, fields.chosen, template)
