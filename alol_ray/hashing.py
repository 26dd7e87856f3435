"""Identity: stable fingerprints of config sections, and content hashes of files, folders, models and
Python modules.

A stage is "up to date" when the fingerprint of everything it depends on matches the one its output
recorded. Everything on disk enters a fingerprint by **content** (a data file edited in place, a model
folder overwritten, a reward module changed: each changes the fingerprint). Hashing a 13 GB model folder
takes a while, so a file's hash is cached by its status (path, size, mtime, inode): in this process, and
on disk under ``$ALOL_CACHE_DIR/hashes`` (default ``~/.cache/alol-ray/hashes``), so a rerun of a stage
that is up to date costs a ``stat`` per file.

Standard library only: every layer imports it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
from typing import Any, Optional

CACHE_ENV = "ALOL_CACHE_DIR"
# Files inside stage outputs that say how the output was made, not what it is: stage markers (timestamps) and a
# reward model's evaluation report (rm.backbone.EVAL_FILE: held-out metrics and timings, rewritten by every
# training of the same model), so a judge retrained to the same weights leaves every stage it feeds up to date.
IGNORED_FILES = ("stage.json", "alol_rm_eval.json")

_MEMO: dict[tuple, str] = {}


def cache_dir() -> str:
    """Where alol-ray keeps caches that outlive one run directory (file hashes)."""
    return os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "alol-ray")


def fingerprint(*parts: Any) -> str:
    """A stable hash of config sections (dataclasses), mappings, sequences, strings and numbers.

    A config field declared as a path (``config_fields.path_field``) enters by what it names, not by its
    spelling: a data file or model folder by its content (``model_identity``), so an edited file changes
    the fingerprint and a moved one does not; where outputs go (storage, output) and runtime-only fields
    (``config_fields.runtime_field``: resources, retries, logging) do not enter at all, nor does a field added
    later (``config_fields.added_field``) while it holds its default.
    """

    def plain(x: Any) -> Any:
        if dataclasses.is_dataclass(x) and not isinstance(x, type):
            out = {}
            for f in dataclasses.fields(x):
                kind = f.metadata.get("path")
                if kind in ("storage", "output") or f.metadata.get("runtime"):
                    continue  # where outputs go, and how a stage runs (config_fields.runtime_field), change no result
                value = getattr(x, f.name)
                if added_at_default(f, value):
                    continue  # a setting added later, at the behaviour that runs made before it had
                if kind and value and value not in f.metadata.get("keywords", ()):
                    value = model_identity(value)
                out[f.name] = plain(value)
            return out
        if isinstance(x, dict):
            return {str(k): plain(v) for k, v in sorted(x.items(), key=lambda kv: str(kv[0]))}
        if isinstance(x, (list, tuple)):
            return [plain(v) for v in x]
        return x

    blob = json.dumps([plain(p) for p in parts], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def added_at_default(f: dataclasses.Field, value: Any) -> bool:
    """Whether a config field declared with ``config_fields.added_field`` holds its default, the behaviour that
    runs made before the field existed had: then it enters no fingerprint."""
    return bool(f.metadata.get("added")) and value == f.default


def _stat_key(path: str) -> tuple:
    st = os.stat(path)
    return (os.path.abspath(path), st.st_size, st.st_mtime_ns, st.st_ino)


def file_sha(path: str) -> str:
    """SHA-256 of a file's bytes, cached by the file's status (in memory and on disk)."""
    key = _stat_key(path)
    if key in _MEMO:
        return _MEMO[key]
    disk = os.path.join(cache_dir(), "hashes", hashlib.sha256(repr(key).encode()).hexdigest()[:32])
    try:
        with open(disk, encoding="ascii") as fh:
            digest = fh.read().strip()
        if len(digest) == 64:
            _MEMO[key] = digest
            return digest
    except OSError:
        pass
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    digest = h.hexdigest()
    _MEMO[key] = digest
    try:  # best effort: a read-only home only costs a re-hash next time
        os.makedirs(os.path.dirname(disk), exist_ok=True)
        tmp = f"{disk}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="ascii") as fh:
            fh.write(digest)
        os.replace(tmp, disk)
    except OSError:
        pass
    return digest


def folder_hash(folder: str) -> str:
    """Hash of a folder: every file's relative path and content. Hidden entries, ``IGNORED_FILES`` and
    ``__pycache__`` are skipped (they hold timestamps, reports and resumable work, not what the folder *is*)."""
    h = hashlib.sha256()
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__pycache__")
        for name in sorted(files):
            if name.startswith(".") or name in IGNORED_FILES:
                continue
            path = os.path.join(root, name)
            h.update(os.path.relpath(path, folder).encode() + b"\0" + file_sha(path).encode() + b"\0")
    return h.hexdigest()[:24]


def path_identity(path: str) -> str:
    """``file:<hash>`` / ``dir:<hash>`` of local content; ``missing:<path>`` when there is none."""
    if os.path.isfile(path):
        return f"file:{file_sha(path)[:24]}"
    if os.path.isdir(path):
        return f"dir:{folder_hash(path)}"
    return f"missing:{path}"


def hub_revision(repo_id: str, kind: str = "model") -> Optional[str]:
    """The commit of a hub repository in the local Hugging Face cache (None if it is not cached)."""
    try:
        # lazy: huggingface_hub (the CLI starts without it)
        from huggingface_hub import constants
    except ImportError:
        return None
    ref = os.path.join(constants.HF_HUB_CACHE, f"{kind}s--" + repo_id.replace("/", "--"), "refs", "main")
    try:
        with open(ref, encoding="utf-8") as fh:
            return fh.read().strip() or None
    except OSError:
        return None


def model_identity(name_or_path: str, revision: Optional[str] = None) -> str:
    """``dir:<hash of files>`` / ``file:<hash>`` for local content, ``hub:<id>@<revision>`` for a hub model or
    dataset (the commit of the local hub cache when no revision is given)."""
    if os.path.exists(name_or_path):
        return path_identity(name_or_path)
    return f"hub:{name_or_path}@{revision or hub_revision(name_or_path) or 'unresolved'}"


def module_identity(module: str) -> str:
    """Hash of a Python module's source (a package: its whole folder); ``unknown`` if it cannot be found."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return "unknown"
    if spec is None or not spec.origin or not os.path.exists(spec.origin):
        return "unknown"
    if spec.submodule_search_locations:  # a package: its __init__ and everything beside it
        return path_identity(os.path.dirname(spec.origin))
    return path_identity(spec.origin)
