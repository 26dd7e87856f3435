"""Offline policy-gradient losses of the A-LoL family, as pure functions of tensors.

A-LoL: Baheti et al., "Leftover Lunch: Advantage-based Offline Reinforcement Learning for Language
Models", ICLR 2024 (arXiv 2305.14718). The offline policy gradient it follows, under the paper's
single-action assumption (the whole response is one action), is

    E_{(x, y) ~ D} [ A_ref(x, y) * r(theta, ref) * grad log pi_theta(y | x) ],
    A_ref = R(x, y) - V_ref(x),  r(theta, ref) = pi_theta(y | x) / pi_ref(y | x),

and minimising the weighted negative log-likelihood  A+ * [clip(rho)]sg * NLL_seq  takes exactly that
step. The variants swap the weight: no ratio (ref-free), a per-token ratio (A-LoL seq.), a KL penalty
instead of a ratio (a_lol_kl), the reward instead of the advantage (R-LoL, weighted behaviour cloning)
or the GOLD per-token weight (Pang & He, ICLR 2021).

Conventions shared by every loss here:
  * ``NLL_t = -log pi_theta(y_t | x, y_<t)`` over response tokens only; ``NLL_seq = sum_t NLL_t`` over
    real tokens (the appended EOS included, padding excluded).
  * The returned loss is the batch MEAN of the per-example terms; metrics are python floats with
    slash-grouped keys.
  * Importance weights are computed in log space, detached, and clamped in log space before ``exp``, so
    no weight overflows. Padded positions are replaced by 0 with ``torch.where`` *before* anything else
    touches them: garbage (NaN, +-inf) there never reaches the loss or the gradient.
  * Half-precision inputs are upcast to float32 (sums of many bf16 log-probs lose too much precision).

This module imports torch only (no ray, vllm or config objects): the training loop looks a loss up by
name in ``LOSSES`` and passes ``LossInputs`` and ``LossParams``.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, fields
from typing import Callable

import torch

# Cap on an *unclipped* log importance weight: exp(20) ~ 4.9e8. Without it one stale sequence ratio
# (a sum of ~100 token log-ratios) overflows float32 to inf and the step turns into NaN.
MAX_LOG_WEIGHT = 20.0


@dataclass
class LossInputs:
    """One micro-batch of offline data. Shapes: B = batch, T = response tokens (right-padded)."""

    logps: torch.Tensor  # [B, T] current policy per-token log-probs of the response tokens (incl. EOS); grad flows
    mask: torch.Tensor  # [B, T] 1.0 for real response tokens (incl. EOS), 0.0 for padding
    ref_logps: torch.Tensor | None = None  # [B, T] reference per-token log-probs (scored table), 0 at padding
    reward: torch.Tensor | None = None  # [B] sequence reward R (already transformed, e.g. sigmoid)
    advantage: torch.Tensor | None = None  # [B] A = R - V(x)
    stale_logps: torch.Tensor | None = None  # [B, T] log-probs under a stale policy copy (GOLD); None -> current


@dataclass
class LossParams:
    """Scalar hyper-parameters of the losses (the config layer copies them from the method config)."""

    # The importance weight is clamped to [1 - eps, 1 + eps]. eps = 0 with clip: the weight is exactly 1. The
    # reference code (LoL-RL) reads ppo_clip = 0 as "no clamp" instead: its eps-0 a_lol runs use the unclipped
    # ratio, which is clip=False here; its a_lol with kl_beta > 0 requires eps 0 and drops the ratio, which is
    # a_lol_kl here. The HH configs use eps 0.9, where both agree: [0.1, 1.9].
    clip_eps: float = 0.9
    clip: bool = True  # False: no clamp (the reference's eps 0, its gen-script default); capped at exp(MAX_LOG_WEIGHT)
    gold_u: float = 0.1  # lower bound u of the per-token GOLD weight max(u, pi(y_t))
    kl_beta: float = 0.1  # beta of the a_lol_kl penalty beta * (log pi_theta(y|x) - log pi_ref(y|x))

    def __post_init__(self) -> None:
        if not self.clip_eps >= 0:
            raise ValueError(f"clip_eps must be >= 0, got {self.clip_eps}")
        if not 0.0 <= self.gold_u <= 1.0:
            raise ValueError(f"gold_u must be in [0, 1], got {self.gold_u}")
        if not self.kl_beta >= 0:
            raise ValueError(f"kl_beta must be >= 0, got {self.kl_beta}")


LossFn = Callable[[LossInputs, LossParams], tuple[torch.Tensor, dict[str, float]]]


@dataclass(frozen=True)
class LossSpec:
    """A registered loss: the function, the optional ``LossInputs`` fields it reads, and which column the
    training sampler draws rows in proportion to ("good_priority" in the reference): ``advantage`` -> p
    proportional to A+ (rows with A <= 0 never drawn; steps scaled by the positive fraction), ``reward`` ->
    p proportional to R, ``none`` -> uniform. ``knobs``: the ``LossParams`` fields it reads (a run's
    fingerprint holds only these)."""

    name: str
    fn: LossFn
    requires: frozenset
    sample_weight: str
    knobs: tuple[str, ...] = ()


REGISTRY: dict[str, LossSpec] = {}


def register_loss(name: str, *, requires: tuple[str, ...] = (), sample_weight: str = "none",
                  knobs: tuple[str, ...] = ()):
    """Decorator: register a loss under ``name`` with what it needs (duplicate names are an error)."""
    if sample_weight not in ("advantage", "reward", "none"):
        raise ValueError(f"loss {name!r}: sample_weight must be advantage, reward or none")
    unknown = set(knobs) - {f.name for f in fields(LossParams)}
    if unknown:
        raise ValueError(f"loss {name!r}: knobs {sorted(unknown)} are not LossParams fields")

    def wrap(fn: LossFn) -> LossFn:
        if name in REGISTRY:
            raise ValueError(f"loss {name!r} is registered twice")
        REGISTRY[name] = LossSpec(name, fn, frozenset(requires), sample_weight, tuple(knobs))
        return fn

    return wrap


# -- shared helpers (also used by baselines/) ---------------------------------------------------------


def compute_dtype(x: torch.Tensor) -> torch.Tensor:
    """``x`` upcast to float32 if it is half precision; float32/float64 pass through (grad preserved)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def masked_logps(logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Token log-probs with padded positions set to exactly 0 (garbage there cannot leak, even as NaN grad)."""
    logps = compute_dtype(logps)
    return torch.where(mask > 0, logps, torch.zeros_like(logps))


def sequence_logps(logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, T] -> [B]: log pi(y | x) = sum of the real tokens' log-probs."""
    return masked_logps(logps, mask).sum(-1)


def importance_weight(log_ratio: torch.Tensor, params: LossParams) -> tuple[torch.Tensor, torch.Tensor]:
    """Detached weight ``[clip(exp(log_ratio), 1 - eps, 1 + eps)]sg`` and a bool tensor "was clipped".

    The clamp is applied to the log ratio, before ``exp``: with eps = 0 both bounds are log 1 = 0 and the
    weight is exactly 1; with eps >= 1 there is no lower bound. Unclipped weights are capped at
    exp(MAX_LOG_WEIGHT).
    """
    log_ratio = log_ratio.detach()
    if not params.clip:
        clipped = log_ratio > MAX_LOG_WEIGHT
        return torch.exp(log_ratio.clamp(max=MAX_LOG_WEIGHT)), clipped
    upper = math.log1p(params.clip_eps)
    lower = math.log1p(-params.clip_eps) if params.clip_eps < 1 else -math.inf
    clipped = (log_ratio > upper) | (log_ratio < lower)
    return torch.exp(log_ratio.clamp(min=lower, max=upper)), clipped


def gold_token_weight(token_logps: torch.Tensor, u: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """GOLD per-token importance weight ``[max(u, pi(y_t))]sg`` = clamp(pi(y_t), u, 1) (Pang & He 2021).

    ``token_logps`` [B, T] are log-probs of the taken tokens under the weighting policy (the stale copy
    pi~ in GOLD, the current policy in LoL-RL's r_gold). The upper bound 1 only matters for log-probs a
    rounding error above 0. With ``mask`` [B, T], padded positions get weight 0; without it every
    position is weighted (callers must then make sure padding is finite).
    """
    token_logps = compute_dtype(token_logps.detach())
    if mask is not None:
        token_logps = torch.where(mask > 0, token_logps, torch.zeros_like(token_logps))
    weight = torch.exp(token_logps.clamp(max=0.0)).clamp(min=u, max=1.0)
    if mask is not None:
        weight = torch.where(mask > 0, weight, torch.zeros_like(weight))
    return weight


# -- checks and metrics -------------------------------------------------------------------------------


def _check(inputs: LossInputs, name: str) -> None:
    """Clear errors for a missing field or a shape mismatch, before any arithmetic hides them."""
    missing = sorted(f for f in REGISTRY[name].requires if getattr(inputs, f) is None)
    if missing:
        raise ValueError(f"loss {name!r} needs LossInputs fields {missing}, which are None")
    shape = inputs.logps.shape
    if inputs.logps.dim() != 2 or inputs.mask.shape != shape:
        raise ValueError(f"logps and mask must both be [B, T]; got {tuple(shape)} and {tuple(inputs.mask.shape)}")
    for field in ("ref_logps", "stale_logps"):
        value = getattr(inputs, field)
        if value is not None and value.shape != shape:
            raise ValueError(f"{field} must have the shape of logps {tuple(shape)}, got {tuple(value.shape)}")
    for field in ("reward", "advantage"):
        value = getattr(inputs, field)
        if value is not None and value.shape != shape[:1]:
            raise ValueError(f"{field} must be [B] = {tuple(shape[:1])}, got {tuple(value.shape)}")


def _per_example(x: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """A [B] data column (reward, advantage) as a detached tensor in the compute dtype of ``like``."""
    assert x is not None
    return x.detach().to(device=like.device, dtype=like.dtype)


def _finish(per_example: torch.Tensor, lp: torch.Tensor, inputs: LossInputs, **extra: torch.Tensor):
    """Batch mean plus the metrics every loss reports; ``extra`` tensors are averaged into metrics."""
    loss = per_example.mean()
    with torch.no_grad():
        metrics = {"loss/policy": loss.item(), "nll/seq_mean": (-lp.sum(-1)).mean().item()}
        if inputs.reward is not None:
            metrics["reward/mean"] = inputs.reward.float().mean().item()
        if inputs.advantage is not None:
            adv = inputs.advantage.float()
            metrics["advantage/mean"] = adv.mean().item()
            metrics["advantage/pos_frac"] = (adv > 0).float().mean().item()
        if inputs.ref_logps is not None:
            ref = masked_logps(inputs.ref_logps, inputs.mask).to(lp.dtype)
            metrics["kl/mean"] = (lp.sum(-1) - ref.sum(-1)).mean().item()
        for key, value in extra.items():
            metrics[key] = value.float().mean().item()
    return loss, metrics


def _weight_metrics(weight: torch.Tensor, clipped: torch.Tensor, select: torch.Tensor | None = None):
    """is_weight/* metrics; ``select`` restricts per-token weights to real tokens."""
    if select is not None:
        weight, clipped = weight[select], clipped[select]
    return {
        "is_weight/mean": weight.mean(),
        "is_weight/max": weight.max(),
        "is_weight/min": weight.min(),
        "is_weight/clip_frac": clipped.float().mean(),
    }


# -- the losses ---------------------------------------------------------------------------------------


@register_loss("nll")
def nll(inputs: LossInputs, params: LossParams) -> tuple[torch.Tensor, dict[str, float]]:
    """Negative log-likelihood (SFT / behaviour cloning): per example ``NLL_seq``."""
    _check(inputs, "nll")
    lp = masked_logps(inputs.logps, inputs.mask)
    return _finish(-lp.sum(-1), lp, inputs)


@register_loss("wbc", requires=("reward",), sample_weight="reward")
def wbc(inputs: LossInputs, params: LossParams) -> tuple[torch.Tensor, dict[str, float]]:
    """Reward-weighted behaviour cloning: per example ``R * NLL_seq``."""
    _check(inputs, "wbc")
    lp = masked_logps(inputs.logps, inputs.mask)
    reward = _per_example(inputs.reward, lp)
    return _finish(reward * -lp.sum(-1), lp, inputs)


@register_loss("r_gold", requires=("reward",), sample_weight="reward", knobs=("gold_u",))
def r_gold(inputs: LossInputs, params: LossParams) -> tuple[torch.Tensor, dict[str, float]]:
    """LoL-RL's reward-GOLD: per example ``R * sum_t [max(u, pi(y_t))]sg * NLL_t``.

    GOLD's token weight b1 (Pang & He 2021) with its return b2 replaced by the sequence reward R. The
    weight comes from ``stale_logps`` when given, else from the current policy, detached (the reference).
    """
    _check(inputs, "r_gold")
    lp = masked_logps(inputs.logps, inputs.mask)
    weighting = inputs.stale_logps if inputs.stale_logps is not None else inputs.logps
    token_weight = gold_token_weight(weighting, params.gold_u, inputs.mask).to(lp.dtype)
    reward = _per_example(inputs.reward, lp)
    per_example = reward * (token_weight * -lp).sum(-1)
    return _finish(per_example, lp, inputs, **{"gold_weight/mean": token_weight[inputs.mask > 0]})


@register_loss("r_lol", requires=("reward", "ref_logps"), sample_weight="reward", knobs=("clip", "clip_eps"))
def r_lol(inputs: LossInputs, params: LossParams) -> tuple[torch.Tensor, dict[str, float]]:
    """Reward-LoL: per example ``R * [clip(rho, 1 - eps, 1 + eps)]sg * NLL_seq``, rho = pi_theta(y|x)/pi_ref(y|x)."""
    _check(inputs, "r_lol")
    lp = masked_logps(inputs.logps, inputs.mask)
    ref = masked_logps(inputs.ref_logps, inputs.mask).to(lp.dtype)
    weight, clipped = importance_weight(lp.sum(-1) - ref.sum(-1), params)
    reward = _per_example(inputs.reward, lp)
    per_example = reward * weight * -lp.sum(-1)
    return _finish(per_example, lp, inputs, **_weight_metrics(weight, clipped))


@register_loss("a_lol", requires=("advantage", "ref_logps"), sample_weight="advantage", knobs=("clip", "clip_eps"))
def a_lol(inputs: LossInputs, params: LossParams) -> tuple[torch.Tensor, dict[str, float]]:
    """A-LoL (Baheti et al. 2024): per example ``A+ * [clip(rho, 1 - eps, 1 + eps)]sg * NLL_seq``.

    A+ = max(A, 0) with A = R - V(x); rho = exp(log pi_theta(y|x) - log pi_ref(y|x)) at sequence level.
    Its gradient wrt ``logps`` is ``-A+ * w * mask / B``; a non-positive advantage gives zero loss and
    zero gradient.
    """
    _check(inputs, "a_lol")
    lp = masked_logps(inputs.logps, inputs.mask)
    ref = masked_logps(inputs.ref_logps, inputs.mask).to(lp.dtype)
    weight, clipped = importance_weight(lp.sum(-1) - ref.sum(-1), params)
    adv_pos = _per_example(inputs.advantage, lp).clamp(min=0.0)
    per_example = adv_pos * weight * -lp.sum(-1)
    return _finish(per_example, lp, inputs, **_weight_metrics(weight, clipped))


@register_loss("a_lol_ref_free", requires=("advantage",), sample_weight="advantage")
def a_lol_ref_free(inputs: LossInputs, params: LossParams) -> tuple[torch.Tensor, dict[str, float]]:
    """A-LoL ref-free: per example ``A * NLL_seq`` (no ratio).

    The advantage is NOT clamped here (the reference code multiplies by A); the advantage-priority
    sampler only draws rows with A > 0, so in training A = A+.
    """
    _check(inputs, "a_lol_ref_free")
    lp = masked_logps(inputs.logps, inputs.mask)
    adv = _per_example(inputs.advantage, lp)
    return _finish(adv * -lp.sum(-1), lp, inputs)


@register_loss("a_lol_seq", requires=("advantage", "ref_logps"), sample_weight="advantage", knobs=("clip", "clip_eps"))
def a_lol_seq(inputs: LossInputs, params: LossParams) -> tuple[torch.Tensor, dict[str, float]]:
    """A-LoL seq.: per example ``A+ * sum_t [clip(rho_t, 1 - eps, 1 + eps)]sg * NLL_t``.

    rho_t = pi_theta(y_t | x, y_<t) / pi_ref(y_t | x, y_<t), one clipped weight per token.
    """
    _check(inputs, "a_lol_seq")
    lp = masked_logps(inputs.logps, inputs.mask)
    ref = masked_logps(inputs.ref_logps, inputs.mask).to(lp.dtype)
    weight, clipped = importance_weight(lp - ref, params)  # padding: log ratio 0 and NLL_t 0
    adv_pos = _per_example(inputs.advantage, lp).clamp(min=0.0)
    per_example = adv_pos * (weight * -lp).sum(-1)
    metrics = _weight_metrics(weight, clipped, select=inputs.mask > 0)
    return _finish(per_example, lp, inputs, **metrics)


@register_loss("a_lol_kl", requires=("advantage", "ref_logps"), sample_weight="advantage", knobs=("kl_beta",))
def a_lol_kl(inputs: LossInputs, params: LossParams) -> tuple[torch.Tensor, dict[str, float]]:
    """A-LoL with a KL penalty instead of a ratio: ``A+ * NLL_seq + beta * (log pi_theta(y|x) - log pi_ref(y|x))``.

    The penalty is the single-sample KL estimate on the offline response and is NOT detached: it pushes
    log pi_theta(y|x) down towards log pi_ref(y|x). The HHA reference run ("a_lol with eps 0 and
    kl_beta") is exactly this loss. With beta = 0 it equals a_lol with clip_eps = 0.
    """
    _check(inputs, "a_lol_kl")
    lp = masked_logps(inputs.logps, inputs.mask)
    ref = masked_logps(inputs.ref_logps, inputs.mask).to(lp.dtype)
    adv_pos = _per_example(inputs.advantage, lp).clamp(min=0.0)
    log_ratio = lp.sum(-1) - ref.sum(-1)
    per_example = adv_pos * -lp.sum(-1) + params.kl_beta * log_ratio
    return _finish(per_example, lp, inputs, **{"loss/kl": params.kl_beta * log_ratio.detach()})


# Read-only views of the registry, by name (r_gold also reads stale_logps when present).
LOSSES: dict[str, LossFn] = {name: spec.fn for name, spec in REGISTRY.items()}
REQUIRES: dict[str, set[str]] = {name: set(spec.requires) for name, spec in REGISTRY.items()}
SAMPLE_WEIGHT: dict[str, str] = {name: spec.sample_weight for name, spec in REGISTRY.items()}


def get_loss(name: str) -> LossFn:
    """The loss registered as ``name``; an unknown name raises ValueError naming the closest match."""
    try:
        return LOSSES[name]
    except KeyError:
        close = difflib.get_close_matches(str(name), LOSSES, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown loss {name!r}.{hint} Valid losses: {', '.join(LOSSES)}") from None
