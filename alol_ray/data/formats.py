"""Source formats: how one raw record becomes canonical rows, with every field validated.

- ``rows``:    one record = one (prompt, response), optional prompt_id / rank / reward / split / id.
- ``pairs``:   one record = prompt + chosen + rejected (optional reward: [r_chosen, r_rejected]).
- ``hh_rlhf``: Anthropic/hh-rlhf: chosen and rejected are whole transcripts ("\\n\\nHuman: ...\\n\\nAssistant: ...").
- ``hh_pro``:  the PRO / A-LoL HH format: {prefix: [turns, turns], suffix: [...], reward: [...], ...}.
"""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass
from typing import Any, Callable, Optional

from alol_ray import columns as C
from alol_ray.config import ChatTemplateConfig, FieldsConfig
from alol_ray.data.readers import FieldError
from alol_ray.errors import RowProblem


@dataclass
class Row:
    """A canonical row before it becomes a table row; `location` is kept for group-level errors."""

    location: str
    prompt_id: Optional[str]
    prompt: str
    response: str
    rank: Optional[int] = None
    reward: Optional[float] = None
    split: Optional[str] = None
    row_id: Optional[str] = None




# Characters that show nothing on their own: Unicode's format controls (zero-width space and joiners, the
# byte-order mark U+FEFF, bidirectional marks), control characters, separators, and the default-ignorable
# fillers and variation selectors outside those categories. Text made only of them (and whitespace) is
# empty, as whitespace-only text is.
_INVISIBLE_CATEGORIES = {"Cc", "Cf", "Zs", "Zl", "Zp"}
_INVISIBLE_EXTRA = {0x034F, 0x115F, 0x1160, 0x17B4, 0x17B5, 0x180B, 0x180C, 0x180D, 0x180E, 0x180F, 0x2800, 0x3164,
                    0xFFA0, *range(0xFE00, 0xFE10), *range(0xE0100, 0xE01F0)}


def is_blank(text: str) -> bool:
    """True when ``text`` shows nothing: empty, whitespace, or only invisible characters (see above)."""
    return all(ch.isspace() or unicodedata.category(ch) in _INVISIBLE_CATEGORIES or ord(ch) in _INVISIBLE_EXTRA
               for ch in text)


def check_text(value: Any, field: str, empty_reason: str = "empty_text", empty: str = "empty text") -> str:
    """One text field under the data contract: a string, not blank (``is_blank``), without NUL characters (a
    NUL in text comes from binary data or a broken export, and C-level tokenizers end the string there).
    Returns it with surrounding whitespace removed; raises FieldError otherwise. Every format's text goes
    through here."""
    if value is None:
        raise FieldError(field, "missing_field", "missing field")
    if not isinstance(value, str):
        raise FieldError(field, "wrong_type", f"expected a string, got {type(value).__name__}")
    if "\x00" in value:
        raise FieldError(field, "nul_character", f"NUL character at position {value.index(chr(0)) + 1}")
    if is_blank(value):
        raise FieldError(field, empty_reason, empty if not value.strip() else
                         f"{empty}: no visible character (only invisible ones such as zero-width spaces or a "
                         "byte-order mark)")
    return value.strip()


def require_text(values: dict[str, Any], key: str, field: str | None = None, empty_reason: str = "empty_text") -> str:
    """``values[key]`` checked by ``check_text`` (a missing key is a missing field)."""
    return check_text(values.get(key), field or key, empty_reason)


# Ids and ranks are exact values: a number that would change on its way into a table column (a float id,
# a rank beyond int64) is refused rather than rounded.
MAX_RANK = 2**31 - 1


