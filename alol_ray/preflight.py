"""Checks that need more than the config file, run once in the driver before any stage or Ray starts.

The config (``alol_ray.config``) already rejects bad values, unknown keys and local paths that do not
exist. What is left needs the environment:

- every hub id a run would load (policy, pi_ref, reward models, the reward-model backbone, hub datasets)
  is in the local Hugging Face cache, or the Hub answers for it within seconds: without network a hub id
  would otherwise fail minutes later, after Hugging Face's retries, inside a Ray actor;
- every method named (train.algo, compare.methods) is registered;
- every reward component can be built here: python functions import, built-in scorers take their params
  (a folder from `alol rm train` first fills in the fields its component left at their defaults);
- QLoRA (4-bit) runs have a GPU wherever the 4-bit policy and pi_ref are loaded;
- ``generation.engine=vllm`` has vLLM installed (a run would find out at its first generation, after pi_ref);
- every folder the run writes (``storage``, ``rm.output``, ``tracking.dir``) can be written, and bucket
  storage answers (``check_locations``, called by the CLI before it takes the run's lock).

A failed check is a ``ConfigError`` naming the setting (exit 2 in the CLI).
"""

from __future__ import annotations

import os
from typing import Optional

from alol_ray.config import check_reward_scales
from alol_ray.config_paths import looks_local, path_fields
from alol_ray.engines import AUTO, get_engine
from alol_ray.errors import ConfigError
from alol_ray.hashing import hub_revision
from alol_ray.registry import check_method_name
from alol_ray.reward_kinds import needs_model
from alol_ray.reward_spec import apply_reward_spec

HUB_TIMEOUT_S = 10.0


def _hub_problem(repo_id: str, kind: str) -> Optional[str]:
    """Why ``repo_id`` cannot be loaded here, or None when it can (cached, or the Hub knows it)."""
    if hub_revision(repo_id, kind):
        return None
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return "it is not in the local Hugging Face cache and HF_HUB_OFFLINE is set"
    try:
        # lazy: huggingface_hub (alol_ray.preflight imports without it)
        from huggingface_hub import HfApi
        from huggingface_hub.utils import RepositoryNotFoundError
    except ImportError:
        return None
    try:
        info = HfApi().model_info if kind == "model" else HfApi().dataset_info
        info(repo_id, timeout=HUB_TIMEOUT_S)
    except RepositoryNotFoundError:
        return "the Hugging Face Hub has no such repository (or it is private: log in with `hf auth login`)"
    except Exception as exc:  # no network, DNS, proxy, timeout
        return f"the Hugging Face Hub cannot be reached ({type(exc).__name__}) and it is not in the local cache"
    return None


def check_hub_ids(cfg) -> None:
    """Every hub id the run would load can be loaded (see the module docs)."""
    for key, owner, name, kind, keywords in path_fields(cfg):
        value = getattr(owner, name)
        if kind not in ("model", "data") or not value or value in keywords or os.path.exists(value):
            continue
        if looks_local(value) or "://" in value:
            continue  # resolve_paths has vetted local paths; URIs are not hub ids
        if not _used(cfg, key):
            continue
        problem = _hub_problem(value, "model" if kind == "model" else "dataset")
        if problem:
            raise ConfigError(f"{key}: cannot load {value!r}: {problem}; download it first or give a local folder")


def _used(cfg, key: str) -> bool:
    """Whether a path field is read by this run at all (model.name_or_path only with model.init=pretrained)."""
    if key == "model.name_or_path":
        return cfg.model.init == "pretrained"
    if key.startswith("reward.components."):
        index = int(key.split(".")[2])
        return needs_model(cfg.reward.components[index])
    return True


def check_methods(cfg) -> None:
    """Every method named is a built-in one (by name: nothing is imported)."""
    for key, names in (("train.algo", [cfg.train.algo]), ("reference.train.algo", [cfg.reference.train.algo]),
                       ("compare.methods", list(cfg.compare.methods))):
        for name in names:
            try:
                check_method_name(name)
            except ValueError as err:
                raise ConfigError(f"{key}: {err}") from None


def check_rewards(cfg) -> None:
    """The components as the run will use them: a trained folder's alol_reward.json filled in first."""
    # lazy: alol_ray.scoring.reward (numpy) (alol_ray.preflight imports without them)
    from alol_ray.scoring.reward import check_components

    cfg.reward.components = [apply_reward_spec(c) for c in cfg.reward.components]
    check_reward_scales(cfg.reward)
    check_components(list(cfg.reward.components))


def check_devices(cfg) -> None:
    """QLoRA needs CUDA wherever the policy or pi_ref is loaded: pi_ref is scored on the same 4-bit base."""
    if not cfg.model.lora.load_in_4bit:
        return
    if not cfg.model.lora.enabled:
        raise ConfigError("model.lora.load_in_4bit needs model.lora.enabled=true (QLoRA trains adapters)")
    if not cfg.train.use_gpu:
        raise ConfigError("model.lora.load_in_4bit (QLoRA) trains on a GPU: set train.use_gpu=true")
    if cfg.scoring.reference and cfg.scoring.reference_pool.num_gpus <= 0:
        raise ConfigError("model.lora.load_in_4bit: pi_ref is scored on the same 4-bit base as the policy, which "
                          "needs a GPU: set scoring.reference_pool.num_gpus > 0 (e.g. 0.5)")


def check_engine(cfg) -> None:
    """A named ``generation.engine`` can be imported where the driver runs (a cluster's driver has the workers'
    env)."""
    if cfg.generation.engine == AUTO:
        return
    engine = get_engine(cfg.generation.engine)
    if not engine.installed():
        raise ConfigError(f"generation.engine={engine.name} but {engine.requires} is not installed: "
                          f"{engine.install_hint}, or set generation.engine=auto")


def check_locations(cfg) -> None:
    """Every folder the run writes is a writable folder (or can be made), and bucket storage answers: before
    the run's lock, its mirror or any stage (see the module docs)."""
    # lazy: alol_ray.storage (pyarrow when the storage is a bucket) (alol_ray.preflight imports without it)
    from alol_ray.locations import check_writable_folder
    from alol_ray.storage import check, is_uri

    for key, owner, name, kind, keywords in path_fields(cfg):
        value = getattr(owner, name)
        if kind not in ("storage", "output") or not value or value in keywords:
            continue
        if is_uri(value):
            check(value, key)
        else:
            check_writable_folder(value, key)


def check_early(cfg) -> None:
    """What needs neither torch nor the network, for the CLI to run before it takes the run's lock."""
    check_devices(cfg)
    check_engine(cfg)
    check_methods(cfg)
    check_locations(cfg)


def check_run(cfg) -> None:
    """All of the above but the locations (the CLI checks them first), for one run's config."""
    check_devices(cfg)
    check_engine(cfg)
    check_methods(cfg)
    check_rewards(cfg)
    check_hub_ids(cfg)
