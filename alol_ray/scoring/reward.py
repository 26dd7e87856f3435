"""RewardScorer: every reward source behind one callable class, for ``Dataset.map_batches`` actor pools.

A reward is a list of named components (``RewardComponentConfig``), each with a weight:

    reward = sum_i weight_i * transform_i(raw_i(prompt, response))

and each transformed component is kept as ``reward/<name>``; a component whose transform is not
``raw`` also keeps its raw score as ``reward_raw/<name>``. Component kinds:

- ``hf_classifier``: any Hugging Face sequence classifier (hub id or folder). Single-logit models give
  their logit; with ``label`` set, the score is P(label) (softmax over the labels). The input is rendered
  by ``template``: a format string over ``{prompt}`` and ``{response}``, ``pair`` (tokenizer text pair),
  ``chat`` (the tokenizer's chat template over the prompt's turns) or ``turns`` (turn by turn in the reward
  model's own format, ``turns.*``: the OpenAssistant format by default); truncated on ``truncation_side`` to
  ``max_length`` tokens.
- ``python``: ``package.module:function`` called as ``fn(prompts, responses, **params)`` -> N floats.
- ``length`` | ``distinct`` | ``tfidf`` | ``builtin_task``: the built-in scorers of ``scorers``.

The kinds are the table of ``alol_ray.reward_kinds`` (how each scores, whether it loads a model, what its cached
scores depend on); this module builds and runs them.

Transforms: ``raw``; ``sigmoid`` (e.g. an RM logit -> (0, 1), what A-LoL trains on for HH);
``standardise`` ((x - mean) / std with ``params.mean``/``params.std`` if given, else the statistics of
the scored table, see ``table``).

Raw scores depend only on the row and the component's identity, so the scored table caches them per
row and applies weights and transforms when it assembles the table.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import string
from typing import Any, Optional

import numpy as np

from alol_ray import columns as C
from alol_ray.config import RewardComponentConfig, check_component_names, from_dict
from alol_ray.data.formats import split_turns
from alol_ray.errors import ConfigError, UserError
from alol_ray.reward_kinds import kind_of, needs_model, resolve
from alol_ray.reward_spec import apply_reward_spec

RAW_PREFIX = "reward_raw/"  # float columns "reward_raw/<component>": a component's score before its transform
STANDARDISE_KEYS = ("mean", "std")  # params of the standardise transform (not passed to scorers)


def raw_column(component: str) -> str:
    """The column that holds a component's raw (untransformed) score."""
    return f"{RAW_PREFIX}{component}"


def as_component(spec: Any) -> RewardComponentConfig:
    """A RewardComponentConfig from itself or its dict form (what travels to Ray actors)."""
    if isinstance(spec, RewardComponentConfig):
        return spec
    if isinstance(spec, dict):
        return from_dict(RewardComponentConfig, spec)
    raise TypeError(f"expected a RewardComponentConfig or dict, got {type(spec).__name__}")


def scorer_params(comp: RewardComponentConfig) -> dict:
    """The component's params minus the ones its transform reads."""
    return {k: v for k, v in (comp.params or {}).items() if k not in STANDARDISE_KEYS}


def apply_transform(values: np.ndarray, comp: RewardComponentConfig,
                    stats: Optional[tuple[float, float]] = None) -> np.ndarray:
    """``comp.transform`` applied to raw scores. ``stats`` = (mean, std) for standardise without params."""
    values = np.asarray(values, dtype=np.float64)
    if comp.transform == "raw":
        return values
    if comp.transform == "sigmoid":
        return 1.0 / (1.0 + np.exp(-values))
    params = comp.params or {}
    if "mean" in params and "std" in params:
        mean, std = float(params["mean"]), float(params["std"])
    elif stats is not None:
        mean, std = stats
    else:
        raise ConfigError(f"reward component '{comp.name}': transform standardise needs params.mean and "
                          "params.std, or statistics from a scored table")
    return (values - mean) / (std if std > 0 else 1.0)


def check_components(components: list[RewardComponentConfig]) -> None:
    """What the config alone cannot check, in the driver before any actor starts: a function kind's params
    (against its signature), and each kind's own check (hf_classifier: template fields; python: the function
    imports)."""
    check_component_names(components)
    for comp in components:
        kind = kind_of(comp)
        if kind.function:
            check_params(comp.kind, resolve(kind.function), scorer_params(comp))
        if kind.check:
            resolve(kind.check)(comp)


