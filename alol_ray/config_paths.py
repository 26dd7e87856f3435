"""Paths in the config: which fields name something on disk (``config_fields.path_field`` declares them, with their
kind: ``storage``, ``output``, ``data`` or ``model``), how each is resolved against the working directory once, in
the driver, and how a report shows them again as a user would type them.

Actors and Train workers, which run elsewhere, only ever see absolute paths, hub ids or URIs; a local path that
does not exist is refused when the config is loaded, naming its key.
"""

from __future__ import annotations

import copy
import logging
import os
from dataclasses import fields, is_dataclass
from typing import Any, Optional

from alol_ray.errors import ConfigError
from alol_ray.locations import check_readable, check_writable_folder

JOB_STORAGE_ENV = "ALOL_JOB_STORAGE"  # where a Ray job's relative `storage` goes (default ~/alol-runs)


def path_fields(node: Any, prefix: str = ""):
    """(dotted key, owner dataclass, field name, kind, keywords) of every path field under ``node``."""
    if is_dataclass(node):
        for f in fields(node):
            value = getattr(node, f.name)
            if "path" in f.metadata:
                yield f"{prefix}{f.name}", node, f.name, f.metadata["path"], f.metadata.get("keywords", ())
            else:
                yield from path_fields(value, f"{prefix}{f.name}.")
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from path_fields(item, f"{prefix}{i}.")


def has_scheme(value: str) -> bool:
    """``scheme://...`` with any scheme (s3, gs, hf, http, ...): not a local path. Whether storage can live
    there is ``storage.is_uri`` (the schemes pyarrow opens)."""
    scheme, sep, _ = value.partition("://")
    return bool(sep) and scheme.isalnum()


_FILE_SUFFIXES = (".json", ".jsonl", ".parquet", ".csv", ".txt", ".arrow", ".safetensors", ".bin", ".yaml", ".yml",
                  ".gguf", ".whl", ".zip")


def looks_local(value: str) -> bool:
    """A path the user means on this machine (a hub id is ``name`` or ``owner/name``)."""
    return (value.startswith(("/", "./", "../", "~", ".\\")) or value in (".", "..") or value.count("/") > 1
            or value.lower().endswith(_FILE_SUFFIXES) or (os.sep != "/" and os.sep in value))


def in_ray_job() -> bool:
    """True in the driver of a `ray job submit` job (Ray sets this variable for job drivers only)."""
    return "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ


def job_output_base() -> str:
    """Where relative outputs of a `ray job submit` job go (its working directory is deleted with the job)."""
    return os.path.expanduser(os.environ.get(JOB_STORAGE_ENV) or os.path.join("~", "alol-runs"))


def resolve_path(value: str, kind: str, key: str, cwd: Optional[str] = None, notes: Optional[list] = None) -> str:
    """One path field resolved (see ``resolve_paths``); ConfigError for a local path that does not exist."""
    if not value:
        return value
    if has_scheme(value):
        named = key if key == value else f"{key}: {value!r}"
        if kind == "output":
            raise ConfigError(f"{named} is a URI; give a local folder (only `storage` can be a bucket)")
        if kind == "data":
            raise ConfigError(f"{named} is a URI; data sources are local files or folders, or hub dataset names: "
                              "copy it to this machine first")
        return value
    cwd = cwd or os.getcwd()
    expanded = os.path.expanduser(value)
    if kind in ("storage", "output"):
        if in_ray_job() and not os.path.isabs(expanded):
            resolved = os.path.normpath(os.path.join(job_output_base(), expanded))
            note = (f"{key}={value} is relative and this is a Ray job, whose working directory Ray deletes with the "
                    f"job: it goes to {resolved} (set {JOB_STORAGE_ENV} or an absolute {key})")
            logging.getLogger("alol").info(f"[config] {note}")
            if notes is not None:
                notes.append(note)
            return resolved
        resolved = os.path.normpath(os.path.join(cwd, expanded))
        if kind == "output":  # storage is checked by the commands that write a run (preflight.check_locations)
            check_writable_folder(resolved, key)
        return resolved
    local = os.path.join(cwd, expanded)
    if os.path.exists(local):
        check_readable(local, key)  # now, not when a stage or an actor first opens it
        return os.path.normpath(local)
    if looks_local(value):
        raise ConfigError(f"{key}: {value!r} is not a file or folder (relative paths are taken from {cwd})")
    return value  # a hub model or dataset id


def local_file(value: str, key: str, cwd: Optional[str] = None) -> str:
    """A file the user names on the command line, made absolute; ConfigError when there is none."""
    if has_scheme(value):
        raise ConfigError(f"{key}: {value!r} is a URI; give a local file")
    path = os.path.normpath(os.path.join(cwd or os.getcwd(), os.path.expanduser(value)))
    if not os.path.isfile(path):
        raise ConfigError(f"{key}: no such file: {value} (relative paths are taken from {cwd or os.getcwd()})")
    check_readable(path, key)
    return path


def resolve_paths(cfg: Any, cwd: Optional[str] = None) -> list[str]:
    """Make every path field of ``cfg`` absolute (in place), once, in the driver.

    storage / output: joined with ``cwd``; inside a `ray job submit` job a relative one would land in the
    job's working directory, which Ray deletes with the job, so it goes under ``$ALOL_JOB_STORAGE``
    (default ``~/alol-runs``) instead. data / model: an existing file or folder becomes absolute; a
    path-like value that does not exist is an error; anything else is a hub id and stays as it is.
    Returns (and logs) notes worth telling the user (the job storage rule).
    """
    notes: list[str] = []
    for key, owner, name, kind, keywords in list(path_fields(cfg)):
        value = getattr(owner, name)
        if value not in keywords:
            setattr(owner, name, resolve_path(value, kind, key, cwd, notes))
    return notes


def portable(cfg: Any, base: Optional[str] = None) -> Any:
    """A copy of ``cfg`` whose absolute paths read as they would be typed in ``base`` (the working
    directory): relative below it, ``~/...`` below the home folder. For published reports."""
    base = os.path.abspath(base or os.getcwd())
    home = os.path.expanduser("~")
    out = copy.deepcopy(cfg)
    for _, owner, name, _, _ in path_fields(out):
        setattr(owner, name, portable_path(getattr(owner, name), base, home))
    return out


def portable_path(value: str, base: Optional[str] = None, home: Optional[str] = None) -> str:
    """One absolute path as ``portable`` shows it."""
    if not value or not os.path.isabs(value):
        return value
    base = os.path.abspath(base or os.getcwd())
    home = home or os.path.expanduser("~")
    if value == base or value.startswith(base.rstrip(os.sep) + os.sep):
        return os.path.relpath(value, base)
    if value.startswith(home.rstrip(os.sep) + os.sep):
        return "~" + value[len(home.rstrip(os.sep)):]
    return value
