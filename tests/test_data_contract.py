"""The data contract under a fuzzer (Hypothesis): every reader and format, fed arbitrary JSON values, nesting
depths, unicode (lone surrogates, zero-width characters, byte-order marks, right-to-left text, NUL), keys given
twice and values of every type, either gives canonical rows whose text is the input's (surrounding whitespace
removed, nothing else changed) or one line per bad record naming file, line and field. Never a traceback, never
a record that vanishes without a line, never a silent change of content.

The decisions these tests hold (README, "Bad input"): text with no visible character (only whitespace,
zero-width spaces, joiners, a byte-order mark, bidirectional marks) is empty and refused; a key given twice is
refused; a lone surrogate is not text; NUL in text is refused; nesting deeper than 64 levels is refused; a UTF-8
byte-order mark at the start of a file is skipped.
"""

from __future__ import annotations

import json
import re
import unicodedata

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alol_ray.config import SourceConfig
from alol_ray.data.loaders import load_prompts, load_source
from alol_ray.errors import DataError, UserError

MAX_DEPTH = 64  # the contract's nesting bound (alol_ray.data.readers.MAX_DEPTH)


# Default-ignorable fillers and variation selectors outside the categories below (Unicode's list).
FILLERS = {0x034F, 0x115F, 0x1160, 0x17B4, 0x17B5, *range(0x180B, 0x1810), 0x2800, 0x3164, 0xFFA0,
           *range(0xFE00, 0xFE10), *range(0xE0100, 0xE01F0)}


def is_blank(text: str) -> bool:
    """The test's own oracle of "nothing visible": whitespace, controls, format characters (zero-width, BOM,
    bidi marks), separators, fillers and variation selectors."""
    return all(ch.isspace() or unicodedata.category(ch) in ("Cc", "Cf", "Zs", "Zl", "Zp") or ord(ch) in FILLERS
               for ch in text)

FUZZ = settings(max_examples=25, deadline=None, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

# Characters that break text handling: zero-width space / joiners, BOM, word joiner, bidi marks and overrides
# (right-to-left text), NUL and other controls, a lone surrogate of each kind, fillers, and letters among them.
TRICKY = ["\u200b", "\u200c", "\u200d", "\ufeff", "\u2060", "\u200e", "\u200f", "\u202e", "\u2066", "\u00ad",
          "\x00", "\x01", "\x7f", "\ud800", "\udfff", "\u3164", "\ufe0f", " ", "\t", "\n", "\u00a0", "\u3000"]
LETTERS = ["a", "Z", "é", "ש", "ع", "字", "🙂", "0", "?", ":"]
tricky_text = st.lists(st.sampled_from(TRICKY + LETTERS), max_size=8).map("".join) | st.text(max_size=12)
json_scalars = (st.none() | st.booleans() | st.integers(min_value=-(10**30), max_value=10**30)
                | st.floats(allow_nan=True, allow_infinity=True) | tricky_text)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(tricky_text, inner, max_size=3), max_leaves=8)


def base_record(fmt: str, i: int) -> dict:
    """A valid record of ``fmt``, its prompt numbered ``i`` (distinct prompts form distinct groups)."""
    return {
        "rows": {"prompt": f"What {i}?", "response": "This.", "reward": 0.5},
        "pairs": {"prompt": f"What {i}?", "chosen": "This.", "rejected": "That.", "reward": [1.0, 0.0]},
        "hh_rlhf": {"chosen": f"\n\nHuman: What {i}?\n\nAssistant: This.",
                    "rejected": f"\n\nHuman: What {i}?\n\nAssistant: That."},
        "hh_pro": {"prefix": [[f"<|prompter|>What {i}?", "<|assistant|>"]] * 2, "suffix": ["This.", "That."],
                   "reward": [1.0, 0.0]},
    }[fmt]


# The text fields each format reads (a blank one, or one with NUL, must never pass).
TEXTS = {"rows": ("prompt", "response"), "pairs": ("prompt", "chosen", "rejected"), "hh_rlhf": ("chosen", "rejected"),
         "hh_pro": ()}
ROWS_PER_RECORD = {"rows": 1, "pairs": 2, "hh_rlhf": 2}


