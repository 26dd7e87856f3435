"""Generation engines by name: what each needs, how the Generator starts its actors, what its replies depend on.

    engine_names() -> ["transformers", "vllm"]      ENGINE_CHOICES -> ("auto", "transformers", "vllm")
    get_engine("vllm") -> Engine                    register_engine(Engine("my_engine", "my_pkg.engine:MyEngine"))

An engine is a class hosted in a Ray actor by ``alol_ray.generation.generator.Generator``, built as
``cls(model_path, gen_cfg, max_prompt_tokens, num_threads, device, prompt_format)`` and answering
``generate(prompts, start_index) -> [GenerationOutput]``, ``load_weights(folder)``, ``update_weights(state)`` and
``info()`` (see ``generation/hf_engine.py``). ``generation.engine`` takes any registered name or ``auto``: the
config, preflight and the Generator read this table, nothing else lists the engines.

Standard library only: the config checks names without torch, ray or vllm; an engine's class and its chooser are
"module:attribute" strings imported when an actor starts.
"""

from __future__ import annotations

import difflib
import importlib.util
import pkgutil
from dataclasses import dataclass
from typing import Any, Callable

from alol_ray.errors import ConfigError

AUTO = "auto"


def per_actor(gen_cfg, device: str) -> dict[str, float]:
    """One actor's Ray resources: ``cpus_per_engine`` CPUs and ``gpus_per_engine`` GPUs."""
    return {"CPU": gen_cfg.cpus_per_engine, "GPU": gen_cfg.gpus_per_engine}


def one_shard(gen_cfg, device: str) -> int:
    return 1


def no_identity(gen_cfg) -> dict:
    return {}


@dataclass(frozen=True)
class Engine:
    """One generation engine (see the module docs)."""

    name: str
    engine_class: Any  # "package.module:Class" (imported where an actor starts) or the class itself
    requires: str = ""  # the optional module it needs, checked with find_spec (not imported); "" = none
    install_hint: str = ""  # how to get ``requires``, for the one-line error
    # "fixed": batches of generation.batch_size prompts, round-robin over the actors; "continuous": one contiguous
    # slice per actor (the engine batches itself)
    batching: str = "fixed"
    resources: Callable[[Any, str], dict] = per_actor  # (gen_cfg, device) -> {"CPU", "GPU"} one engine holds
    # (gen_cfg, device) -> shards per engine; > 1: a placement group of that many one-GPU bundles, the actor taking none
    shards: Callable[[Any, str], int] = one_shard
    # (gen_cfg) -> what the replies depend on beyond generation.*; {} adds nothing to any fingerprint
    identity: Callable[[Any], dict] = no_identity
    # "module:function" (gen_cfg, gpus, build, explicit) -> EngineChoice, or the reason it cannot run here (under
    # auto; ConfigError when named); "" = runs wherever ``requires`` imports, on CUDA when gpus_per_engine > 0
    choose: str = ""
    in_auto: bool = False  # tried by generation.engine=auto, in registration order (the last one always runs)
    # the exception class name an actor raises for a model this engine cannot run: auto falls back to the next
    unsupported_error: str = ""

    def __post_init__(self) -> None:
        if self.batching not in ("fixed", "continuous"):
            raise ValueError(f"engine {self.name}: batching must be fixed or continuous, got {self.batching!r}")

    def installed(self) -> bool:
        """Whether ``requires`` can be imported here (checked without importing it)."""
        return not self.requires or module_installed(self.requires)

    def check_installed(self) -> None:
        if not self.installed():
            hint = f": {self.install_hint}" if self.install_hint else ""
            raise ConfigError(f"generation.engine={self.name} but {self.requires} is not installed{hint}")

    def load_class(self) -> type:
        return resolve(self.engine_class)


def module_installed(module: str) -> bool:
    """Whether ``module`` can be imported here, found without importing it (a missing parent package, or one
    that is not a package, counts as not installed)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def resolve(ref: Any) -> Any:
    """An entry's class or function from its "module:attribute" string (imported now), or ``ref`` itself."""
    return pkgutil.resolve_name(ref) if isinstance(ref, str) else ref


ENGINES: dict[str, Engine] = {}


def register_engine(engine: Engine) -> Engine:
    ENGINES[engine.name] = engine
    return engine


def engine_names() -> list[str]:
    return list(ENGINES)


def engine_choices() -> tuple[str, ...]:
    """What ``generation.engine`` accepts: auto, then every registered engine."""
    return (AUTO, *ENGINES)


def say_choices(choices) -> str:
    """"a, b or c" (how the config's messages list choices)."""
    choices = list(choices)
    return ", ".join(choices[:-1]) + " or " + choices[-1] if len(choices) > 1 else "".join(choices)


def get_engine(name: str) -> Engine:
    if name not in ENGINES:
        close = difflib.get_close_matches(name, list(ENGINES), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"unknown generation engine '{name}' (known: {engine_names()}){hint}")
    return ENGINES[name]


def generation_identity(gen_cfg) -> Any:
    """What generated replies depend on, for fingerprints: the ``generation`` section, plus what the named engine
    adds (``Engine.identity``). The built-in engines add nothing (their settings are ``generation.*``), nor does
    ``auto``: the section itself comes back, so fingerprints made before this table stay valid."""
    extra = ENGINES[gen_cfg.engine].identity(gen_cfg) if gen_cfg.engine in ENGINES else {}
    return {"generation": gen_cfg, "engine": extra} if extra else gen_cfg


def auto_engines() -> list[Engine]:
    return [e for e in ENGINES.values() if e.in_auto]


def _vllm_resources(gen_cfg, device: str) -> dict[str, float]:
    """One vLLM engine on one device: on a GPU ``gpus_per_engine`` or one GPU; on CPU no GPU (tensor-parallel
    engines reserve a placement group of ``_vllm_shards`` one-GPU bundles instead: ``generator.engine_placement``)."""
    gpus = (gen_cfg.gpus_per_engine or 1.0) if device == "cuda" else 0.0
    return {"CPU": gen_cfg.cpus_per_engine, "GPU": gpus}


def _vllm_shards(gen_cfg, device: str) -> int:
    """Tensor-parallel shards: one GPU each, on GPUs only (``choose_engine`` refuses more than one elsewhere)."""
    return gen_cfg.tensor_parallel_size if device == "cuda" else 1


register_engine(Engine(
    "vllm", "alol_ray.generation.vllm_engine:VLLMEngine", requires="vllm",
    install_hint="pip install -e '.[vllm]' (GPU) or see the README's vLLM section for the CPU build",
    batching="continuous", resources=_vllm_resources, shards=_vllm_shards,
    choose="alol_ray.generation.generator:choose_vllm", in_auto=True, unsupported_error="UnsupportedArchitecture"))
register_engine(Engine("transformers", "alol_ray.generation.hf_engine:TransformersEngine", in_auto=True))
