"""Generation: one interface, two engines (vLLM on GPU, transformers ``generate`` elsewhere) in Ray actors.

    from alol_ray.generation import Generator, generate
    with Generator(policy_dir, cfg.generation, max_prompt_tokens=cfg.model.max_prompt_tokens) as gen:
        replies = gen.generate(prompts)

Importing this package imports neither ray, torch nor vllm; the engines import them in their actors.
"""

from alol_ray.generation.generator import Generator, generate, resolve_engine, vllm_installed
from alol_ray.generation.postprocess import GenerationOutput, postprocess

__all__ = ["Generator", "GenerationOutput", "generate", "postprocess", "resolve_engine", "vllm_installed"]