@st.composite
def records(draw, fmt: str) -> list[dict]:
    """Records as JSON text, with what their author meant: ``{"text", "values", "twice", "deep"}``."""
    out = []
    for i in range(draw(st.integers(1, 5))):
        values = base_record(fmt, i)
        for key in draw(st.lists(st.sampled_from(sorted(values) + ["prompt_id", "rank", "id", "split"]), max_size=2,
                                 unique=True)):
            values[key] = draw(json_values | tricky_text)
        if fmt == "hh_pro" and draw(st.booleans()):
            values["suffix"] = [draw(tricky_text) for _ in range(2)]
        if draw(st.integers(0, 3)) == 0:
            values[draw(tricky_text)] = draw(json_values)  # an extra field under any key
        items = [json.dumps(k) + ": " + json.dumps(v) for k, v in values.items()]
        twice = draw(st.sampled_from([None, None, *sorted(values)]))
        if twice is not None:  # the same key again, with another value
            items.append(json.dumps(twice) + ": " + json.dumps(draw(json_values)))
        deep = draw(st.integers(0, 9)) == 0
        if deep:  # deeper than the contract allows (at 5000, deeper than Python's own stack)
            depth = draw(st.sampled_from([MAX_DEPTH + 1, 5000]))
            items.append('"meta": ' + "[" * depth + "]" * depth)
        out.append({"text": "{" + ", ".join(items) + "}", "values": values, "twice": twice is not None, "deep": deep})
    return out


def has_surrogate(value) -> bool:
    if isinstance(value, str):
        return bool(re.search("[\ud800-\udfff]", value))
    if isinstance(value, list):
        return any(has_surrogate(v) for v in value)
    if isinstance(value, dict):
        return any(has_surrogate(k) or has_surrogate(v) for k, v in value.items())
    return False


def problem_lines(err: DataError, name: str, n_lines: int) -> dict[int, list[str]]:
    """Every problem is one line ``file:line: field: message [reason]`` at a line of the file; line -> reasons."""
    by_line: dict[int, list[str]] = {}
    for problem in err.problems:
        text = str(problem)
        assert "\n" not in text and "\r" not in text, text
        match = re.match(rf"^{re.escape(name)}:(\d+): (.+?): .+ \[([a-z_]+)\]$", text, re.DOTALL)
        assert match, text
        assert 1 <= int(match.group(1)) <= n_lines, text
        by_line.setdefault(int(match.group(1)), []).append(match.group(3))
    return by_line


def load(path, fmt: str, skip: bool):
    """load_source, with the user errors it may raise returned (anything else is a traceback: the test fails)."""
    try:
        return load_source(SourceConfig(path=str(path), format=fmt), skip_invalid=skip)
    except DataError as err:
        return err
    except UserError as err:
        assert "no valid rows" in str(err) and skip, err
        return err


@pytest.mark.parametrize("fmt", sorted(TEXTS))
@FUZZ
@given(data=st.data())
def test_every_record_gives_its_rows_or_one_line_per_problem(tmp_path_factory, fmt, data):
    recs = data.draw(records(fmt))
    path = tmp_path_factory.mktemp("fuzz") / f"{fmt}.jsonl"
    path.write_bytes("\n".join(r["text"] for r in recs).encode("utf-8", "surrogatepass") + b"\n")

    strict = load(path, fmt, skip=False)
    bad = problem_lines(strict, path.name, len(recs)) if isinstance(strict, DataError) else {}
    kept = load(path, fmt, skip=True)
    if isinstance(kept, UserError):  # nothing valid: the strict run named every record
        assert set(bad) == set(range(1, len(recs) + 1)), bad
        return
    frame, report = kept
    assert len(report.problems) == (len(strict.problems) if bad else 0)  # the same problems, counted by reason
    assert sum(report.invalid.values()) == len(report.problems)

    for lineno, rec in enumerate(recs, start=1):
        values, reasons = rec["values"], bad.get(lineno, [])
        # What the contract refuses is refused: a key twice, nesting too deep, a lone surrogate, blank or NUL text.
        refused = rec["twice"] or rec["deep"] or has_surrogate(values) or any(
            isinstance(values.get(k), str) and (is_blank(values[k]) or "\x00" in values[k]) for k in TEXTS[fmt])
        if refused:
            assert reasons, (lineno, rec["text"])

    # Nothing vanished: every record without a problem gave its rows (a bad hh_pro reply drops only itself).
    good = [r["values"] for i, r in enumerate(recs, 1) if i not in bad]
    if fmt in ROWS_PER_RECORD:
        assert len(frame) == ROWS_PER_RECORD[fmt] * len(good)
    # Content: every text is the input's own text with surrounding whitespace removed, and has something to show.
    for col in ("prompt", "response"):
        assert all(isinstance(v, str) and v == v.strip() and not is_blank(v) and "\x00" not in v
                   and not has_surrogate(v) for v in frame[col])
    if fmt == "rows":
        assert sorted(frame["response"]) == sorted(v["response"].strip() for v in good)
        assert sorted(frame["prompt"]) == sorted(v["prompt"].strip() for v in good)
        if "reward" in frame:  # numbers come through exactly
            given = sorted(float(v["reward"]) for v in good if v.get("reward") is not None)
            assert sorted(frame["reward"].dropna()) == given
    if fmt == "pairs":
        assert sorted(frame["response"]) == sorted(t for v in good for t in (v["chosen"].strip(), v["rejected"].strip()))
    if fmt == "hh_pro":
        texts = [t for r in recs if isinstance(r["values"].get("suffix"), list) for t in r["values"]["suffix"]
                 if isinstance(t, str)]
        assert all(v in [t.strip() for t in texts] for v in frame["response"])


