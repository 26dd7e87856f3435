"""The offline baselines as training methods of the shared Ray Train loop (``alol_ray.train.methods``).

Importing this module registers (``alol_ray.train.methods`` imports it lazily on the first lookup of
a name it does not know):

    dpo           pair  (rank 0, rank k) of a prompt; -log sigmoid(beta * margin), reference log-probs from
                        the scored table's ``ref_token_logps`` (no reference forward pass);
                        ``train.dpo.beta``, ``train.dpo.reference_free``, ``train.dpo.loss_type``
                        (sigmoid = DPO, ipo = IPO)
    dpo_ref_free  pair  DPO with the reference term set to 0 (needs no reference column)
    pro           list  all rows of a prompt in rank order; listwise PRO loss with reward-difference
                        temperatures plus ``train.pro.sft_weight`` * (n-1)^2 * NLL of the best row; the
                        temperatures are the table's ``reward_raw`` (the reward model's raw scores, as PRO
                        and the reference code use them), not the transformed ``reward``
    gold          single  GOLD (Pang & He 2021): per-token weight max(u, pi~(y_t)) from a stale copy of the
    gold_delta            policy re-synced every ``train.gold.sync_every`` updates, times the return of
    gold_s                the p_MLE-based reward; ``gold`` takes the reward from ``train.gold.reward``,
    gold_p                the suffixed names fix it. p_MLE = pi_ref: the table's ``ref_token_logps``.

R-GOLD (the reward-weighted GOLD of the A-LoL paper) is the A-LoL family's ``r_gold``, registered by
``alol_ray.train.methods`` itself; its token weight is the same ``alol_ray.losses.gold_token_weight``.

Every ``compute`` returns the MEAN over the micro-batch's units, as the loop requires: DPO over pairs,
PRO over ranked lists (lists of different lengths are scored per length and averaged by unit), GOLD
over responses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from alol_ray import columns as C
from alol_ray.tokenization import response_token_logps
from alol_ray.train.checkpoint import unwrap
from alol_ray.train.methods import Method, TrainBatch, register
from alol_ray.baselines.dpo import dpo_loss
from alol_ray.baselines.gold import StaleCopySync, gold_loss
from alol_ray.baselines.pro import pro_loss

# ----------------------------------------------------------------------------------------------- DPO


@dataclass(frozen=True)
class DPOParams:
    beta: float = 0.1
    reference_free: bool = False
    loss_type: str = "sigmoid"


def _dpo_params(reference_free: Optional[bool]):
    def make(tc) -> DPOParams:
        return DPOParams(beta=tc.dpo.beta,
                         reference_free=tc.dpo.reference_free if reference_free is None else reference_free,
                         loss_type=tc.dpo.loss_type)

    return make


def split_pairs(batch: TrainBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Row indices of the preferred and the other sequence of every pair, unit by unit."""
    chosen = torch.nonzero(batch.position == 0).flatten()
    rejected = torch.nonzero(batch.position == 1).flatten()
    if chosen.numel() != rejected.numel() or not torch.equal(batch.group[chosen], batch.group[rejected]):
        raise ValueError("pair batch: every unit needs exactly one preferred (position 0) and one other row")
    return chosen, rejected


def dpo_compute(model, batch: TrainBatch, params: DPOParams, state=None):
    """One forward pass over the 2U stacked sequences, then the DPO loss of the U pairs."""
    logps = response_token_logps(model, batch.policy)  # [2U, R], grad flows
    mask = batch.policy.response_mask
    chosen, rejected = split_pairs(batch)
    ref = None if params.reference_free else batch.ref_logps
    if ref is None and not params.reference_free:
        raise ValueError("dpo needs the scored table's ref_token_logps (or train.dpo_reference_free=true)")
    return dpo_loss(logps[chosen], mask[chosen], logps[rejected], mask[rejected],
                    None if ref is None else ref[chosen], None if ref is None else ref[rejected],
                    beta=params.beta, reference_free=params.reference_free, loss_type=params.loss_type)


# ----------------------------------------------------------------------------------------------- PRO


@dataclass(frozen=True)
class PROParams:
    sft_weight: float = 0.05


def _pro_params(tc) -> PROParams:
    return PROParams(sft_weight=tc.pro.sft_weight)


