"""The Method registry: what a training method needs from the scored table and how it calls its loss.

A method is a name plus
  * a **layout**: what one training *unit* is -- a single response (``single``), a preference pair
    (``pair``: the prompt's best row and one lower-ranked row) or a ranked list (``list``: all rows of a
    prompt, best first). A micro-batch of U units is collated into ONE stacked ``PolicyBatch`` of N
    sequences with ``group`` (which unit) and ``position`` (0 = preferred) ids, so a pairwise loss
    splits it with ``position == 0`` / ``== 1``;
  * the scored-table **columns** it reads (reference token log-probs, reward, advantage);
  * its **sample weight** ("advantage" | "reward" | "none"), which picks the ``auto`` sampler;
  * ``compute(model, batch, params, state) -> (loss, metrics)``: forward pass + the pure loss. The
    loss must be a MEAN over the micro-batch's units: the loop's gradient accumulation and DDP
    averaging then make every update the mean over the global batch;
  * ``make_params(train_cfg)`` (the loss hyper-parameters) and optional ``make_state`` / ``after_step``
    hooks for methods that keep state next to the model (GOLD's stale copy).

``register_alol_family`` registers the eight A-LoL-family losses of ``alol_ray.losses``; baselines
register theirs with ``register(Method(...))``; ``alol_ray.registry`` lists the built-in ones. The
training loop never branches on a method name.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Callable

import numpy as np
import torch

from alol_ray import columns as C
from alol_ray.families import PromptFormat
from alol_ray.losses import REGISTRY, LossInputs, LossParams, get_loss
from alol_ray.tokenization import PolicyBatch, collate, encode_pair, response_token_logps
from alol_ray.train.samplers import needs_advantage as sampler_needs_advantage

LAYOUTS = ("single", "pair", "list")


# ------------------------------------------------------------------------------------------- batches


@dataclass
class TrainBatch:
    """One micro-batch of U units stacked into N sequences (N = U for ``single``, 2U for ``pair``).

    policy:     PolicyBatch of the N (prompt, response) sequences, ordered unit by unit, best first
    ref_logps:  [N, R] float, reference per-token log-probs from the table (0 at padding), if requested
    reward:     [N] float, if requested
    reward_raw: [N] float, if requested: the reward before transforms (e.g. the reward model's logit)
    advantage:  [N] float, if requested
    group:      [N] long, the unit (0..U-1) of each sequence
    position:   [N] long, the sequence's place within its unit (0 = preferred / rank order)
    """

    policy: PolicyBatch
    group: torch.Tensor
    position: torch.Tensor
    ref_logps: torch.Tensor | None = None
    reward: torch.Tensor | None = None
    reward_raw: torch.Tensor | None = None
    advantage: torch.Tensor | None = None

    @property
    def n_units(self) -> int:
        return int(self.group.max().item()) + 1

    def to(self, device) -> "TrainBatch":
        moved = {}
        for f in fields(self):
            value = getattr(self, f.name)
            moved[f.name] = value.to(device) if value is not None else None
        return TrainBatch(**moved)


def training_units(frame, layout: str, responses: str = "best") -> list[np.ndarray]:
    """Row indices (positions in ``frame``) of every training unit, best row first.

    ``single``: one row per unit -- the rank-0 rows (``responses="best"``) or every row (``"all"``).
    ``pair``:   (rank-0 row, rank-1 row) of every prompt (``responses="best"``, DPO's pairs), or
                (rank-0 row, rank-k row) for every k > 0 (``"all"``).
    ``list``:   all rows of a prompt with at least two, ordered by rank.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout '{layout}'; expected one of {list(LAYOUTS)}")
    ranks = frame[C.RANK].to_numpy()
    if layout == "single":
        rows = np.flatnonzero(ranks == 0) if responses == "best" else np.arange(len(frame))
        return [np.array([i]) for i in rows]
    units = []
    order = np.lexsort((ranks, frame[C.PROMPT_ID].to_numpy()))  # by prompt, then rank
    ids = frame[C.PROMPT_ID].to_numpy()[order]
    for group in np.split(order, np.flatnonzero(ids[1:] != ids[:-1]) + 1):
        if len(group) < 2 or ranks[group[0]] != 0:
            continue
        if layout == "pair":
            others = group[1:2] if responses == "best" else group[1:]
            units += [np.array([group[0], other]) for other in others]
        else:
            units.append(group)
    return units


def collate_units(frame, units: list[np.ndarray], tokenizer, *, max_prompt_tokens: int,
                  max_response_tokens: int, columns: tuple[str, ...] = (),
                  fmt: PromptFormat | None = None) -> TrainBatch:
    """Tokenise the units' rows with ``tokenization.encode_pair`` (the ReferenceScorer's tokenisation, with the
    run's prompt format ``fmt``) and stack them into a ``TrainBatch``; ``columns`` are the table columns to
    carry along."""
    rows = np.concatenate(units)
    group = np.concatenate([np.full(len(u), g) for g, u in enumerate(units)])
    position = np.concatenate([np.arange(len(u)) for u in units])
    # Only the batch's rows: to_numpy() of a (pandas 3) string column converts the whole column, which made
    # every micro-batch cost O(table rows): ~40 ms more per step on a 43k-row table (bench/vs_trl.py).
    prompts = frame[C.PROMPT].array[rows]
    responses = frame[C.RESPONSE].array[rows]
    pairs = [encode_pair(tokenizer, p, r, max_prompt_tokens, max_response_tokens, fmt)
             for p, r in zip(prompts, responses)]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    policy = collate(pairs, pad_id)
    batch = TrainBatch(policy=policy, group=torch.as_tensor(group, dtype=torch.long),
                       position=torch.as_tensor(position, dtype=torch.long))
    if C.REF_TOKEN_LOGPS in columns:
        batch.ref_logps = _ref_token_logps(frame, rows, policy)
    if C.REWARD in columns:
        batch.reward = torch.as_tensor(frame[C.REWARD].to_numpy()[rows], dtype=torch.float32)
    if C.REWARD_RAW in columns:
        batch.reward_raw = torch.as_tensor(frame[C.REWARD_RAW].to_numpy()[rows], dtype=torch.float32)
    if C.ADVANTAGE in columns:
        batch.advantage = torch.as_tensor(frame[C.ADVANTAGE].to_numpy()[rows], dtype=torch.float32)
    return batch


def _ref_token_logps(frame, rows: np.ndarray, policy: PolicyBatch) -> torch.Tensor:
    """The table's per-token reference log-probs, right-padded like ``policy.response_mask``."""
    out = torch.zeros_like(policy.response_mask)
    stored = frame[C.REF_TOKEN_LOGPS].to_numpy()[rows]
    for b, (values, n) in enumerate(zip(stored, policy.response_lengths.tolist())):
        if values is None or len(values) != n:
            got = "none" if values is None else len(values)
            raise ValueError(
                f"row {int(rows[b])}: {C.REF_TOKEN_LOGPS} has {got} values but the response has {n} tokens; "
                "the table was scored with a different tokenizer or max_prompt/response_tokens -- rescore it"
            )
        out[b, :n] = torch.as_tensor(np.asarray(values, dtype=np.float32))
    return out


# ------------------------------------------------------------------------------------------- methods


ComputeFn = Callable[[Any, TrainBatch, Any, Any], tuple[torch.Tensor, dict]]


@dataclass(frozen=True)
class Method:
    """A training method: see the module docstring. An ``online`` method (PPO) trains on its own rollouts
    instead of the scored table: ``fit_online`` is its whole training stage (same inputs and outputs as the
    offline trainer's ``fit``), and layout, columns and compute do not apply."""

    name: str
    layout: str = "single"  # single | pair | list
    columns: tuple[str, ...] = ()  # scored-table columns the batch carries
    sample_weight: str = "none"  # advantage | reward | none
    compute: ComputeFn | None = None  # (model, batch, params, state) -> (mean loss over units, metrics)
    make_params: Callable[[Any], Any] = lambda tc: None  # TrainConfig -> loss hyper-parameters
    make_state: Callable[[Any, Any], Any] | None = None  # (model, TrainConfig) -> state, once per run
    after_step: Callable[[Any, Any, int], None] | None = None  # (state, model, step) after each update
    online: bool = False
    fit_online: Callable[..., Any] | None = None

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"method {self.name}: layout must be one of {list(LAYOUTS)}")
        if self.sample_weight not in ("advantage", "reward", "none"):
            raise ValueError(f"method {self.name}: sample_weight must be advantage, reward or none")
        if (self.fit_online is None) == self.online or (self.compute is None) != self.online:
            raise ValueError(f"method {self.name}: an online method has fit_online and no compute; "
                             "an offline one has compute")

    @property
    def needs_advantage(self) -> bool:
        """True when the value stage must run first (advantage column or advantage-weighted sampling)."""
        return self.sample_weight == "advantage" or C.ADVANTAGE in self.columns

    def needs_advantage_with(self, sampler: str) -> bool:
        """``needs_advantage``, or the sampler ``sampler`` (train.sampler) draws by the advantage column (nll with
        ``good_priority`` trains on A-LoL's rows): the value stage must run first either way."""
        return self.needs_advantage or sampler_needs_advantage(sampler, self.sample_weight)

    @property
    def needs_reference_logps(self) -> bool:
        return C.REF_TOKEN_LOGPS in self.columns


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add a method to the registry (``alol_ray.registry`` lists the built-in ones); names are unique."""
    if method.name in METHODS and METHODS[method.name] is not method:
        raise ValueError(f"training method {method.name!r} is registered twice")
    METHODS[method.name] = method
    return method


# ------------------------------------------------------------------ the A-LoL family (single responses)

# LossInputs field -> the table column that fills it.
_FIELD_COLUMNS = {"ref_logps": C.REF_TOKEN_LOGPS, "reward": C.REWARD, "advantage": C.ADVANTAGE}


def loss_params(train_cfg) -> LossParams:
    a = train_cfg.alol
    return LossParams(clip_eps=a.clip_eps, clip=a.clip, gold_u=a.r_gold_u, kl_beta=a.kl_beta)


def _offline_single(loss_name: str) -> ComputeFn:
    loss_fn = get_loss(loss_name)

    def compute(model, batch: TrainBatch, params, state=None):
        logps = response_token_logps(model, batch.policy)  # [N, R], grad flows
        inputs = LossInputs(logps=logps, mask=batch.policy.response_mask, ref_logps=batch.ref_logps,
                            reward=batch.reward, advantage=batch.advantage)
        return loss_fn(inputs, params)

    compute.__name__ = f"compute_{loss_name}"
    return compute


def register_alol_family() -> None:
    """The eight losses of ``alol_ray.losses`` as single-response methods."""
    for name, spec in REGISTRY.items():
        register(Method(
            name=name,
            layout="single",
            columns=tuple(_FIELD_COLUMNS[f] for f in sorted(spec.requires) if f in _FIELD_COLUMNS),
            sample_weight=spec.sample_weight,
            compute=_offline_single(name),
            make_params=loss_params,
        ))