@FUZZ
@given(text=st.text(max_size=40) | st.lists(st.sampled_from(TRICKY + LETTERS + ['"', "{", "}", "[", "]", ",", ":"]),
                                            max_size=30).map("".join))
def test_any_text_parses_or_is_one_problem(text):
    """The shared JSON entry point (data files, --prompts files, reward requests) on any text at all."""
    from alol_ray.data.readers import FieldError, parse_json

    try:
        value = parse_json(text)
    except FieldError as err:
        assert err.reason in {"malformed_json", "duplicate_key", "too_deep", "invalid_unicode"}
        assert "\n" not in err.message and err.field
        return
    assert value == json.loads(text) and not has_surrogate(value)


@FUZZ
@given(value=json_values | tricky_text)
def test_text_fields_are_kept_or_refused_never_changed(value):
    from alol_ray.data.formats import FieldError, check_text

    try:
        kept = check_text(value, "response", "empty_response")
    except FieldError as err:
        assert err.reason in {"missing_field", "wrong_type", "nul_character", "empty_response"}
        return
    assert kept == value.strip() and not is_blank(kept) and "\x00" not in kept


@FUZZ
@given(cells=st.lists(st.tuples(tricky_text | st.none(), tricky_text | st.none(),
                                st.floats(allow_nan=True, allow_infinity=True) | st.none()), min_size=1, max_size=5))
def test_parquet_rows_follow_the_same_contract(tmp_path_factory, cells):
    cells = [(p, r, w) for p, r, w in cells if not has_surrogate(p) and not has_surrogate(r)]  # Arrow refuses them
    if not cells:
        return
    path = tmp_path_factory.mktemp("fuzz") / "rows.parquet"
    pd.DataFrame(cells, columns=["prompt", "response", "reward"]).to_parquet(path)
    got = load(path, "rows", skip=True)
    if isinstance(got, UserError):
        return
    frame, report = got
    good = [(p, r) for p, r, w in cells if all(isinstance(t, str) and not is_blank(t) and "\x00" not in t
                                                for t in (p, r)) and (w is None or abs(w) <= 1e9)]
    assert sorted(zip(frame["prompt"], frame["response"])) == sorted((p.strip(), r.strip()) for p, r in good)
    assert len(report.problems) == len(cells) - len(good)


# --------------------------------------------------------------------------------- the decisions, by name


def write(path, *lines: str):
    path.write_bytes("\n".join(lines).encode("utf-8", "surrogatepass") + b"\n")
    return path


