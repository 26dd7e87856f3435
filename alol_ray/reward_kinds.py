"""Reward component kinds by name: what each needs, how it scores, what its cached scores depend on.

    reward_kind_names() -> ["builtin_task", "distinct", ...]     kind_of(comp).needs_model -> True for hf_classifier
    register_reward_kind(RewardKind("my_kind", function="my_pkg.rewards:my_score"))

A kind scores (prompt, response) rows in one of two ways:

- ``function``: "module:function" called as ``fn(prompts, responses, **params) -> float64 [N]``; its keyword-only
  arguments are the params a component may set (checked in the driver, before any actor starts). The built-in
  scorers (length, distinct, tfidf, builtin_task) are such functions in ``alol_ray/scoring/scorers.py``.
- ``source``: "module:Class" built as ``Class(comp, device=..., bf16=...)``, a callable ``(prompts, responses) ->
  float64 [N]``, for kinds that read more of their component than ``params`` (hf_classifier, python).

``reward.components[].kind`` takes any registered name: the config, preflight, the RewardScorer and the scored
table's cache read this table, nothing else lists the kinds. Standard library only (the config checks names
without torch); functions and classes are imported where a component is scored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

from alol_ray.engines import resolve  # noqa: F401  (one "module:attribute" loader for both tables)
from alol_ray.errors import ConfigError
from alol_ray.hashing import model_identity, module_identity


def no_fields(comp, where: str) -> None:
    return None


def source_of_function(comp, kind: "RewardKind", precision: str) -> dict:
    """A function kind's scores depend on its module's source."""
    return {"source": module_identity(function_module(kind.function))}


@dataclass(frozen=True)
class RewardKind:
    """One kind of reward component (see the module docs)."""

    name: str
    function: Any = ""  # "module:function" (prompts, responses, **params) -> float64 [N], or the function
    source: Any = ""  # "module:Class" (comp, device=, bf16=) -> callable (prompts, responses) -> float64 [N]
    # Loads a model (torch): the reward pool's GPU, bf16 and threads apply, `model` is a hub id or folder that
    # preflight resolves and whose alol_reward.json fills in the component, and the scored table checks it
    # against rewards the data carries (agreement sample).
    needs_model: bool = False
    # (comp, where) -> None: what the config checks of the component's fields (ConfigError, one line)
    validate: Callable[[Any, str], None] = no_fields
    # "module:function" (comp) -> None: what the driver checks before any actor starts (imports allowed); a
    # function kind's params are checked against its signature without this
    check: Any = ""
    # (comp, kind, precision) -> what a raw score depends on besides kind and params (enters the cache key);
    # precision: "float32" | "bfloat16" (what a model kind runs in)
    identity: Callable[[Any, "RewardKind", str], dict] = source_of_function

    def __post_init__(self) -> None:
        if bool(self.function) == bool(self.source):
            raise ValueError(f"reward kind {self.name}: give exactly one of function and source")


def function_module(ref: Any) -> str:
    return ref.partition(":")[0] if isinstance(ref, str) else ref.__module__


REWARD_KINDS: dict[str, RewardKind] = {}


def register_reward_kind(kind: RewardKind) -> RewardKind:
    REWARD_KINDS[kind.name] = kind
    return kind


def reward_kind_names() -> list[str]:
    return list(REWARD_KINDS)


def kind_of(comp) -> RewardKind:
    """The kind of a reward component (a RewardComponentConfig, or anything with ``kind``)."""
    return REWARD_KINDS[comp.kind]


def needs_model(comp) -> bool:
    """Whether a component loads a model (a kind the config accepted; an unknown one loads nothing)."""
    kind = REWARD_KINDS.get(getattr(comp, "kind", None))
    return bool(kind and kind.needs_model)


# ------------------------------------------------------------------------------------------ built-in kinds


def _validate_classifier(comp, where: str) -> None:
    if not comp.model:
        raise ConfigError(f"{where}: kind {comp.kind} needs `model` (hub id or folder)")


def _classifier_identity(comp, kind: RewardKind, precision: str) -> dict:
    return dict(model=model_identity(comp.model, comp.revision), label=comp.label, template=comp.template,
                max_length=comp.max_length, truncation_side=comp.truncation_side, precision=precision)


def _validate_python(comp, where: str) -> None:
    if not re.fullmatch(r"[\w.]+:\w+", comp.function or ""):
        raise ConfigError(f"{where}: kind {comp.kind} needs function 'package.module:function', got {comp.function!r}")


def _python_identity(comp, kind: RewardKind, precision: str) -> dict:
    return dict(function=comp.function, source=module_identity(comp.function.split(":")[0]))


def _task_identity(comp, kind: RewardKind, precision: str) -> dict:
    return {**source_of_function(comp, kind, precision), "task": module_identity("alol_ray.tasks.builtin")}


SCORERS = "alol_ray.scoring.scorers"
register_reward_kind(RewardKind(
    "hf_classifier", source="alol_ray.scoring.reward:HFClassifier", needs_model=True, validate=_validate_classifier,
    check="alol_ray.scoring.reward:check_template", identity=_classifier_identity))
register_reward_kind(RewardKind(
    "python", source="alol_ray.scoring.reward:PythonFunction", validate=_validate_python,
    check="alol_ray.scoring.reward:PythonFunction", identity=_python_identity))
register_reward_kind(RewardKind("builtin_task", function=f"{SCORERS}:builtin_task", identity=_task_identity))
register_reward_kind(RewardKind("length", function=f"{SCORERS}:length_score"))
register_reward_kind(RewardKind("distinct", function=f"{SCORERS}:distinct_n"))
register_reward_kind(RewardKind("tfidf", function=f"{SCORERS}:tfidf_diversity"))
