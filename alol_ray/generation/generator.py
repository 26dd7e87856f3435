"""Generator: one interface over Ray actors hosting either engine (vLLM on GPU, transformers elsewhere).

    gen = Generator("runs/builtin/ref", cfg.generation, max_prompt_tokens=cfg.model.max_prompt_tokens)
    replies = gen.generate(prompts)            # list[str], in the order of `prompts`
    outs = gen.generate_with_ids(prompts)      # list[GenerationOutput] (text, token ids, count, finish)
    gen.load_weights("runs/builtin/train/ppo-s0/step-100")   # new policy, same actors
    gen.shutdown()

Engine choice (``generation.engine``): ``auto`` takes vLLM when the vllm package is importable and the
Ray cluster has GPUs, else transformers. Every actor takes ``cpus_per_engine`` CPUs and
``gpus_per_engine`` GPUs (vLLM with tensor parallelism: one placement group of
``tensor_parallel_size`` bundles per engine).

Work split: the transformers engine gets fixed batches of ``batch_size`` prompts, handed round-robin
to the engines; vLLM gets one contiguous slice per engine (it batches continuously itself). Seeds
are derived from global positions, so the replies do not depend on ``num_engines``.
"""

from __future__ import annotations

import importlib.util
from typing import Callable, Optional

from alol_ray.config import GenerationConfig
from alol_ray.errors import ConfigError
from alol_ray.generation.postprocess import GenerationOutput

ENGINES = ("vllm", "transformers")


def vllm_installed() -> bool:
    """True when the optional vllm package can be imported (checked without importing it)."""
    try:
        return importlib.util.find_spec("vllm") is not None
    except (ImportError, ValueError):
        return False


def cluster_gpus() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0.0)) if ray.is_initialized() else 0.0


def resolve_engine(gen_cfg: GenerationConfig, gpus: Optional[float] = None) -> str:
    """The engine ``generation.engine`` names; for ``auto`` vLLM if installed and GPUs exist, else transformers."""
    if gen_cfg.engine == "transformers":
        return "transformers"
    gpus = cluster_gpus() if gpus is None else gpus
    if gen_cfg.engine == "vllm":
        if not vllm_installed():
            raise ConfigError("generation.engine=vllm but vllm is not installed (pip install -e '.[vllm]')")
        if gpus <= 0:
            raise ConfigError("generation.engine=vllm needs a GPU in the Ray cluster; use generation.engine=transformers")
        return "vllm"
    return "vllm" if vllm_installed() and gpus > 0 else "transformers"


def check_model(model_path: str, gen_cfg: GenerationConfig, max_prompt_tokens: int) -> None:
    """User errors found before any actor starts: a missing folder, or no room for a prompt."""
    import os

    from alol_ray.errors import UserError
    from alol_ray.generation.common import context_length, prompt_budget

    if not os.path.isdir(model_path):
        if os.path.isabs(model_path) or model_path.startswith(".") or os.path.exists(model_path):
            raise UserError(f"policy folder not found (or not a folder): {model_path}")
        return  # a hub id: the engine resolves it
    if not os.path.exists(os.path.join(model_path, "config.json")):
        raise UserError(f"{model_path}: no config.json; expected a folder written by save_pretrained")
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_path, trust_remote_code=gen_cfg.trust_remote_code)
    prompt_budget(max_prompt_tokens, gen_cfg.max_new_tokens, context_length(config))


