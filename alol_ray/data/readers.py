"""Raw record readers: JSON lines / JSON arrays, Parquet, Hugging Face datasets.

A reader yields ``Record``s (a dict with its 1-based location) and reports records it cannot read
(invalid UTF-8, malformed JSON, not an object) as ``RowProblem``s. Field semantics are the formats'
business (alol_ray.data.formats).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Iterator, Union

from alol_ray.errors import RowProblem, UserError


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


def read_json_records(path: str, limit: int | None = None) -> Iterator[Item]:
    """JSON lines (one object per line), or a single JSON array of objects."""
    with open(path, "rb") as fh:
        data = fh.read()
    name = os.path.basename(path)
    if data.lstrip()[:1] == b"[":
        try:
            items = json.loads(data.decode("utf-8"))
        except UnicodeDecodeError as exc:
            yield RowProblem(name, "item 1", "<file>", "invalid_utf8", f"invalid UTF-8 at byte {exc.start}")
            return
        except json.JSONDecodeError as exc:
            yield RowProblem(name, f"line {exc.lineno}", "<json>", "malformed_json", f"malformed JSON: {exc.msg}")
            return
        for i, item in enumerate(items[:limit] if limit else items, start=1):
            if isinstance(item, dict):
                yield Record(f"item {i}", item)
            else:
                yield RowProblem(name, f"item {i}", "<record>", "wrong_type", f"expected a JSON object, got {type(item).__name__}")
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
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            yield RowProblem(name, f"line {lineno}", "<json>", "malformed_json", f"malformed JSON: {exc.msg} (column {exc.colno})")
            continue
        if not isinstance(value, dict):
            yield RowProblem(name, f"line {lineno}", "<record>", "wrong_type", f"expected a JSON object, got {type(value).__name__}")
            continue
        yield Record(f"line {lineno}", value)


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
        try:
            table = pq.read_table(file)
        except Exception as exc:  # pyarrow raises several types for corrupt files
            raise UserError(f"{name}: not a readable Parquet file: {exc}") from None
        for values in _progress(table.to_pylist(), table.num_rows, name):
            row += 1
            if limit and row > limit:
                return
            decoded, bad = _decode_bytes(values)
            if bad:
                yield RowProblem(name, f"row {row}", bad[0], "invalid_utf8", f"invalid UTF-8 at byte {bad[1]}")
                continue
            yield Record(f"row {row}", decoded)


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
        decoded, bad = _decode_bytes(ds[i])
        if bad:
            yield RowProblem(label, f"row {i + 1}", bad[0], "invalid_utf8", f"invalid UTF-8 at byte {bad[1]}")
            continue
        yield Record(f"row {i + 1}", decoded)


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
        if any(f.endswith(".parquet") for f in os.listdir(path)):
            return "parquet"
        raise UserError(f"{path}: a folder with neither a saved Hugging Face dataset nor Parquet files")
    if os.path.isfile(path):
        return "parquet" if path.endswith(".parquet") else "json"
    if path.count("/") <= 1 and not path.startswith((".", "/")) and not os.path.splitext(path)[1]:
        return "hf"  # looks like a hub name, e.g. Anthropic/hh-rlhf
    raise UserError(f"input not found: {path}")
