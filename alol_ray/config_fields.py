"""Config fields that declare their own checks: a field's choices are its ``Literal`` type, its bounds are declared
with it (``bounded``), and one function, ``check_fields``, turns a value outside either into the one-line error
that names the key, what it accepts and what it got. A section's ``__post_init__`` calls it first; what is left
there is the rules between fields.

    sampler: Literal["auto", "uniform"] = "auto"   # -> train.sampler must be one of ['auto', 'uniform'], got 'x'
    lr: float = bounded(5e-4, gt=0)                # -> train.lr must be > 0, got 0.0
    momentum: float = bounded(0.0, ge=0, lt=1)     # -> train.momentum must be in [0, 1), got 1.5
    limit: Optional[int] = bounded(None, ge=1)     # -> ... must be >= 1 (or null), got 0

When a YAML file or an override sets a ``Literal`` field, OmegaConf refuses a value outside it before the section
is built; ``config.load_config`` words that refusal with ``choice_error`` too, so both read the same.
"""

from __future__ import annotations

import difflib
import functools
import re
import typing
from dataclasses import MISSING, field, fields
from typing import Any, Optional

from alol_ray.errors import ConfigError

Bounds = tuple[Optional[float], Optional[float], Optional[float], Optional[float]]  # ge, gt, le, lt


# What a field's metadata says (read by config_paths, hashing and train.trainer under these names):
#   "path": storage | output | data | model, with "keywords"   (path_field)
#   "runtime": True: the field enters no fingerprint            (runtime_field, bounded(runtime=True))
#   "bounds": (ge, gt, le, lt)                                   (bounded; check_fields enforces them)
#   "added": True: at its default the field enters no fingerprint  (added_field)


def bounded(default: Any = MISSING, *, ge: Optional[float] = None, gt: Optional[float] = None,
            le: Optional[float] = None, lt: Optional[float] = None, runtime: bool = False) -> Any:
    """A numeric field with its bounds (``None``, where the type allows it, is always accepted). ``runtime``: as
    ``runtime_field``, the field enters no fingerprint."""
    return field(default=default, metadata={"bounds": (ge, gt, le, lt), **({"runtime": True} if runtime else {})})


def runtime_field(default: Any = MISSING, *, default_factory: Any = MISSING):
    """A config field that changes how a stage runs (resources, retries, logging), never what it computes: it
    enters no fingerprint (``hashing.fingerprint`` leaves it out), so a rerun that changes only it resumes."""
    return field(default=default, default_factory=default_factory, metadata={"runtime": True})


def added_field(default: Any, *, ge: Optional[float] = None, gt: Optional[float] = None,
                le: Optional[float] = None, lt: Optional[float] = None) -> Any:
    """A setting added after runs were made with a fixed behaviour, with that behaviour as its default: at the
    default it enters no fingerprint (``hashing.fingerprint`` leaves it out), so the stages built before it
    existed stay up to date; any other value enters as usual. Declare every new field that changes results this
    way (a plain field would make every existing run out of date on its next rerun). Bounds as ``bounded``."""
    bounds = (ge, gt, le, lt)
    return field(default=default, metadata={"added": True, **({"bounds": bounds} if any(
        b is not None for b in bounds) else {})})


def path_field(default: str, kind: str, *keywords: str):
    """A config field that names a path. ``kind``: storage | output (written) | data | model (read; also a
    hub id); ``keywords`` are values with a meaning of their own (``builtin``, ``reference``, ``minilm``)."""
    return field(default=default, metadata={"path": kind, "keywords": keywords})


@functools.cache
def type_hints(cls: type) -> dict[str, Any]:
    """The resolved annotations of a config dataclass (its module imports what they name)."""
    return typing.get_type_hints(cls)


def choices_of(annotation: Any) -> tuple:
    """The values a ``Literal[...]`` or ``Optional[Literal[...]]`` allows; ``()`` for any other type."""
    if typing.get_origin(annotation) is typing.Literal:
        return typing.get_args(annotation)
    if typing.get_origin(annotation) is typing.Union:
        for arg in typing.get_args(annotation):
            found = choices_of(arg)
            if found:
                return found
    return ()


def nullable(annotation: Any) -> bool:
    return typing.get_origin(annotation) is typing.Union and type(None) in typing.get_args(annotation)


def choice_error(key: str, value: Any, options: tuple) -> ConfigError:
    close = difflib.get_close_matches(str(value), [str(o) for o in options], n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return ConfigError(f"{key} must be one of {list(options)}, got {value!r}{hint}")


def describe(bounds: Bounds) -> str:
    """``(0, None, None, 1)`` -> ``in [0, 1)``; ``(1, None, None, None)`` -> ``>= 1``."""
    ge, gt, le, lt = bounds
    low = f"[{ge:g}" if ge is not None else f"({gt:g}" if gt is not None else ""
    high = f"{le:g}]" if le is not None else f"{lt:g})" if lt is not None else ""
    if low and high:
        return f"in {low}, {high}"
    if low:
        return f">= {ge:g}" if ge is not None else f"> {gt:g}"
    return f"<= {le:g}" if le is not None else f"< {lt:g}"


def within(value: float, bounds: Bounds) -> bool:
    """Inside the bounds (NaN never is)."""
    ge, gt, le, lt = bounds
    return ((ge is None or value >= ge) and (gt is None or value > gt) and (le is None or value <= le)
            and (lt is None or value < lt))


def field_key(where: str, name: str) -> str:
    """``train`` + ``lr`` -> ``train.lr``; a section without a fixed key names itself (``actor pool:``) instead."""
    return f"{where} {name}" if where.endswith(":") else f"{where}.{name}" if where else name


def check_fields(section: Any, where: str) -> None:
    """ConfigError for the first field of ``section`` (a config dataclass) outside its ``Literal`` choices or its
    declared bounds; ``where`` is the section's key (``train``, ``model.lora``) or, for a section that sits in a
    list or in several places, a name ending in ``:`` (``data source builtin:``)."""
    hints = type_hints(type(section))
    for f in fields(section):
        value = getattr(section, f.name)
        options = choices_of(hints[f.name])
        if options and value not in options and not (value is None and nullable(hints[f.name])):
            raise choice_error(field_key(where, f.name), value, options)
        bounds = f.metadata.get("bounds")
        if bounds is not None and value is not None and not within(value, bounds):
            null = " (or null)" if nullable(hints[f.name]) else ""
            raise ConfigError(f"{field_key(where, f.name)} must be {describe(bounds)}{null}, got {value}")


def choices_at(schema: type, key: str) -> tuple:
    """The ``Literal`` choices of the field at a dotted key of a config schema (list indices allowed:
    ``data.sources.0.format``, ``data.sources[0].format``); ``()`` where there are none."""
    cls: Any = schema
    annotation: Any = None
    for part in re.sub(r"\[(\d+)\]", r".\1", key).split("."):
        if part.isdigit() and annotation is not None:  # an item of a list[Section]
            args = typing.get_args(annotation)
            cls = args[0] if args else None
            continue
        if not isinstance(cls, type) or part not in type_hints(cls):
            return ()
        annotation = type_hints(cls)[part]
        cls = annotation
    return choices_of(annotation)