@pytest.mark.parametrize("line,field,reason", [
    ('{"prompt": "p", "response": "good", "response": "evil"}', "response", "duplicate_key"),
    ('{"prompt": "p", "response": "r", "meta": {"a": 1, "a": 2}}', "meta.a", "duplicate_key"),
    ('{"prompt": "p", "response": "\u200b\u200d"}', "response", "empty_response"),
    ('{"prompt": "\ufeff", "response": "r"}', "prompt", "empty_prompt"),
    ('{"prompt": "p", "response": "\\u200f \\u2060"}', "response", "empty_response"),
    ('{"prompt": "p", "response": "a\\u0000b"}', "response", "nul_character"),
    ('{"prompt": "p", "response": "\\ud800"}', "response", "invalid_unicode"),
    ('{"prompt": "p", "response": "r", "x": ' + "[" * 100 + "]" * 100 + "}", "x", "too_deep"),
    ('{"prompt": "p", "response": "r", "x": ' + "[" * 5000 + "]" * 5000 + "}", "<json>", "too_deep"),
    ('{"prompt": "p", "response": "r", "reward": ' + "9" * 5000 + "}", "<json>", "malformed_json"),
    ('{"prompt": "p", "response": "r", "reward": ' + "9" * 400 + "}", "reward", "reward_out_of_range"),
    ('{"prompt": "p", "response": "r", "id": {"a": 1}}', "id", "wrong_type"),
])
def test_each_decision_is_one_line_naming_the_field(tmp_path, line, field, reason):
    path = write(tmp_path / "data.jsonl", '{"prompt": "fine", "response": "fine"}', line)
    with pytest.raises(DataError) as err:
        load_source(SourceConfig(path=str(path), format="rows"), skip_invalid=False)
    assert [str(p).split(": ")[0:2] for p in err.value.problems] == [["data.jsonl:2", field]]
    assert err.value.problems[0].reason == reason
    frame, report = load_source(SourceConfig(path=str(path), format="rows"), skip_invalid=True)
    assert list(frame["response"]) == ["fine"] and dict(report.invalid) == {reason: 1}


def test_visible_text_is_kept_as_it_is(tmp_path):
    """Right-to-left text, a text with zero-width joiners between letters, a leading BOM of the file: accepted,
    the texts unchanged but for surrounding whitespace."""
    rtl, joined = "\u202bשלום עולם\u202c", "a\u200db\ufeffc"
    path = tmp_path / "data.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"prompt": f"  {rtl} ", "response": joined}).encode() + b"\n")
    frame, _ = load_source(SourceConfig(path=str(path), format="rows"), skip_invalid=False)
    assert frame["prompt"].tolist() == [rtl] and frame["response"].tolist() == [joined]


def test_a_json_array_too_deep_or_one_object_is_one_line(tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text("[" + json.dumps({"prompt": "p", "response": "r"}) + ", " + "[" * 5000 + "]" * 5000 + "]")
    with pytest.raises(DataError) as err:
        load_source(SourceConfig(path=str(deep), format="rows"), skip_invalid=False)
    assert [p.reason for p in err.value.problems] == ["too_deep"]
    with pytest.raises(UserError, match=r"no valid rows \(all 1 invalid; the first: deep.json:1: <json>: nested deeper"):
        load_source(SourceConfig(path=str(deep), format="rows"), skip_invalid=True)
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text(json.dumps({"data": [{"prompt": "p", "response": "r"}] * 3}, indent=2))
    with pytest.raises(DataError) as err:
        load_source(SourceConfig(path=str(wrapped), format="rows"), skip_invalid=False)
    assert len(err.value.problems) == 1 and "one JSON object" in str(err.value) and "'data'" in str(err.value)


def test_a_prompts_file_follows_the_contract(tmp_path):
    path = write(tmp_path / "prompts.jsonl", '{"prompt": "fine?"}', '{"prompt": "\\udfff"}', '{"prompt": "\u200b"}',
                 '{"prompt": "a", "prompt": "b"}')
    with pytest.raises(DataError) as err:
        load_prompts(SourceConfig(path=str(path), format="rows"))
    assert [(p.location, p.reason) for p in err.value.problems] == [
        ("line 2", "invalid_unicode"), ("line 3", "empty_prompt"), ("line 4", "duplicate_key")]


def test_a_parquet_file_with_a_column_twice_is_refused(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "twice.parquet"
    pq.write_table(pa.table([["p"], ["good"], ["evil"]], names=["prompt", "response", "response"]), path)
    with pytest.raises(UserError, match=r"twice.parquet: column\(s\) \['response'\] occur twice"):
        load_source(SourceConfig(path=str(path), format="rows"), skip_invalid=True)
