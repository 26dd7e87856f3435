"""Writes that a crash cannot leave half done: a temporary file in the same folder, then ``os.replace``.

A reader (another stage, a rerun, a report) sees either the old file or the new one, never a mixture.
JSON lines files are the one exception by design: they grow by appends, so a crash can cut the last
line short; ``read_jsonl`` skips such a line.

Standard library only (pandas is imported by ``write_parquet`` when it is called).
"""

from __future__ import annotations

import json
import math
import os
import uuid
from typing import Any, Callable


def _tmp_path(path: str) -> str:
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f".{name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def atomic_write(path: str, write: Callable[[str], Any]) -> str:
    """Call ``write(tmp_path)`` and move the result onto ``path`` in one step. Returns ``path``."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = _tmp_path(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def write_text(path: str, text: str) -> str:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())

    return atomic_write(path, write)


def finite_json(obj: Any) -> Any:
    """``obj`` with non-finite floats replaced by None (JSON has no NaN)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    return obj


def write_json(path: str, obj: Any) -> str:
    return write_text(path, json.dumps(finite_json(obj), indent=2, default=str) + "\n")


def read_json(path: str, default: Any = None) -> Any:
    """The parsed file, or ``default`` when it is missing or not valid JSON (a file from before a crash)."""
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return default


def write_parquet(path: str, frame) -> str:
    return atomic_write(path, lambda tmp: frame.to_parquet(tmp, index=False))


def append_jsonl(path: str, record: dict) -> None:
    """One JSON line, appended and flushed (a crash loses at most this line, which ``read_jsonl`` skips)."""
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(finite_json(record)) + "\n")
        fh.flush()


def read_jsonl(path: str) -> list[dict]:
    """Every complete JSON line of a file ([] if it does not exist)."""
    if not os.path.exists(path):
        return []
    records = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if not line.endswith("\n"):
                break  # the last append was cut short by a crash
            if line.strip():
                records.append(json.loads(line))
    return records


def truncate_jsonl(path: str, last_step: int, key: str = "train/step") -> None:
    """Keep the records up to ``last_step`` (a resumed run writes the later ones again)."""
    if os.path.exists(path):
        kept = [r for r in read_jsonl(path) if r.get(key, 0) <= last_step]
        write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