def pro_compute(model, batch: TrainBatch, params: PROParams, state=None):
    """PRO over the micro-batch's ranked lists. ``pro_loss`` needs one list length per call, so lists are
    scored per length and the per-length means are combined weighted by their number of units.

    The score of a response is the mean of ``response_token_logps`` over ``response_mask``: response
    tokens (and the EOS) only, never the prompt (``tokenization.collate`` indexes exactly the positions
    that predict response tokens; LoL-RL's copy of PRO is off by one there).
    """
    if batch.reward_raw is None:
        raise ValueError("pro needs the scored table's reward_raw column")
    logps = response_token_logps(model, batch.policy)  # [N, R]
    mask = batch.policy.response_mask
    sizes = torch.bincount(batch.group)  # rows per unit
    n_units = sizes.numel()
    total = logps.new_zeros(())
    metrics: dict[str, float] = {}
    for n in sorted(set(sizes.tolist())):
        units = torch.nonzero(sizes == n).flatten()
        rows = torch.nonzero(torch.isin(batch.group, units)).flatten()  # unit by unit, best first
        if not torch.equal(batch.position[rows], torch.arange(n, device=rows.device).repeat(units.numel())):
            raise ValueError("list batch: rows of a unit must be contiguous and in rank order")
        shape = (units.numel(), n, -1)
        loss, part = pro_loss(logps[rows].view(shape), mask[rows].view(shape),
                              batch.reward_raw[rows].view(units.numel(), n), sft_weight=params.sft_weight)
        share = units.numel() / n_units
        total = total + share * loss
        for key, value in part.items():
            metrics[key] = metrics.get(key, 0.0) + share * value
    metrics["pro/list_size"] = float(sizes.float().mean())
    return total, metrics


# ---------------------------------------------------------------------------------------------- GOLD


@dataclass(frozen=True)
class GOLDParams:
    u: float = 0.1
    reward_kind: str = "s"
    lower_bound_b: float = -60.0
    truncation_c: float = 0.1
    horizon: Optional[int] = 5
    sync_every: int = 20


def _gold_params(reward_kind: Optional[str]):
    def make(tc) -> GOLDParams:
        g = tc.gold
        return GOLDParams(u=g.u, reward_kind=g.reward if reward_kind is None else reward_kind,
                          lower_bound_b=g.lower_bound_b, truncation_c=g.truncation_c, horizon=g.horizon,
                          sync_every=g.sync_every)

    return make


def gold_make_state(model, tc) -> StaleCopySync:
    """pi~: a frozen copy of the policy (inside DDP's wrapper), taken when training starts or resumes.

    Not checkpointed: a resumed run takes its copy from the resumed weights, so after a resume at a step
    that is not a multiple of ``gold_sync_every`` the copy is fresher than an uninterrupted run's.
    """
    return StaleCopySync(unwrap(model), tc.gold.sync_every)


def gold_after_step(state: StaleCopySync, model, step: int) -> None:
    state.maybe_sync(step)


def gold_compute(model, batch: TrainBatch, params: GOLDParams, state: Optional[StaleCopySync] = None):
    logps = response_token_logps(model, batch.policy)
    stale = None
    if state is not None:
        with torch.no_grad():
            stale = response_token_logps(state.module, batch.policy)
    if params.reward_kind != "delta" and batch.ref_logps is None:
        raise ValueError(f"GOLD-{params.reward_kind} needs the scored table's ref_token_logps (p_MLE)")
    return gold_loss(logps, batch.policy.response_mask, stale, batch.ref_logps, u=params.u,
                     reward_kind=params.reward_kind, lower_bound_b=params.lower_bound_b,
                     truncation_c=params.truncation_c, horizon=params.horizon)


# ------------------------------------------------------------------------------------------ register


def _register() -> None:
    register(Method(name="dpo", layout="pair", columns=(C.REF_TOKEN_LOGPS,), sample_weight="none",
                    compute=dpo_compute, make_params=_dpo_params(None)))
    register(Method(name="dpo_ref_free", layout="pair", columns=(), sample_weight="none",
                    compute=dpo_compute, make_params=_dpo_params(True)))
    register(Method(name="pro", layout="list", columns=(C.REWARD_RAW,), sample_weight="none",
                    compute=pro_compute, make_params=_pro_params))
    for name, kind in (("gold", None), ("gold_delta", "delta"), ("gold_s", "s"), ("gold_p", "p")):
        register(Method(name=name, layout="single", columns=() if kind == "delta" else (C.REF_TOKEN_LOGPS,),
                        sample_weight="none", compute=gold_compute, make_params=_gold_params(kind),
                        make_state=gold_make_state, after_step=gold_after_step))


_register()