def check_id(value: Any, field: str) -> Optional[str]:
    """An optional id (``prompt_id``, ``id``): a string or an integer, as a string; None when absent."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise FieldError(field, "wrong_type", f"expected a string or integer id, got {type(value).__name__}")
    if isinstance(value, str) and ("\x00" in value or is_blank(value)):
        raise FieldError(field, "wrong_type", "an id must have a visible character and no NUL")
    return str(value)


# Rewards are trained on in float32 (advantages, sampling weights, loss weights): a magnitude beyond this
# loses every digit that tells two rows apart and overflows in sums, so it is an input error, not a reward.
MAX_ABS_REWARD = 1e9


def check_reward(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise FieldError(field, "wrong_type", f"expected a number, got {type(value).__name__}")
    if isinstance(value, int) and abs(value) > MAX_ABS_REWARD:  # float() of a long int would overflow
        raise FieldError(field, "reward_out_of_range", f"reward is beyond +-{MAX_ABS_REWARD:g}; rescale the rewards")
    value = float(value)
    if not math.isfinite(value):
        raise FieldError(field, "non_finite_reward", f"reward is {value}")
    if abs(value) > MAX_ABS_REWARD:
        raise FieldError(field, "reward_out_of_range",
                         f"reward {value:g} is beyond +-{MAX_ABS_REWARD:g}; rescale the rewards")
    return value


def optional_value(values: dict[str, Any], key: str) -> Any:
    return values.get(key) if key else None


def _rows_format(values: dict[str, Any], fields: FieldsConfig, template: ChatTemplateConfig) -> list[Row]:
    prompt = require_text(values, fields.prompt, empty_reason="empty_prompt")
    response = require_text(values, fields.response, empty_reason="empty_response")
    rank = optional_value(values, fields.rank)
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank <= MAX_RANK):
        raise FieldError(fields.rank, "wrong_type", f"expected an integer from 0 to {MAX_RANK}, got "
                                                    f"{type(rank).__name__ if not isinstance(rank, int) else rank}")
    reward = optional_value(values, fields.reward)
    reward = None if reward is None else check_reward(reward, fields.reward)
    pid = _prompt_id(values, fields)
    split = optional_value(values, fields.split)
    if split is not None and (not isinstance(split, str) or split not in C.SPLITS):
        shown = repr(split) if isinstance(split, str) else type(split).__name__
        raise FieldError(fields.split, "wrong_type", f"split must be one of {list(C.SPLITS)}, got {shown[:40]}")
    row_id = check_id(optional_value(values, fields.id), fields.id)
    return [Row("", pid, prompt, response, rank, reward, split, row_id)]


def _prompt_id(values: dict[str, Any], fields: FieldsConfig) -> Optional[str]:
    return check_id(optional_value(values, fields.prompt_id), fields.prompt_id)


def _reward_list(values: dict[str, Any], key: str, n: int) -> list[Optional[float]]:
    rewards = optional_value(values, key)
    if rewards is None:
        return [None] * n
    if not isinstance(rewards, list):
        raise FieldError(key, "wrong_type", f"expected a list of {n} numbers, got {type(rewards).__name__}")
    if len(rewards) != n:
        raise FieldError(key, "wrong_type", f"expected {n} rewards (one per response), got {len(rewards)}")
    return [check_reward(r, f"{key}[{i}]") for i, r in enumerate(rewards)]


def _pairs_format(values: dict[str, Any], fields: FieldsConfig, template: ChatTemplateConfig) -> list[Row]:
    prompt = require_text(values, fields.prompt, empty_reason="empty_prompt")
    chosen = require_text(values, fields.chosen, empty_reason="empty_response")
    rejected = require_text(values, fields.rejected, empty_reason="empty_response")
    rewards = _reward_list(values, fields.reward, 2)
    pid = _prompt_id(values, fields)
    return [Row("", pid, prompt, chosen, 0, rewards[0]), Row("", pid, prompt, rejected, 1, rewards[1])]


_HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant): ?")


def split_transcript(text: str, field: str, template: ChatTemplateConfig) -> tuple[str, str]:
    """An Anthropic/hh-rlhf transcript -> (rendered prompt, final assistant reply)."""
    parts = _HH_TURN.split(text)
    # parts = [preamble, role, text, role, text, ...]
    turns = [(parts[i], parts[i + 1]) for i in range(1, len(parts) - 1, 2)]
    if not turns or turns[-1][0] != "Assistant":
        raise FieldError(field, "wrong_type", "transcript does not end with an Assistant turn")
    reply = turns[-1][1].strip()
    if is_blank(reply):
        raise FieldError(field, "empty_response", "empty final Assistant reply")
    rendered = render_turns([(role == "Human", t.strip()) for role, t in turns[:-1]], template)
    return rendered, reply


def render_turns(turns: list[tuple[bool, str]], template: ChatTemplateConfig) -> str:
    """(is_human, text) turns -> one prompt string ending with the assistant marker."""
    pieces = [template.system] if template.system else []
    for is_human, text in turns:
        marker = template.human if is_human else template.assistant
        pieces.append(f"{marker}{template.separator}{text}" if text else marker)
    pieces.append(template.assistant)
    return template.separator.join(pieces)


def split_turns(prompt: str, template: ChatTemplateConfig) -> list[tuple[bool, str]]:
    """The inverse of ``render_turns``: a rendered prompt -> its (is_human, text) turns, without the system
    line and without the final, empty assistant marker the reply answers."""
    marks = f"({re.escape(template.human)}|{re.escape(template.assistant)})"
    parts = re.split(marks, prompt)
    turns: list[tuple[bool, str]] = []
    for i in range(1, len(parts) - 1, 2):  # parts = [before the first marker, marker, text, marker, text, ...]
        turns.append((parts[i] == template.human, parts[i + 1].strip()))
    if turns and not turns[-1][0] and not turns[-1][1]:
        turns.pop()
    return turns


def _hh_rlhf_format(values: dict[str, Any], fields: FieldsConfig, template: ChatTemplateConfig) -> list[Row]:
    chosen_text = require_text(values, fields.chosen, empty_reason="empty_response")
    rejected_text = require_text(values, fields.rejected, empty_reason="empty_response")
    prompt_c, chosen = split_transcript(chosen_text, fields.chosen, template)
    prompt_r, rejected = split_transcript(rejected_text, fields.rejected, template)
    if prompt_c != prompt_r:
        raise FieldError(fields.rejected, "inconsistent_prompt", "chosen and rejected transcripts differ before the last reply")
    return [Row("", None, prompt_c, chosen, 0), Row("", None, prompt_c, rejected, 1)]


_PRO_ROLES = {"<|prompter|>": True, "<|assistant|>": False}


def render_pro_prefix(turns: Any, field: str, template: ChatTemplateConfig) -> str:
    """PRO-format turns ('<|prompter|>...', '<|assistant|>...', ending with a bare '<|assistant|>')."""
    if not isinstance(turns, list) or not turns or not all(isinstance(t, str) for t in turns):
        raise FieldError(field, "wrong_type", "expected a non-empty list of turn strings")
    if turns[-1].strip() != "<|assistant|>":
        raise FieldError(field, "wrong_type", "the last turn must be a bare '<|assistant|>'")
    parsed = []
    for i, turn in enumerate(turns[:-1]):
        if "\x00" in turn:
            raise FieldError(f"{field}[{i}]", "nul_character", f"NUL character at position {turn.index(chr(0)) + 1}")
        for tag, is_human in _PRO_ROLES.items():
            if turn.startswith(tag):
                parsed.append((is_human, turn[len(tag):].strip()))
                break
        else:
            raise FieldError(f"{field}[{i}]", "wrong_type", "turn does not start with <|prompter|> or <|assistant|>")
    if all(is_blank(text) for _, text in parsed):
        raise FieldError(field, "empty_prompt", "no turn has text")
    return render_turns(parsed, template)


def _pro_prompt(values: dict[str, Any], template: ChatTemplateConfig) -> str:
    """The rendered prompt of a PRO-format record (its ``prefix``: one turn list per response, all equal)."""
    prefix = values.get("prefix")
    if prefix is None:
        raise FieldError("prefix", "missing_field", "missing field")
    if not isinstance(prefix, list) or not prefix:
        raise FieldError("prefix", "wrong_type", "expected a list of turn lists")
    prompt = render_pro_prefix(prefix[0], "prefix[0]", template)
    for i, other in enumerate(prefix[1:], start=1):
        if other != prefix[0]:
            raise FieldError(f"prefix[{i}]", "inconsistent_prompt", "differs from prefix[0] (one prompt per record)")
    return prompt


def _hh_pro_format(values: dict[str, Any], fields: FieldsConfig, template: ChatTemplateConfig) -> list[Row]:
    prompt = _pro_prompt(values, template)
    suffix = values.get("suffix")
    if suffix is None:
        raise FieldError("suffix", "missing_field", "missing field")
    if not isinstance(suffix, list) or not suffix:
        raise FieldError("suffix", "wrong_type", "expected a non-empty list of responses")
    rewards = _reward_list(values, "reward", len(suffix))
    rows = []
    for i, response in enumerate(suffix):
        try:
            rows.append(Row("", None, prompt, check_text(response, f"suffix[{i}]", "empty_response", "empty response"),
                            i, rewards[i]))
        except FieldError as err:
            rows.append(err)
    return rows  # type: ignore[return-value]  # per-response errors drop only that response


FORMATS: dict[str, Callable[[dict[str, Any], FieldsConfig, ChatTemplateConfig], list]] = {
    "rows": _rows_format,
    "pairs": _pairs_format,
    "hh_rlhf": _hh_rlhf_format,
    "hh_pro": _hh_pro_format,
}


def detect_format(values: dict[str, Any], fields: FieldsConfig) -> str:
    """Guess the format from the first record's keys."""
    if "prefix" in values and "suffix" in values:
        return "hh_pro"
    if fields.chosen in values and fields.rejected in values:
        return "pairs" if fields.prompt in values else "hh_rlhf"
    return "rows"


