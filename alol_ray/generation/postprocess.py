"""Post-processing of generated replies, shared by every engine (pure: no torch, ray or vllm).

A reply ends at the first stop string (the next-turn marker ``### Human:`` by default: a dialogue model
that keeps going writes the user's next turn) and is stripped of surrounding whitespace. The same rule
applies to the vLLM and the transformers engine, so both produce the same text for the same tokens.

The response's token ids are cut to match: they keep the longest prefix whose decoded text does not
reach into the stop string, so no part of the marker is ever a response token.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence, Union

FINISH_EOS = "eos"  # the model produced its end-of-sequence token (kept as the last response token)
FINISH_STOP = "stop"  # a stop string appeared; the reply was cut before it
FINISH_LENGTH = "length"  # max_new_tokens ran out


@dataclass
class GenerationOutput:
    """One generated reply.

    text:          the post-processed reply (cut at the first stop string, stripped)
    token_ids:     ids of the response tokens, EOS included when the model produced it
    num_tokens:    len(token_ids)
    finish_reason: "eos" | "stop" | "length"
    """

    text: str
    token_ids: list[int] = field(default_factory=list)
    num_tokens: int = 0
    finish_reason: str = FINISH_LENGTH


def find_stop(text: str, stops: Sequence[str]) -> Optional[int]:
    """Character position of the earliest occurrence of any stop string in ``text`` (None if none)."""
    positions = [pos for pos in (text.find(s) for s in stops if s) if pos >= 0]
    return min(positions) if positions else None


def cut_at_stop(text: str, stops: Sequence[str]) -> str:
    """``text`` up to (not including) the earliest stop string; unchanged when none occurs."""
    pos = find_stop(text, stops)
    return text if pos is None else text[:pos]


def postprocess(text: str, stops: Sequence[str]) -> str:
    """The reply as evaluated and scored: cut at the first stop string, surrounding whitespace stripped."""
    return cut_at_stop(text, stops).strip()


def ids_before(decode: Callable[[list[int]], str], ids: Sequence[int], n_chars: int) -> list[int]:
    """The longest prefix of ``ids`` whose decoded text has at most ``n_chars`` characters.

    Binary search: the decoded length grows with the prefix (a byte-level token that splits a
    multi-byte character can bend this by one character, which only moves the cut by one token).
    """
    lo, hi = 0, len(ids)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if len(decode(list(ids[:mid]))) <= n_chars:
            lo = mid
        else:
            hi = mid - 1
    return list(ids[:lo])


def finish_output(
    generated_ids: Sequence[int],
    *,
    decode: Callable[[list[int]], str],
    eos_id: Union[None, int, Sequence[int]],
    stops: Sequence[str],
    pad_id: Optional[int] = None,
    eos_hint: bool = False,
) -> GenerationOutput:
    """Turn an engine's raw new tokens into a ``GenerationOutput``.

    ``generated_ids``: the tokens after the prompt (a transformers row may carry trailing padding).
    ``decode``: ids -> text with special tokens skipped.
    ``eos_id``: the id that ends a reply, or several (a chat template's end-of-turn token, then EOS:
    ``families.stop_ids``); the reply ends at the first of them, which it keeps.
    ``eos_hint``: the engine reports that generation ended at EOS (the last of ``eos_id``) although the id is
    not in ``generated_ids`` (vLLM may leave it out); it is appended so both engines return the same ids.
    """
    ends = [] if eos_id is None else [eos_id] if isinstance(eos_id, int) else list(eos_id)
    ids = list(generated_ids)
    finish = FINISH_LENGTH
    end_at = next((i for i, token in enumerate(ids) if token in ends), None)
    if end_at is not None:
        ids = ids[: end_at + 1]  # everything after the end token is padding
        finish = FINISH_EOS
    elif eos_hint and ends:
        ids.append(ends[-1])
        finish = FINISH_EOS
    elif pad_id is not None:
        while ids and ids[-1] == pad_id:  # rows that stopped early are right-padded
            ids.pop()
    body = ids[:-1] if finish == FINISH_EOS else ids
    raw = decode(body)
    pos = find_stop(raw, stops)
    if pos is not None:
        ids = ids_before(decode, body, pos)
        finish = FINISH_STOP
        raw = raw[:pos]
    return GenerationOutput(text=raw.strip(), token_ids=ids, num_tokens=len(ids), finish_reason=finish)
