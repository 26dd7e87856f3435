"""Loading a config: YAML and dotted overrides merged by OmegaConf into a dataclass schema, with what users need on
top: an unknown key names the closest valid key, a moved key names where it went, a value outside a field's
choices lists them, NaN and infinity are refused, and path fields resolve against the working directory.
Also the way back: a config as YAML (every run directory keeps one) and the keys a user set.

Generic over the schema; ``alol_ray.config`` gives ``RunConfig`` as the default (``load_config`` there).
"""

from __future__ import annotations

import difflib
import math
import os
from dataclasses import fields, is_dataclass
from typing import Any, Optional

from alol_ray.atomic import write_text
from alol_ray.config_fields import choice_error, choices_at
from alol_ray.config_paths import resolve_paths
from alol_ray.errors import ConfigError
from alol_ray.locations import os_error_line


# ---------------------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------------------


def _valid_keys(schema_cls: type, prefix: str = "") -> list[str]:
    """Every dotted key a config of this dataclass accepts (lists of dataclasses as `key.0.sub`)."""
    keys: list[str] = []
    for f in fields(schema_cls):
        full = f"{prefix}{f.name}"
        keys.append(full)
        default = f.default_factory() if callable(f.default_factory) else f.default  # type: ignore[misc]
        if is_dataclass(default):
            keys += _valid_keys(type(default), full + ".")
        elif isinstance(default, list) and default and is_dataclass(default[0]):
            keys += _valid_keys(type(default[0]), full + ".0.")
    return keys


# Keys that moved: (section class, old name) -> where they live now ("" = removed, with the reason).
MOVED_KEYS: dict[tuple[str, str], str] = {
    ("TrainConfig", "clip_eps"): "alol.clip_eps",
    ("TrainConfig", "clip"): "alol.clip",
    ("TrainConfig", "kl_beta"): "alol.kl_beta",
    ("TrainConfig", "gold_u"): "gold.u (GOLD) or alol.r_gold_u (r_gold)",
    ("TrainConfig", "gold_sync_every"): "gold.sync_every",
    ("TrainConfig", "gold_reward"): "gold.reward",
    ("TrainConfig", "gold_lower_bound_b"): "gold.lower_bound_b",
    ("TrainConfig", "gold_truncation_c"): "gold.truncation_c",
    ("TrainConfig", "gold_horizon"): "gold.horizon",
    ("TrainConfig", "dpo_beta"): "dpo.beta",
    ("TrainConfig", "dpo_reference_free"): "dpo.reference_free",
    ("TrainConfig", "pro_sft_weight"): "pro.sft_weight",
    ("TrainConfig", "stop_at_step"): "",
    ("TrainConfig", "crash_at_step"): "",
}
_REMOVED_WHY = {
    "stop_at_step": "it is the flag `alol train --stop-at-step N` now (a run stopped early is not marked done)",
    "crash_at_step": "it was a test hook; tests inject faults through the ALOL_FAULTS environment variable",
}


def _unknown_key_error(schema_cls: type, key: str, origin: str) -> ConfigError:
    valid = _valid_keys(schema_cls)
    generic = ".".join("0" if part.isdigit() else part for part in key.split("."))
    close = difflib.get_close_matches(generic, valid, n=1, cutoff=0.5)
    if not close:  # a wrong last segment is the common typo: compare it against its siblings
        parent, _, leaf = generic.rpartition(".")
        siblings = [k for k in valid if k.rpartition(".")[0] == parent]
        leaves = difflib.get_close_matches(leaf, [k.rpartition(".")[2] for k in siblings], n=1, cutoff=0.4)
        close = [f"{parent}.{leaves[0]}" if parent else leaves[0]] if leaves else []
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return ConfigError(f"unknown config key '{key}' ({origin}){hint}")


def _moved_key_error(schema_cls: type, prefix: str, key: str, origin: str) -> Optional[ConfigError]:
    moved = MOVED_KEYS.get((schema_cls.__name__, key))
    if moved is None:
        return None
    if not moved:
        return ConfigError(f"config key '{prefix}{key}' ({origin}) was removed: {_REMOVED_WHY[key]}")
    return ConfigError(f"config key '{prefix}{key}' ({origin}) moved to '{prefix}{moved}'")


def _check_keys(root: type, schema_cls: type, node: Any, origin: str, prefix: str = "") -> None:
    """Reject keys the schema does not have, before OmegaConf's less helpful message."""
    if not isinstance(node, dict):
        return
    names = {f.name: f for f in fields(schema_cls)}
    for key, value in node.items():
        full = f"{prefix}{key}"
        if key not in names:
            raise _moved_key_error(schema_cls, prefix, key, origin) or _unknown_key_error(root, full, origin)
        f = names[key]
        default = f.default_factory() if callable(f.default_factory) else f.default  # type: ignore[misc]
        if is_dataclass(default):
            _check_keys(root, type(default), value, origin, full + ".")
        elif isinstance(default, dict) or value == {}:
            continue  # a free-form mapping (e.g. params), or the leaf of a dotted override
        elif isinstance(default, list) and default and is_dataclass(default[0]):
            # a YAML list, or the {"0": ...} mapping a dotted override like `data.sources.0.path=x` makes
            items = enumerate(value) if isinstance(value, list) else (value or {}).items()
            for i, item in items:
                _check_keys(root, type(default[0]), item, origin, f"{full}.{i}.")


