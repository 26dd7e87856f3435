"""Generation: one interface, two engines (vLLM, GPU or CPU build; transformers ``generate``) in Ray actors.

    from alol_ray.generation import Generator, generate
    with Generator(policy_dir, cfg.generation, max_prompt_tokens=cfg.model.max_prompt_tokens) as gen:
        replies = gen.generate(prompts)
        gen.update_weights(policy.state_dict())   # in place, no engine restart (PPO)

Importing this package imports neither ray, torch nor vllm; the engines import them in their actors.
"""

from alol_ray.generation.generator import (
    EngineChoice,
    Generator,
    choose_engine,
    engine_resources,
    generate,
    resolve_engine,
    vllm_build,
    vllm_installed,
)
from alol_ray.generation.postprocess import GenerationOutput, postprocess

__all__ = ["EngineChoice", "Generator", "GenerationOutput", "choose_engine", "engine_resources", "generate",
           "postprocess", "resolve_engine", "vllm_build", "vllm_installed"]
