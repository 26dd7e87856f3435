"""Raw record readers: JSON lines / JSON arrays, Parquet, Hugging Face datasets.

A reader yields ``Record``s (a dict with its 1-based location) and reports records it cannot read as
``RowProblem``s. Field semantics are the formats' business (alol_ray.data.formats), text checks too
(``formats.check_text``). What every reader refuses here, for every format (README, "Bad input"):

- bytes that are not UTF-8, and text that is not valid Unicode: an escaped lone surrogate (``"\\ud800"``)
  decodes in Python but no encoder (Arrow, hashlib, a tokenizer) accepts it;
- malformed JSON, a record that is not an object, an integer too long to convert;
- a key twice in one object (``{"response": "good", "response": "evil"}``): JSON parsers keep one of them
  silently, so which one the author meant cannot be known;
- nesting deeper than ``MAX_DEPTH`` levels (no format needs more than a few; Python's parser would
  exhaust its stack first);
- a file that cannot be opened (permissions, a folder in its place), as one line naming the file.

A UTF-8 byte-order mark at the start of a file is an encoding marker, not content: it is skipped.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Union

from alol_ray.errors import RowProblem, UserError
from alol_ray.locations import os_error_line

MAX_DEPTH = 64  # levels of nested lists/objects a record may have (hh_pro needs 3)
BOM = b"\xef\xbb\xbf"
TOO_LONG = f"malformed JSON: a number of more than {getattr(sys, 'get_int_max_str_digits', lambda: 4300)()} digits"


@dataclass
class Record:
    location: str  # "line 3", "row 3" or "item 3", 1-based
    values: dict[str, Any]


Item = Union[Record, RowProblem]


def _progress(iterable, total: int, desc: str):
    # lazy: tqdm (the CLI starts without it)
    from tqdm.auto import tqdm

    # Only worth a bar on large inputs; tqdm hides itself when stderr is not a terminal.
    return tqdm(iterable, total=total, desc=desc, unit="rec", disable=None if total > 20_000 else True, leave=False)


class FieldError(Exception):
    """A record (or one of its fields) that breaks the data contract: field, reason code and message of the
    RowProblem it becomes. The readers raise it for what they refuse, the formats for their fields."""

    def __init__(self, field: str, reason: str, message: str):
        super().__init__(message)
        self.field, self.reason, self.message = field, reason, message


def shown_key(key: str) -> str:
    """A key as a problem line names it: quoted when it is empty, holds invisible or control characters, or
    ``: `` (the line stays one line and its ``file:line: field:`` parts stay apart)."""
    return key if key and key.isprintable() and ": " not in key and key.strip() == key else repr(key)


class _DuplicateKey(dict):
    """An object in which a key occurred twice (``duplicate``); ``check_value`` reports it where it lies."""

    duplicate = ""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook``: a JSON object as a dict, marked when a key occurs twice (the later value would
    silently win)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            marked = _DuplicateKey(pairs)
            marked.duplicate = key
            return marked
        out[key] = value
    return out


def _first_surrogate(text: str) -> Optional[int]:
    for i, ch in enumerate(text):
        if "\ud800" <= ch <= "\udfff":
            return i
    return None


def check_value(value: Any, root: str = "") -> None:
    """Nesting depth and valid Unicode (keys and strings) of one record, without recursion: FieldError
    naming the field (``suffix[1]``, ``meta.note``) of the first problem."""
    todo: list[tuple[Any, str, int]] = [(value, root, 0)]
    while todo:
        node, where, depth = todo.pop()
        if isinstance(node, str):
            at = _first_surrogate(node)
            if at is not None:
                raise FieldError(where or "<record>", "invalid_unicode",
                                  f"lone surrogate U+{ord(node[at]):04X} at character {at + 1}: not valid Unicode text")
            continue
        if not isinstance(node, (dict, list)):
            continue
        if depth >= MAX_DEPTH:  # named by its top-level field: the full path would be a line of its own
            top = where.split(".")[0].split("[")[0] or "<record>"
            raise FieldError(top, "too_deep", f"nested deeper than {MAX_DEPTH} levels")
        if isinstance(node, _DuplicateKey):
            name = f"{where}.{shown_key(node.duplicate)}" if where else shown_key(node.duplicate)
            raise FieldError(name, "duplicate_key",
                              "the key occurs twice in one object (a JSON reader would keep only one of the values)")
        if isinstance(node, dict):
            for key, item in node.items():
                name = f"{where}.{shown_key(key)}" if where else shown_key(key)
                if isinstance(key, str) and _first_surrogate(key) is not None:
                    raise FieldError(name, "invalid_unicode", "the key holds a lone surrogate: not valid Unicode text")
                todo.append((item, name, depth + 1))
        else:
            todo += [(item, f"{where or '<record>'}[{i}]", depth + 1) for i, item in enumerate(node)]


def parse_json(text: str) -> Any:
    """One JSON text under the contract above. Raises FieldError (field ``<json>`` for what does not parse)."""
    try:
        value = json.loads(text, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as exc:
        raise FieldError("<json>", "malformed_json", f"malformed JSON: {exc.msg} (line {exc.lineno} column {exc.colno})")
    except RecursionError:
        raise FieldError("<json>", "too_deep", f"nested deeper than {MAX_DEPTH} levels") from None
    except ValueError:  # an integer beyond Python's digit limit (the only other ValueError json raises)
        raise FieldError("<json>", "malformed_json", TOO_LONG) from None
    check_value(value)
    return value


def _read_bytes(path: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise UserError(os_error_line(exc, path, "read")) from None
    return data[len(BOM):] if data.startswith(BOM) else data


def read_json_records(path: str, limit: int | None = None) -> Iterator[Item]:
    """JSON lines (one object per line), or a single JSON array of objects."""
    data = _read_bytes(path)
    name = os.path.basename(path)
    if data.lstrip()[:1] == b"[":
        yield from _json_array(name, data, limit)
        return
    lines = data.split(b"\n")
    count = 0
    for lineno, raw in enumerate(_progress(lines, len(lines), name), start=1):
        if not raw.strip():
            continue
        count += 1
        if limit and count > limit:
            break
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield RowProblem(name, f"line {lineno}", "<line>", "invalid_utf8", f"invalid UTF-8 at byte {exc.start}")
            continue
        try:
            value = parse_json(text)
        except FieldError as err:
            if count == 1 and err.reason == "malformed_json":
                whole = _one_object(name, data)
                if whole:
                    yield whole
                    return
            yield RowProblem(name, f"line {lineno}", err.field, err.reason, err.message)
            continue
        if not isinstance(value, dict):
            yield RowProblem(name, f"line {lineno}", "<record>", "wrong_type", f"expected a JSON object, got {type(value).__name__}")
            continue
        yield Record(f"line {lineno}", value)


def _json_array(name: str, data: bytes, limit: int | None) -> Iterator[Item]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        yield RowProblem(name, "item 1", "<file>", "invalid_utf8", f"invalid UTF-8 at byte {exc.start}")
        return
    try:
        items = json.loads(text, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as exc:
        yield RowProblem(name, f"line {exc.lineno}", "<json>", "malformed_json", f"malformed JSON: {exc.msg}")
        return
    except RecursionError:
        yield RowProblem(name, "line 1", "<json>", "too_deep", f"nested deeper than {MAX_DEPTH} levels")
        return
    except ValueError:
        yield RowProblem(name, "line 1", "<json>", "malformed_json", TOO_LONG)
        return
    for i, item in enumerate(items[:limit] if limit else items, start=1):
        if not isinstance(item, dict):
            yield RowProblem(name, f"item {i}", "<record>", "wrong_type", f"expected a JSON object, got {type(item).__name__}")
            continue
        try:
            check_value(item)
        except FieldError as err:
            yield RowProblem(name, f"item {i}", err.field, err.reason, err.message)
            continue
        yield Record(f"item {i}", item)


def _one_object(name: str, data: bytes) -> Optional[RowProblem]:
    """The problem of a file that holds one JSON object spread over lines (``{"data": [...]}``): not JSON
    lines, not an array of records. None when the file is not that."""
    if data.lstrip()[:1] != b"{":
        return None
    try:
        value = parse_json(data.decode("utf-8"))
    except (FieldError, UnicodeDecodeError):
        return None
    if not isinstance(value, dict):
        return None
    lists = [shown_key(k) for k, v in value.items() if isinstance(v, list)]
    hint = f"; its records may be the list under {lists[0]!r}: put them in a top-level array" if lists else ""
    return RowProblem(name, "line 1", "<file>", "wrong_type",
                      "the file is one JSON object, not JSON lines (one object per line) or an array of records"
                      + hint)


def _decode_bytes(values: dict[str, Any]) -> tuple[dict[str, Any], tuple[str, int] | None]:
    """Parquet/Arrow binary cells become str; the first field that is not UTF-8 is reported."""
    out = {}
    for key, value in values.items():
        if isinstance(value, (bytes, bytearray)):
            try:
                value = bytes(value).decode("utf-8")
            except UnicodeDecodeError as exc:
                return values, (key, exc.start)
        out[key] = value
    return out, None


def read_parquet_records(path: str, limit: int | None = None) -> Iterator[Item]:
    """A Parquet file, or a folder of Parquet files (read in name order)."""
    # lazy: pyarrow (the CLI starts without it)
    import pyarrow.parquet as pq

    files = (
        sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith(".parquet"))
        if os.path.isdir(path)
        else [path]
    )
    row = 0
    for file in files:
        name = os.path.basename(file)
        _read_bytes(file)[:0]  # an unreadable file is one line naming it, not pyarrow's error
        try:
            names = pq.read_schema(file).names
            twice = sorted({c for c in names if names.count(c) > 1})
            if twice:  # which of the values a record holds would be pyarrow's choice
                raise UserError(f"{name}: column(s) {twice} occur twice; rename or drop one of each")
            table = pq.read_table(file)
            records = table.to_pylist()
        except UserError:
            raise
        except Exception as exc:  # pyarrow raises several types for corrupt files and cells Python cannot hold
            raise UserError(f"{name}: not a readable Parquet file: {str(exc).splitlines()[0]}") from None
        for values in _progress(records, table.num_rows, name):
            row += 1
            if limit and row > limit:
                return
            yield _checked(name, f"row {row}", values)


def _checked(name: str, location: str, values: dict[str, Any]) -> Item:
    """A table row as a Record, or the RowProblem of its first undecodable or invalid cell."""
    decoded, bad = _decode_bytes(values)
    if bad:
        return RowProblem(name, location, bad[0], "invalid_utf8", f"invalid UTF-8 at byte {bad[1]}")
    try:
        check_value(decoded)
    except FieldError as err:
        return RowProblem(name, location, err.field, err.reason, err.message)
    return Record(location, decoded)


def read_hf_records(name_or_path: str, split: str, limit: int | None = None) -> Iterator[Item]:
    """A Hugging Face dataset: a `save_to_disk` folder here, or a hub name for users with network."""
    # lazy: datasets (the CLI starts without it)
    import datasets

    if os.path.isdir(name_or_path):
        ds = datasets.load_from_disk(name_or_path)
    else:
        try:
            ds = datasets.load_dataset(name_or_path, split=split)
        except Exception as exc:  # no network, no such dataset, no such split
            raise UserError(f"cannot load Hugging Face dataset '{name_or_path}' (split {split}): {exc}") from None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise UserError(f"{name_or_path}: no split '{split}' (has {sorted(ds)})")
        ds = ds[split]
    label = os.path.basename(os.path.normpath(name_or_path))
    n = len(ds) if not limit else min(limit, len(ds))
    for i in _progress(range(n), n, label):
        yield _checked(label, f"row {i + 1}", ds[i])


def is_hf_saved_dataset(path: str) -> bool:
    return os.path.isdir(path) and (
        os.path.exists(os.path.join(path, "dataset_info.json"))
        or os.path.exists(os.path.join(path, "dataset_dict.json"))
        or os.path.exists(os.path.join(path, "state.json"))
    )


def read_records(path: str, kind: str, split: str = "train", limit: int | None = None) -> Iterator[Item]:
    """Dispatch on the storage kind: json | parquet | hf."""
    if kind == "json":
        return read_json_records(path, limit)
    if kind == "parquet":
        return read_parquet_records(path, limit)
    if kind == "hf":
        return read_hf_records(path, split, limit)
    raise UserError(f"unknown storage kind '{kind}'")


def storage_kind(path: str) -> str:
    """json, parquet or hf, from the path (a path that does not exist is taken as a hub dataset name)."""
    if os.path.isdir(path):
        if is_hf_saved_dataset(path):
            return "hf"
        try:
            names = os.listdir(path)
        except OSError as exc:
            raise UserError(os_error_line(exc, path, "read")) from None
        if any(f.endswith(".parquet") for f in names):
            return "parquet"
        raise UserError(f"{path}: a folder with neither a saved Hugging Face dataset nor Parquet files")
    if os.path.isfile(path):
        return "parquet" if path.endswith(".parquet") else "json"
    if path.count("/") <= 1 and not path.startswith((".", "/")) and not os.path.splitext(path)[1]:
        return "hf"  # looks like a hub name, e.g. Anthropic/hh-rlhf
    raise UserError(f"input not found: {path}")
