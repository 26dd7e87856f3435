"""`alol_reward.json`: how a reward-model folder made by `alol rm train` wants its inputs rendered and read.

`alol rm train` writes it next to the model; the reward scorer and the pipeline read it, so a component with
nothing but `model: <folder>` scores exactly as the model was trained. Standard library only: the config
layer and the scorer both use it without loading a model.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from alol_ray.reward_kinds import needs_model

REWARD_SPEC_FILE = "alol_reward.json"


@dataclass
class RewardSpec:
    """What the RewardScorer needs to use a trained folder with no extra arguments (alol_reward.json).

    The first four keys mirror `reward.components[*]` fields of the same names (RewardComponentConfig).
    """

    template: str = "{prompt} {response}"
    max_length: int = 160
    truncation_side: str = "left"
    transform: str = "raw"  # the single logit is the reward (regression: on the training labels' scale)
    label: Optional[str] = None
    pooling: str = "model"
    loss: str = "regression"
    backbone: str = ""
    target_mean: Optional[float] = None  # regression: labels' mean/std (already folded into the head)
    target_std: Optional[float] = None
    trained_on: dict[str, Any] = field(default_factory=dict)
    format: str = "alol_reward/v1"

    def save(self, folder: str) -> str:
        path = os.path.join(folder, REWARD_SPEC_FILE)
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(asdict(self), fh, indent=2)
        return path

    @classmethod
    def load(cls, folder: str) -> Optional["RewardSpec"]:
        """The spec of a folder, or None when it has none (a hub model)."""
        path = os.path.join(folder, REWARD_SPEC_FILE)
        if not os.path.exists(path):
            return None
        with open(path, encoding="utf-8") as fh:
            raw = json.load(fh)
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in raw.items() if k in known})


SPEC_DEFAULTS = ("template", "max_length", "truncation_side", "transform", "label")


def reward_spec_overrides(comp) -> dict[str, Any]:
    """Fields of a reward component (RewardComponentConfig) that its model folder's `alol_reward.json` fills in.

    Fields the user left at their RewardComponentConfig defaults take the folder's values, so a folder
    trained by `alol rm train` is scored exactly as it was trained with nothing but `model: <folder>`;
    fields set explicitly win. Other kinds, hub ids and folders without the file give {}.
    """
    if not needs_model(comp) or not comp.model or not os.path.isdir(comp.model):
        return {}
    spec = RewardSpec.load(comp.model)
    if spec is None:
        return {}
    defaults = type(comp)()
    return {k: getattr(spec, k) for k in SPEC_DEFAULTS
            if getattr(comp, k) == getattr(defaults, k) and getattr(spec, k) != getattr(comp, k)}


def apply_reward_spec(comp):
    """A copy of the reward component with `reward_spec_overrides` applied (the component itself if none)."""
    changes = reward_spec_overrides(comp)
    return dataclasses.replace(comp, **changes) if changes else comp
