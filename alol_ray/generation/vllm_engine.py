"""The vLLM engine: one ``vllm.LLM`` per Ray actor (install with ``pip install -e .[vllm]``).

vllm is imported inside the actor only, never at module import time, so CPU machines without the
extra can import ``alol_ray.generation``. Prompts arrive as token ids encoded by ``common`` (the same
ids the transformers engine sees); replies pass through the same ``finish_output``.

Sampling: each request gets its own seed from (generation.seed, the prompt's global position), so the
replies do not depend on how prompts are split across engines or batched inside vLLM.

Weight reload (PPO): the new checkpoint's safetensors are streamed into the running model through
``LLM.collective_rpc`` (every tensor-parallel worker loads its shard); if this vLLM version does not
expose that path, the engine is rebuilt on the new folder.
"""

from __future__ import annotations

import gc
import glob
import os
from typing import Optional

from alol_ray.config import GenerationConfig
from alol_ray.generation.common import context_length, encode_prompts, prompt_budget, request_seed, torch_dtype_name
from alol_ray.generation.postprocess import GenerationOutput, finish_output


def _safetensors_weights(model_path: str):
    """(name, tensor) pairs of every safetensors shard in an HF folder, read lazily on CPU."""
    from safetensors import safe_open

    files = sorted(glob.glob(os.path.join(model_path, "*.safetensors")))
    if not files:
        raise FileNotFoundError(f"no *.safetensors weights in {model_path}")
    for path in files:
        with safe_open(path, framework="pt", device="cpu") as fh:
            for name in fh.keys():
                yield name, fh.get_tensor(name)


def _load_weights_into_worker(worker, model_path: str) -> int:
    """Runs inside each vLLM worker (collective_rpc passes the worker first): load new weights in place."""
    runner = worker.model_runner
    model = runner.get_model() if hasattr(runner, "get_model") else runner.model
    loaded = model.load_weights(_safetensors_weights(model_path))
    return len(loaded) if loaded is not None else -1


class VLLMEngine:
    """A vLLM engine hosted by a Ray actor; tensor-parallel workers live in the actor's placement group."""

    name = "vllm"

    def __init__(self, model_path: str, gen_cfg: GenerationConfig, max_prompt_tokens: int,
                 num_threads: Optional[int] = None):
        # The engine core runs inside this actor (not a subprocess): collective_rpc can then hand a
        # plain function to the worker without serialising it, and the actor owns every resource.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        self.cfg = gen_cfg
        self.max_prompt_tokens = max_prompt_tokens
        self.llm = None
        self._build(model_path)

    def _build(self, model_path: str) -> None:
        import vllm
        from transformers import AutoConfig

        from alol_ray.models import load_tokenizer

        cfg = self.cfg
        self.tokenizer = load_tokenizer(model_path, trust_remote_code=cfg.trust_remote_code)
        hf_config = AutoConfig.from_pretrained(model_path, trust_remote_code=cfg.trust_remote_code)
        self.n_positions = context_length(hf_config)
        self.budget = prompt_budget(self.max_prompt_tokens, cfg.max_new_tokens, self.n_positions)
        self.dtype = torch_dtype_name(cfg.dtype, on_gpu=True)
        kwargs = dict(
            model=model_path,
            tokenizer=model_path,
            tensor_parallel_size=cfg.tensor_parallel_size,
            dtype=self.dtype,
            seed=cfg.seed,
            gpu_memory_utilization=cfg.gpu_memory_utilization,
            enforce_eager=cfg.enforce_eager,
            trust_remote_code=cfg.trust_remote_code,
        )
        if self.n_positions is not None:
            kwargs["max_model_len"] = self.n_positions
        if cfg.tensor_parallel_size > 1:
            # Workers are Ray actors scheduled into the placement group this actor was started in.
            kwargs["distributed_executor_backend"] = "ray"
        self.llm = vllm.LLM(**kwargs)
        self.model_path = model_path

    def info(self) -> dict:
        import vllm

        return {"engine": self.name, "device": "cuda", "dtype": self.dtype, "model": self.model_path,
                "n_positions": self.n_positions, "prompt_budget": self.budget, "vllm": vllm.__version__,
                "pid": os.getpid()}

    def ping(self) -> bool:
        return True

    def _sampling_params(self, index: int):
        from vllm import SamplingParams

        cfg = self.cfg
        sample = cfg.temperature > 0
        return SamplingParams(
            n=1,
            temperature=cfg.temperature if sample else 0.0,
            top_p=cfg.top_p if sample else 1.0,
            top_k=-1,  # no top-k cut, as in the transformers engine
            max_tokens=cfg.max_new_tokens,
            stop=list(cfg.stop) or None,
            include_stop_str_in_output=True,  # finish_output makes the cut, identically for both engines
            skip_special_tokens=True,
            seed=request_seed(cfg.seed, index) if sample else None,
        )

    def generate(self, prompts: list[str], start_index: int = 0) -> list[GenerationOutput]:
        """Replies to ``prompts``; ``start_index`` = position of ``prompts[0]`` in the caller's list."""
        from vllm.inputs import TokensPrompt

        if not prompts:
            return []
        tok = self.tokenizer
        encoded = encode_prompts(tok, prompts, self.budget)
        requests = [TokensPrompt(prompt_token_ids=ids) for ids in encoded]
        params = [self._sampling_params(start_index + i) for i in range(len(encoded))]
        results = self.llm.generate(requests, params, use_tqdm=False)

        def decode(ids: list[int]) -> str:
            return tok.decode(ids, skip_special_tokens=True)

        outputs = []
        for result in results:
            completion = result.outputs[0]
            # finish_reason "stop" with no stop_reason = the EOS token ended it.
            ended_at_eos = completion.finish_reason == "stop" and completion.stop_reason is None
            outputs.append(finish_output(list(completion.token_ids), decode=decode, eos_id=tok.eos_token_id,
                                         stops=self.cfg.stop, eos_hint=ended_at_eos))
        return outputs

    def load_weights(self, model_path: str) -> dict:
        """Swap in the weights of a new checkpoint of the same architecture (e.g. a PPO update)."""
        try:
            self.llm.collective_rpc(_load_weights_into_worker, args=(model_path,))
            if hasattr(self.llm, "reset_prefix_cache"):
                self.llm.reset_prefix_cache()  # cached KV blocks were computed by the old weights
            self.model_path = model_path
        except (AttributeError, NotImplementedError, TypeError):
            # Older vLLM without callable collective_rpc: rebuild the engine on the new folder.
            self._shutdown_llm()
            self._build(model_path)
        return self.info()

    def _shutdown_llm(self) -> None:
        import torch

        self.llm = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