def record_prompt(fmt: str, values: dict[str, Any], fields: FieldsConfig,
                  template: ChatTemplateConfig) -> tuple[Optional[str], str]:
    """One record's (prompt_id or None, prompt) as ``convert_record`` would render the prompt, for evaluation
    prompt sets: the responses are neither needed nor read (``rows`` / ``pairs`` records may hold only a
    prompt). Raises FieldError."""
    if fmt in ("rows", "pairs"):
        return _prompt_id(values, fields), require_text(values, fields.prompt, empty_reason="empty_prompt")
    if fmt == "hh_rlhf":  # the prompt is the chosen transcript up to its last reply
        transcript = require_text(values, fields.chosen, empty_reason="empty_response")
        return None, split_transcript(transcript, fields.chosen, template)[0]
    if fmt == "hh_pro":
        return None, _pro_prompt(values, template)
    raise ValueError(f"no prompts in format '{fmt}'")


def convert_record(fmt: str, location: str, source: str, values: dict[str, Any], fields: FieldsConfig,
                   template: ChatTemplateConfig) -> tuple[list[Row], list[RowProblem]]:
    """One record -> its valid rows and the problems found (a bad response drops only that row)."""
    try:
        produced = FORMATS[fmt](values, fields, template)
    except FieldError as err:
        return [], [RowProblem(source, location, err.field, err.reason, err.message)]
    rows, problems = [], []
    for item in produced:
        if isinstance(item, FieldError):
            problems.append(RowProblem(source, location, item.field, item.reason, item.message))
        else:
            item.location = location
            rows.append(item)
    return rows, problems