class Generator:
    """Ray actors that generate replies with one policy (see module docs)."""

    def __init__(self, model_path: str, gen_cfg: GenerationConfig, *, max_prompt_tokens: int,
                 show_progress: bool = True):
        import ray

        from alol_ray.ray_utils import init_ray

        check_model(model_path, gen_cfg, max_prompt_tokens)
        init_ray()
        self.cfg = gen_cfg
        self.max_prompt_tokens = max_prompt_tokens
        self.show_progress = show_progress
        self.engine = resolve_engine(gen_cfg)
        self._placement_groups = []
        self.actors = []
        try:
            self.actors = [self._start_actor(model_path) for _ in range(gen_cfg.num_engines)]
            # Wait for every engine to load, so a broken checkpoint fails here, not mid-generation.
            self.engine_info = ray.get([a.info.remote() for a in self.actors])
        except BaseException:
            self.shutdown()
            raise
        self.model_path = model_path

    # -- actors -------------------------------------------------------------------------------------

    def _start_actor(self, model_path: str):
        import ray

        cfg = self.cfg
        threads = max(1, int(cfg.cpus_per_engine))
        if self.engine == "transformers":
            from alol_ray.generation.hf_engine import TransformersEngine

            actor_cls = ray.remote(TransformersEngine)
            return actor_cls.options(num_cpus=cfg.cpus_per_engine, num_gpus=cfg.gpus_per_engine).remote(
                model_path, cfg, self.max_prompt_tokens, threads)

        from alol_ray.generation.vllm_engine import VLLMEngine

        actor_cls = ray.remote(VLLMEngine)
        gpus = cfg.gpus_per_engine or float(cfg.tensor_parallel_size)
        if cfg.tensor_parallel_size == 1:
            return actor_cls.options(num_cpus=cfg.cpus_per_engine, num_gpus=gpus).remote(
                model_path, cfg, self.max_prompt_tokens, threads)
        # Tensor parallelism: vLLM starts one Ray worker per shard; a placement group keeps an
        # engine's shards together and the actor itself takes no GPU (its workers do).
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        per_shard = {"GPU": gpus / cfg.tensor_parallel_size, "CPU": cfg.cpus_per_engine}
        group = placement_group([dict(per_shard) for _ in range(cfg.tensor_parallel_size)], strategy="PACK")
        ray.get(group.ready())
        self._placement_groups.append(group)
        strategy = PlacementGroupSchedulingStrategy(placement_group=group, placement_group_capture_child_tasks=True,
                                                    placement_group_bundle_index=0)
        return actor_cls.options(num_cpus=0, num_gpus=0, scheduling_strategy=strategy).remote(
            model_path, cfg, self.max_prompt_tokens, threads)

    # -- generation ---------------------------------------------------------------------------------

    def _work(self, n: int) -> list[tuple[int, int]]:
        """(start, end) slices of the prompt list, one per actor call."""
        if n == 0:
            return []
        if self.engine == "vllm":
            per_engine = -(-n // len(self.actors))
            return [(s, min(s + per_engine, n)) for s in range(0, n, per_engine)]
        size = self.cfg.batch_size
        return [(s, min(s + size, n)) for s in range(0, n, size)]

    def generate_with_ids(self, prompts: list[str], progress: Optional[Callable[[int], None]] = None,
                          first_index: int = 0) -> list[GenerationOutput]:
        """Replies with token ids, in the order of ``prompts``. Sampling seeds derive from ``generation.seed``
        and each prompt's position counted from ``first_index``: a caller that samples repeatedly (PPO's
        rollouts) passes a new ``first_index`` each call so that no two calls reuse a random stream."""
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
        """Load a new checkpoint (same architecture and tokenizer) into every running actor."""
        import ray

        self.engine_info = ray.get([a.load_weights.remote(model_path) for a in self.actors])
        self.model_path = model_path

    def shutdown(self) -> None:
        """Stop the actors and release their resources."""
        import ray

        for actor in getattr(self, "actors", []):
            ray.kill(actor)
        self.actors = []
        if self._placement_groups:
            from ray.util.placement_group import remove_placement_group

            for group in self._placement_groups:
                remove_placement_group(group)
            self._placement_groups = []

    def __enter__(self) -> "Generator":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()


def generate(model_path: str, prompts: list[str], gen_cfg: GenerationConfig, max_prompt_tokens: int) -> list[str]:
    """One-shot: start the actors, generate, shut them down."""
    with Generator(model_path, gen_cfg, max_prompt_tokens=max_prompt_tokens) as gen:
        return gen.generate(prompts)