def check_params(kind: str, fn, params: dict) -> None:
    """ConfigError naming the valid params when ``params`` has a key the scorer function does not take."""
    accepted = [p for p, v in inspect.signature(fn).parameters.items() if v.kind == v.KEYWORD_ONLY]
    unknown = set(params) - set(accepted)
    if unknown:
        raise ConfigError(f"{kind} scorer: unknown params {sorted(unknown)}; it takes {accepted}")


def check_template(comp: RewardComponentConfig) -> None:
    """A classifier's template: 'pair', 'chat', 'turns', or a format string over {prompt} and {response}."""
    if comp.template in ("pair", "chat", "turns"):
        return
    fields = {f for _, f, _, _ in string.Formatter().parse(comp.template) if f is not None}
    if not fields <= {"prompt", "response"} or "response" not in fields:
        raise ConfigError(f"reward component '{comp.name}': template {comp.template!r} may use only "
                          "{prompt} and {response} (and must use {response}), or be 'pair', 'chat' or 'turns'")


# ----------------------------------------------------------------------------------------------- sources


class HFClassifier:
    """A Hugging Face sequence classifier as a reward source (single logit, or P(label))."""

    def __init__(self, comp: RewardComponentConfig, device: str = "cpu", bf16: bool = False):
        # lazy: torch, transformers (the CLI starts without them)
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from alol_ray.storage import node_local

        self.comp = comp
        self.device = device
        kwargs = {"revision": comp.revision, "trust_remote_code": comp.trust_remote_code}
        path = node_local(comp.model)  # a storage URI (a reward model trained in a bucket run): this node's copy
        self.tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
        dtype = torch.bfloat16 if (bf16 and device.startswith("cuda")) else torch.float32
        self.model = AutoModelForSequenceClassification.from_pretrained(path, dtype=dtype, **kwargs)
        if self.tokenizer.pad_token is None:  # decoder classifiers (GPT-2 style) ship without one
            if self.tokenizer.eos_token is None:
                raise ConfigError(f"reward model {comp.model}: tokenizer has neither pad nor eos token")
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.model.config.pad_token_id is None:  # decoder classifiers find the last token through it
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.tokenizer.truncation_side = comp.truncation_side
        self.model.to(device).eval()
        self.label_index = self._label_index()
        if comp.template == "chat" and not getattr(self.tokenizer, "chat_template", None):
            raise ConfigError(f"reward component '{comp.name}': template 'chat' but {comp.model} has no chat template")

    def _label_index(self) -> Optional[int]:
        num_labels = self.model.config.num_labels
        if self.comp.label is None:
            if num_labels != 1:
                raise ConfigError(f"reward model {self.comp.model} has {num_labels} labels "
                                  f"{list(self.model.config.id2label.values())}; set `label` to score P(label)")
            return None
        label2id = {str(k): int(v) for k, v in (self.model.config.label2id or {}).items()}
        label = str(self.comp.label)
        if label in label2id:
            return label2id[label]
        if label.isdigit() and int(label) < num_labels:
            return int(label)
        raise ConfigError(f"reward model {self.comp.model}: label {label!r} is not one of {sorted(label2id)}")

    def _chat_text(self, prompt: str, response: str) -> str:
        """template chat: the prompt's turns and the reply through the tokenizer's chat template."""
        messages = [{"role": "user" if human else "assistant", "content": text}
                    for human, text in split_turns(prompt, self.comp.turns.markers)]
        messages.append({"role": "assistant", "content": response})
        return self.tokenizer.apply_chat_template(messages, tokenize=False)

    def _turns_text(self, prompt: str, response: str) -> str:
        """template turns: the prompt's turns and the reply in the reward model's own format (comp.turns)."""
        t, eos = self.comp.turns, self.tokenizer.eos_token or ""
        turns = split_turns(prompt, t.markers) + [(False, response)]
        return t.separator.join((t.human if human else t.assistant).format(text=text, eos=eos) for human, text in turns)

    def __call__(self, prompts: list[str], responses: list[str]) -> np.ndarray:
        # lazy: torch (the CLI starts without it)
        import torch

        comp = self.comp
        enc_args = {"truncation": True, "max_length": comp.max_length, "padding": True, "return_tensors": "pt"}
        if comp.template == "pair":
            enc = self.tokenizer(list(prompts), list(responses), **enc_args)
        elif comp.template == "chat":  # a chat template writes its own special tokens
            enc = self.tokenizer([self._chat_text(p, r) for p, r in zip(prompts, responses)],
                                 add_special_tokens=False, **enc_args)
        elif comp.template == "turns":
            enc = self.tokenizer([self._turns_text(p, r) for p, r in zip(prompts, responses)], **enc_args)
        else:
            enc = self.tokenizer([comp.template.format(prompt=p, response=r) for p, r in zip(prompts, responses)],
                                 **enc_args)
        enc = {k: v.to(self.device) for k, v in enc.items()}
        with torch.inference_mode():
            logits = self.model(**enc).logits.float()
        if self.label_index is None:
            return logits[:, 0].cpu().numpy().astype(np.float64)
        return torch.softmax(logits, dim=-1)[:, self.label_index].cpu().numpy().astype(np.float64)