def _check_finite(node: Any, prefix: str = "") -> None:
    """No NaN or infinity anywhere: every float of the config is a number a stage can compute with."""
    if is_dataclass(node):
        for f in fields(node):
            _check_finite(getattr(node, f.name), f"{prefix}{f.name}.")
    elif isinstance(node, list):
        for i, item in enumerate(node):
            _check_finite(item, f"{prefix}{i}.")
    elif isinstance(node, dict):
        for key, item in node.items():
            _check_finite(item, f"{prefix}{key}.")
    elif isinstance(node, float) and not math.isfinite(node):
        raise ConfigError(f"{prefix.rstrip('.')} must be a finite number, got {node}")


def load_config(
    path: Optional[str], overrides: Optional[list[str]], schema: type, *, resolve: bool = True,
    cwd: Optional[str] = None,
) -> Any:
    """Load `schema` from YAML (optional) with dotted overrides (`train.lr=1e-5`) applied last.

    Raises ConfigError (exit 2 in the CLI) for unknown or moved keys (naming the closest valid or the new
    key), values of the wrong type, out-of-range or non-finite values, and local paths that do not exist.
    With ``resolve`` (the default) every path field is resolved against ``cwd`` (default: the working
    directory; see ``resolve_paths``). Returns a plain dataclass instance whose checks have run.
    """
    # lazy: yaml, omegaconf (the CLI starts without them)
    import yaml
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    base = OmegaConf.structured(schema)
    layers = []
    if path:
        if not os.path.exists(path):
            raise ConfigError(f"config file not found: {path}")
        try:
            with open(path, encoding="utf-8") as fh:
                top = yaml.safe_load(fh)
        except OSError as exc:
            raise ConfigError(os_error_line(exc, path, "read")) from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not UTF-8 text (invalid byte at position {exc.start})") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
        if top is not None and not isinstance(top, dict):  # OmegaConf would read a word as a key, a list as a list
            raise ConfigError(f"{path}: the top level must be a mapping of config sections (data:, train:, ...), "
                              f"got a {type(top).__name__}")
        try:
            loaded = OmegaConf.load(path)
        except Exception as exc:  # yaml.YAMLError and friends
            raise ConfigError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
        raw = OmegaConf.to_container(loaded, resolve=False)
        if raw is not None and not isinstance(raw, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of config sections")
        _check_keys(schema, schema, raw or {}, path)
        layers.append(loaded)
    parsed: list[tuple[str, Any]] = []
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value (e.g. train.lr=1e-5)")
        key, text = item.split("=", 1)
        key = key.lstrip("+")
        nested: Any = {}
        for part in reversed(key.split(".")):
            nested = {part: nested}
        _check_keys(schema, schema, nested, "command-line override")
        try:
            parsed.append((key, yaml.safe_load(text) if text else ""))
        except yaml.YAMLError:
            raise ConfigError(f"override '{item}': the value is not valid YAML") from None
    try:
        merged = OmegaConf.merge(base, *layers)
        for key, value in parsed:  # update() understands list indices (data.sources.0.path=...)
            OmegaConf.update(merged, key, value, merge=True)
        cfg = OmegaConf.to_object(merged)
    except ConfigError:
        raise
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", "") or ""
        if choices_at(schema, key):  # a value outside a Literal field's choices
            raise choice_error(key, getattr(exc, "value", None), choices_at(schema, key)) from None
        msg = str(exc).splitlines()[0]
        raise ConfigError(f"invalid config value{f' for {key}' if key else ''}: {msg}") from None
    _check_finite(cfg)
    if resolve:
        resolve_paths(cfg, cwd)
    return cfg


# ---------------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------------


def to_yaml(cfg: Any) -> str:
    """The resolved config as YAML (written into every run directory)."""
    # lazy: omegaconf (the CLI starts without it)
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def save_config(cfg: Any, path: str) -> None:
    write_text(path, to_yaml(cfg))


def non_defaults(cfg: Any, schema: type) -> dict:
    """The keys of ``cfg`` whose values differ from the schema's defaults, as a nested mapping."""
    # lazy: omegaconf (the CLI starts without it)
    from omegaconf import OmegaConf

    ours = OmegaConf.to_container(OmegaConf.structured(cfg))
    defaults = OmegaConf.to_container(OmegaConf.structured(schema))

    def diff(a: Any, b: Any) -> Any:
        if isinstance(a, dict) and isinstance(b, dict):
            out = {k: diff(v, b.get(k, _MISSING)) for k, v in a.items()}
            out = {k: v for k, v in out.items() if v is not _SAME}
            return out or _SAME
        if isinstance(a, list) and a and isinstance(a[0], dict) and isinstance(b, list):
            # each item against the schema's default item: only what the user set shows
            if a == b:
                return _SAME
            items = [diff(x, b[0] if b else {}) for x in a]
            return [{} if v is _SAME else v for v in items]
        return _SAME if a == b else a

    result = diff(ours, defaults)
    return {} if result is _SAME else result


_MISSING, _SAME = object(), object()