class PythonFunction:
    """``package.module:function`` called as ``fn(prompts, responses, **params)``."""

    def __init__(self, comp: RewardComponentConfig):
        module_name, fn_name = comp.function.split(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ConfigError(f"reward component '{comp.name}': cannot import {module_name} ({exc}); python "
                              "reward functions are imported from the working directory or installed packages") from None
        self.fn = getattr(module, fn_name, None)
        if not callable(self.fn):
            raise ConfigError(f"reward component '{comp.name}': {module_name} has no function {fn_name}")
        self.comp = comp
        self.params = scorer_params(comp)

    def __call__(self, prompts: list[str], responses: list[str]) -> np.ndarray:
        out = np.asarray(self.fn(list(prompts), list(responses), **self.params), dtype=np.float64)
        if out.shape != (len(prompts),):
            raise UserError(f"reward component '{self.comp.name}': {self.comp.function} returned shape "
                            f"{out.shape} for {len(prompts)} rows; it must return one number per row")
        return out


class FunctionScorer:
    """A function kind (the built-in scorers): ``fn(prompts, responses, **params)``."""

    def __init__(self, comp: RewardComponentConfig):
        self.fn = resolve(kind_of(comp).function)
        self.params = scorer_params(comp)

    def __call__(self, prompts: list[str], responses: list[str]) -> np.ndarray:
        return self.fn(list(prompts), list(responses), **self.params)


def build_source(comp: RewardComponentConfig, device: str = "cpu", bf16: bool = False):
    """The callable (prompts, responses) -> raw scores [N] of one component (``device``, ``bf16``: a kind that loads
    a model)."""
    kind = kind_of(comp)
    if kind.function:
        return FunctionScorer(comp)
    if kind.needs_model:
        return resolve(kind.source)(comp, device=device, bf16=bf16)
    return resolve(kind.source)(comp)


# ----------------------------------------------------------------------------------------------- scorer


class RewardScorer:
    """Scores (prompt, response) rows with every configured reward component.

    Use directly (``scorer.rewards(prompts, responses)``) or as a callable class in
    ``ds.map_batches(RewardScorer, fn_constructor_kwargs={"components": [...]}, batch_format="pandas",
    compute=ray.data.ActorPoolStrategy(...))``. ``raw_only=True`` returns just ``row_key`` and
    ``reward_raw/<name>`` per row (what the scored table caches).
    """

    def __init__(self, components: list[Any], *, raw_only: bool = False, use_gpu: bool = False, bf16: bool = True,
                 num_threads: Optional[int] = None, stats: Optional[dict[str, tuple[float, float]]] = None):
        self.components = [apply_reward_spec(as_component(c)) for c in components]
        if not self.components:
            raise ConfigError("RewardScorer needs at least one reward component")
        check_components(self.components)
        device = "cpu"
        if any(needs_model(c) for c in self.components):  # torch only where a model needs it
            # lazy: torch (the CLI starts without it)
            import torch

            if num_threads:  # one actor = its CPUs, so actors sharing a node do not oversubscribe cores
                torch.set_num_threads(int(num_threads))
            device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
        self.sources = {c.name: build_source(c, device=device, bf16=bf16) for c in self.components}
        self.raw_only = raw_only
        self.stats = dict(stats or {})

    def score(self, prompts: list[str], responses: list[str]) -> dict[str, np.ndarray]:
        """Raw score of every component: name -> float64 [N]."""
        return {name: source(prompts, responses) for name, source in self.sources.items()}

    def rewards(self, prompts: list[str], responses: list[str]) -> dict[str, np.ndarray]:
        """The scored columns: ``reward``, ``reward/<name>`` and, for transformed ones, ``reward_raw/<name>``."""
        raw = self.score(prompts, responses)
        return combine(self.components, raw, self.stats)

    def __call__(self, batch):
        # lazy: pandas (the CLI starts without it)
        import pandas as pd

        prompts, responses = batch[C.PROMPT].tolist(), batch[C.RESPONSE].tolist()
        if self.raw_only:
            raw = self.score(prompts, responses)
            return pd.DataFrame({C.ROW_KEY: batch[C.ROW_KEY].to_numpy(),
                                 **{raw_column(n): v for n, v in raw.items()}})
        out = batch.copy()
        for col, values in self.rewards(prompts, responses).items():
            out[col] = values
        return out


def combine(components: list[RewardComponentConfig], raw: dict[str, np.ndarray],
            stats: Optional[dict[str, tuple[float, float]]] = None) -> dict[str, np.ndarray]:
    """Weighted sum of transformed components (``reward``) and of their raw scores (``reward_raw``). NaN in any
    component makes that row's reward NaN."""
    stats = stats or {}
    out: dict[str, np.ndarray] = {}
    total = total_raw = 0.0
    for comp in components:
        scores = np.asarray(raw[comp.name], dtype=np.float64)
        values = apply_transform(scores, comp, stats.get(comp.name))
        out[C.reward_column(comp.name)] = values
        if comp.transform != "raw":
            out[raw_column(comp.name)] = scores
        total = total + comp.weight * values
        total_raw = total_raw + comp.weight * scores
    out[C.REWARD] = np.asarray(total, dtype=np.float64)
    out[C.REWARD_RAW] = np.asarray(total_raw, dtype=np.float64)
    return out


@dataclasses.dataclass(frozen=True)
class Reward:
    """The run's reward, resolved once (``scoring.table.resolve_reward``): its components and the scored table's
    (mean, std) of those standardised without fixed params. Every stage that scores new replies (value targets,
    val-reward selection, evaluation) receives this one object: it makes their scorer, and its ``identity`` enters
    their fingerprints, so a table rebuilt with other statistics makes them run again."""

    config: Any  # RewardConfig
    stats: dict = dataclasses.field(default_factory=dict)  # component name -> (mean, std)

    def scorer(self, pool=None) -> "RewardScorer":
        """An in-process scorer of this reward (``run_scorer``); ``pool``: the resources it may use."""
        return run_scorer(self.config, pool=pool, stats=self.stats)

    def identity(self) -> dict:
        return {"reward": self.config, "stats": {name: list(ms) for name, ms in sorted(self.stats.items())}}


def run_scorer(reward_cfg, *, pool=None, stats: Optional[dict] = None) -> "RewardScorer":
    """The run's reward (every component of ``reward_cfg``, weights and transforms) as one in-process scorer.
    ``pool``: the resources it may use (GPU, bf16, threads); ``stats``: the scored table's statistics for
    standardised components (``scoring.table.reward_stats``). Every stage that scores new replies (value
    targets, val-reward selection, evaluation, PPO rollouts, the Serve deployment) builds it here."""
    kwargs = {}
    if pool is not None:
        kwargs = {"use_gpu": pool.num_gpus > 0, "bf16": pool.num_gpus > 0 and pool.bf16,  # bf16: GPU only
                  "num_threads": max(1, int(pool.num_cpus))}
    return RewardScorer(component_dicts(list(reward_cfg.components)), stats=stats, **kwargs)


def component_dicts(components: list[RewardComponentConfig]) -> list[dict]:
    """Plain dicts (cheap to ship to actors, stable to hash)."""
    return [dataclasses.asdict(c) for c in components]
