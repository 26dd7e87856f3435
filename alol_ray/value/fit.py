"""Fitting the value head and writing ``value`` / ``advantage`` into the scored table.

The stage (``build_value``), in order:

1. pi_ref answers every val prompt once, greedily (``generate_greedy``); the run's reward function
   scores the answers (``reward_function``). These are the targets: V(x) estimates the reward pi_ref
   earns on x.
2. pi_ref's last-layer hidden states of the (left-truncated) val prompts are computed once, without
   grad, and cached (``prompt_states``); the head is fitted on them by MSE (``fit_value_head``). The
   best epoch is the one with the lowest MSE on a held-out slice of the val prompts (the reference code
   picks it by training MSE); the fit report puts that MSE next to the MSE of predicting the mean.
3. The head, in eval() mode, predicts V(x) once per unique prompt of the scored table; the stage writes
   the **value table**: the scored table plus ``value`` and ``advantage = reward - value``
   (``add_value_columns``), into its own folder (the scored table is never rewritten), and reports the
   advantage distribution (``advantage_report``, ``plot_advantages``).

Output folder (``<run>/value/``): table.parquet, head (safetensors + json), fit.json, advantages.json,
advantage_hist.png, val_generations.parquet (the targets: pi_ref's replies and their rewards).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from alol_ray import columns as C
from alol_ray import faults
from alol_ray.atomic import write_json, write_parquet
from alol_ray.engines import generation_identity
from alol_ray.errors import UserError
from alol_ray.families import PromptFormat, check_chat_template, prompt_format, prompt_identity
from alol_ray.generation import generate
from alol_ray.ray_utils import init_ray
from alol_ray.hashing import file_sha, model_identity
from alol_ray.scoring.reward import Reward
from alol_ray.tokenization import prompt_batch
from alol_ray.value.head import ValueHead, ValueHeadConfig, save_head

log = logging.getLogger("alol")

TABLE_FILE = "table.parquet"
FIT_REPORT = "fit.json"
ADVANTAGE_REPORT = "advantages.json"
HISTOGRAM = "advantage_hist.png"
GENERATIONS = "val_generations.parquet"
PERCENTILES = (5, 25, 50, 75, 95)


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _progress(iterable, total: int, desc: str, enabled: bool = True):
    return tqdm(iterable, total=total, desc=desc, disable=not enabled or total < 2, leave=False)


# ------------------------------------------------------------------------------------- prompt states


def _backbone_states(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Last-layer hidden states [B, P, H] without the LM head (no [B, P, vocab] logits)."""
    backbone = getattr(model, "base_model", None)
    if backbone is not None and backbone is not model:
        out = backbone(input_ids=input_ids, attention_mask=attention_mask)
        if getattr(out, "last_hidden_state", None) is not None:
            return out.last_hidden_state
    out = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
    return out.hidden_states[-1]


@torch.no_grad()
def prompt_states(model, tokenizer, prompts: Sequence[str], max_prompt_tokens: int, batch_size: int,
                  show_progress: bool = True, fmt: Optional[PromptFormat] = None) -> list[torch.Tensor]:
    """pi_ref's last-layer hidden states of each prompt: a list of float32 CPU tensors [len_i, H].

    Prompts are tokenised by ``alol_ray.tokenization.prompt_batch`` (left-truncated, right-padded; the run's
    ``fmt``: text or the chat template) so the head sees exactly the prompt tokens training conditions
    on. Batches are formed from prompts sorted
    by length, so little compute goes to padding.
    """
    model.eval()
    device = next(model.parameters()).device
    lengths = [len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    order = np.argsort(lengths, kind="stable")
    out: list[Optional[torch.Tensor]] = [None] * len(prompts)
    starts = range(0, len(prompts), batch_size)
    for start in _progress(starts, len(starts), "prompt states", show_progress):
        idx = order[start:start + batch_size]
        input_ids, mask = prompt_batch(tokenizer, [prompts[i] for i in idx], max_prompt_tokens, fmt)
        states = _backbone_states(model, input_ids.to(device), mask.to(device)).float().cpu()
        for row, i in enumerate(idx):
            out[i] = states[row, : int(mask[row].sum())].clone()
    return out  # type: ignore[return-value]


def pad_states(states: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad [len_i, H] tensors into (states [B, P, H], attention_mask [B, P] long)."""
    width = max(s.shape[0] for s in states)
    hidden = states[0].shape[1]
    padded = torch.zeros(len(states), width, hidden, dtype=states[0].dtype)
    mask = torch.zeros(len(states), width, dtype=torch.long)
    for b, s in enumerate(states):
        padded[b, : s.shape[0]] = s
        mask[b, : s.shape[0]] = 1
    return padded, mask


@torch.no_grad()
def predict(head: ValueHead, states: Sequence[torch.Tensor], batch_size: int) -> np.ndarray:
    """V(x) for cached prompt states, with the head in eval() mode (no dropout): float64 [N]."""
    head.eval()
    device = next(head.parameters()).device
    values = []
    for start in range(0, len(states), batch_size):
        padded, mask = pad_states(states[start:start + batch_size])
        values.append(head(padded.to(device), mask.to(device)).double().cpu())
    return torch.cat(values).numpy() if values else np.zeros(0)


# --------------------------------------------------------------------------------------------- fitting


@dataclass
class FitResult:
    head: ValueHead  # the best epoch's parameters, in eval() mode
    report: dict  # held-out MSE vs mean-MSE, per-epoch history, split sizes
    fit_index: np.ndarray = field(repr=False)
    holdout_index: np.ndarray = field(repr=False)


def holdout_split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(fit indices, held-out indices): a seeded random `fraction` of 0..n-1 held out (at least one each)."""
    if n < 2:
        raise UserError(f"the value head needs at least 2 val prompts (one to fit, one held out); got {n}")
    n_hold = min(max(1, int(round(n * fraction))), n - 1)
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_hold:]), np.sort(perm[:n_hold])


def _mse(pred: np.ndarray, target: np.ndarray) -> float:
    return float(np.mean((pred - target) ** 2))


def _copy_state(module: torch.nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def fit_value_head(states: Sequence[torch.Tensor], targets: np.ndarray, *, heads: int, dropout: float,
                   max_value: float, lr: float, epochs: int, batch_size: int, holdout_fraction: float,
                   seed: int = 0, holdout_index: Optional[np.ndarray] = None) -> FitResult:
    """Fit a ValueHead by MSE on (prompt states -> target); keep the epoch with the lowest held-out MSE.

    states: cached prompt states ([len_i, H] each); targets: [N] rewards in [0, max_value].
    The held-out slice is `holdout_fraction` of the prompts (seeded), or `holdout_index` when given.
    The head starts out predicting about the mean fit target (output bias); that untrained state is
    epoch 0 and stays a candidate, so a fit that only learns noise cannot end worse than where it began.
    """
    targets = np.asarray(targets, dtype=np.float64)
    n = len(states)
    if len(targets) != n:
        raise ValueError(f"fit_value_head: {n} prompt states but {len(targets)} targets")
    if epochs < 1 or batch_size < 1:
        raise UserError("value.epochs and value.batch_size must be >= 1")
    if holdout_index is None:
        fit_index, holdout_index = holdout_split(n, holdout_fraction, seed)
    else:
        holdout_index = np.sort(np.asarray(holdout_index, dtype=np.int64))
        fit_index = np.setdiff1d(np.arange(n), holdout_index)
        if len(fit_index) == 0 or len(holdout_index) == 0:
            raise UserError("fit_value_head: both the fit part and the held-out part need prompts")
    outside = targets[(targets < 0) | (targets > max_value)]
    if len(outside):
        log.warning(f"[value] warning: {len(outside)} targets outside [0, value.max_value={max_value}] "
                    f"(min {targets.min():.3f}, max {targets.max():.3f}); the head cannot reach them")

    device = _device()
    fit_states = [states[i] for i in fit_index]
    hold_states = [states[i] for i in holdout_index]
    y_fit, y_hold = targets[fit_index], targets[holdout_index]
    mean_fit = float(y_fit.mean())

    config = ValueHeadConfig(hidden_size=int(states[0].shape[1]), num_heads=heads, dropout=dropout,
                             max_value=max_value)
    with torch.random.fork_rng(devices=[]):  # seed the init and the batch order, not the caller's RNG
        torch.manual_seed(seed)
        head = ValueHead(config).to(device)
        head.start_at(mean_fit)
        opt = torch.optim.AdamW(head.parameters(), lr=lr)
        y_fit_t = torch.tensor(y_fit, dtype=torch.float32)
        gen = torch.Generator().manual_seed(seed)

        def evaluate(epoch: int, train_loss: Optional[float]) -> dict:
            return {"epoch": epoch, "loss/train": train_loss,
                    "mse/fit": _mse(predict(head, fit_states, batch_size), y_fit),
                    "mse/holdout": _mse(predict(head, hold_states, batch_size), y_hold)}

        # Epoch 0 (the untrained head, ~ the mean) is a candidate too: if no epoch beats it on the
        # held-out prompts, training only fitted noise and the head is kept as it started.
        history = [evaluate(0, None)]
        best = {"epoch": 0, "holdout_mse": history[0]["mse/holdout"], "state": _copy_state(head)}
        for epoch in range(1, epochs + 1):
            head.train()
            order = torch.randperm(len(fit_states), generator=gen)
            losses = []
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                padded, mask = pad_states([fit_states[i] for i in idx])
                pred = head(padded.to(device), mask.to(device))
                loss = torch.nn.functional.mse_loss(pred, y_fit_t[idx].to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(loss.item())
            history.append(evaluate(epoch, float(np.mean(losses))))
            if history[-1]["mse/holdout"] < best["holdout_mse"]:
                best = {"epoch": epoch, "holdout_mse": history[-1]["mse/holdout"], "state": _copy_state(head)}
    head.load_state_dict(best["state"])
    head.eval()

    mean_mse = _mse(np.full_like(y_hold, mean_fit), y_hold)
    report = {
        "prompts": n,
        "prompts/fit": int(len(fit_index)),
        "prompts/holdout": int(len(holdout_index)),
        "best_epoch": int(best["epoch"]),
        "mse/holdout": float(best["holdout_mse"]),
        "mse/holdout_predict_mean": mean_mse,
        "mse/holdout_ratio_to_mean": float(best["holdout_mse"] / mean_mse) if mean_mse > 0 else float("nan"),
        "mse/holdout_initial": float(history[0]["mse/holdout"]),
        "mse/fit": float(history[best["epoch"]]["mse/fit"]),
        "target/mean_fit": mean_fit,
        "target/std_fit": float(y_fit.std()),
        "target/mean_holdout": float(y_hold.mean()),
        "target/std_holdout": float(y_hold.std()),
        "epochs": history,
        "selection": "lowest held-out MSE over epochs 0..E (0 = untrained; head in eval mode)",
    }
    return FitResult(head=head, report=report, fit_index=fit_index, holdout_index=holdout_index)


# ------------------------------------------------------------------------------- generation, rewards


def generate_greedy(ref_path: str, prompts: Sequence[str], cfg) -> list[str]:
    """pi_ref's one greedy reply per prompt, through the shared Generator (Ray actors; vLLM on GPU,
    transformers on CPU). Sampling settings of cfg.generation are overridden to greedy."""
    init_ray(cfg.ray)
    greedy = dataclasses.replace(cfg.generation, temperature=0.0, top_p=1.0)
    return generate(ref_path, list(prompts), greedy, cfg.model.max_prompt_tokens, prompt_format(cfg))


# ------------------------------------------------------------------------------------ value columns


@torch.no_grad()
def prompt_values(model, tokenizer, head: ValueHead, prompts: Sequence[str], *, max_prompt_tokens: int,
                  batch_size: int, show_progress: bool = True, fmt: Optional[PromptFormat] = None) -> np.ndarray:
    """V(x) of each prompt: pi_ref states then the head (eval mode), streamed batch by batch so the states
    of a large training set are never all held at once. float64 [N]."""
    values = np.zeros(len(prompts))
    head.eval()
    chunk = max(batch_size, 1) * 8
    starts = range(0, len(prompts), chunk)
    for start in _progress(starts, len(starts), "values", show_progress):
        part = list(prompts[start:start + chunk])
        states = prompt_states(model, tokenizer, part, max_prompt_tokens, batch_size, show_progress=False, fmt=fmt)
        values[start:start + len(part)] = predict(head, states, batch_size)
    return values


def add_value_columns(frame: pd.DataFrame, value_of_prompt: dict[str, float],
                      source: str = "scored table") -> pd.DataFrame:
    """A copy of `frame` with ``value`` = V(prompt) and ``advantage`` = reward - value on every row."""
    if C.REWARD not in frame.columns:
        raise UserError(f"{source}: no '{C.REWARD}' column (score the table first)")
    reward = frame[C.REWARD].to_numpy(dtype=np.float64)
    missing = np.flatnonzero(np.isnan(reward))
    if len(missing):
        listed = ", ".join(f"row {i + 1}" for i in missing[:10])
        raise UserError(f"{source}: {len(missing)} row(s) without '{C.REWARD}' ({listed}"
                        f"{', ...' if len(missing) > 10 else ''}); score the table first")
    unknown = sorted(set(frame[C.PROMPT]) - set(value_of_prompt))
    if unknown:
        raise ValueError(f"add_value_columns: no value for {len(unknown)} prompt(s), e.g. {unknown[0][:80]!r}")
    out = frame.copy()
    out[C.VALUE] = frame[C.PROMPT].map(value_of_prompt).to_numpy(dtype=np.float64)
    out[C.ADVANTAGE] = reward - out[C.VALUE].to_numpy()
    return out


def _summary(x: np.ndarray) -> dict:
    if len(x) == 0:
        return {"rows": 0}
    return {
        "rows": int(len(x)),
        "positive_fraction": float(np.mean(x > 0)),
        "mean": float(np.mean(x)),
        "std": float(np.std(x)),
        **{f"p{q}": float(v) for q, v in zip(PERCENTILES, np.percentile(x, PERCENTILES))},
    }


def advantage_report(frame: pd.DataFrame) -> dict:
    """Advantage statistics of the training rows: all of them, and the preferred (rank-0) ones that the
    A-LoL family trains on by default. `positive_fraction` is the share kept by A-LoL's A > 0 filter."""
    train = frame[frame[C.SPLIT] == "train"] if C.SPLIT in frame.columns else frame
    report = {"advantage/train": _summary(train[C.ADVANTAGE].to_numpy(dtype=np.float64))}
    if C.RANK in train.columns:
        best = train[train[C.RANK] == 0]
        report["advantage/train_best"] = _summary(best[C.ADVANTAGE].to_numpy(dtype=np.float64))
    report["value/train"] = {k: v for k, v in _summary(train[C.VALUE].to_numpy(dtype=np.float64)).items()
                             if k != "positive_fraction"}
    return report


def plot_advantages(frame: pd.DataFrame, path: str) -> str:
    """Histogram PNG of the training rows' advantages (all rows and rank-0 rows)."""
    # lazy: matplotlib (alol_ray.value.fit imports without it)
    import matplotlib

    matplotlib.use("Agg")
    # lazy: matplotlib, and pyplot only once the Agg backend is chosen
    import matplotlib.pyplot as plt

    train = frame[frame[C.SPLIT] == "train"] if C.SPLIT in frame.columns else frame
    adv = train[C.ADVANTAGE].to_numpy(dtype=np.float64)
    fig, ax = plt.subplots(figsize=(6, 4))
    bins = np.linspace(adv.min(), adv.max(), 41) if adv.max() > adv.min() else 10
    ax.hist(adv, bins=bins, alpha=0.6, label=f"train rows (n={len(adv)})")
    if C.RANK in train.columns:
        best = train.loc[train[C.RANK] == 0, C.ADVANTAGE].to_numpy(dtype=np.float64)
        ax.hist(best, bins=bins, alpha=0.6, label=f"rank 0 (n={len(best)})")
    ax.axvline(0.0, color="black", linewidth=1)
    ax.set_xlabel("advantage = reward - V(x)")
    ax.set_ylabel("rows")
    ax.set_title(f"A > 0: {np.mean(adv > 0):.1%} of train rows")
    ax.legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------ the stage


def identity(cfg, *, reference: str, table: str, reward: Reward) -> dict:
    """Everything the value stage reads (its fingerprint): ``value.*``; pi_ref's greedy replies to the val prompts
    (``generation.*``, ``model.max_prompt_tokens``, the prompt format) scored by the run's ``reward`` (components and
    the table's statistics) at the reward pool's precision; pi_ref loaded as training loads the policy
    (``model.dtype``, ``model.lora``: 4-bit, and ``lora.enabled`` picks the weight dtype; ``trust_remote_code``);
    the seed; pi_ref and the scored table by content."""
    m = cfg.model
    return {"value": cfg.value, "generation": generation_identity(cfg.generation), "reward": reward.identity(),
            "reward_pool": cfg.scoring.reward_pool, "prompt": prompt_identity(cfg), "seed": cfg.seed,
            "model": {"max_prompt_tokens": m.max_prompt_tokens, "dtype": m.dtype, "lora": m.lora,
                      "trust_remote_code": m.trust_remote_code},
            "reference": model_identity(reference), "table": file_sha(table)}


def build_value(cfg, ref_path: str, table_path: str, out_dir: str, *, reward: Reward,
                show_progress: bool = True) -> dict:
    """The value stage: fit the head on pi_ref's val generations, write the value table into ``out_dir``.

    cfg: RunConfig (value, model, generation, reward, scoring sections and seed are used).
    ref_path: pi_ref (HF folder or hub id). table_path: the scored table (parquet, with ``reward``).
    reward: the run's reward, with the scored table's statistics (targets on its scale).
    Returns the fit and advantage figures (also written as JSON).
    """
    # lazy: alol_ray.models (transformers) (alol_ray.value.fit imports without them)
    from alol_ray.models import load_frozen_policy

    vcfg = cfg.value
    os.makedirs(out_dir, exist_ok=True)
    table = pd.read_parquet(table_path)
    for col in (C.PROMPT, C.SPLIT, C.REWARD):
        if col not in table.columns:
            raise UserError(f"{table_path}: the scored table has no '{col}' column")
    val_prompts = list(pd.unique(table.loc[table[C.SPLIT] == "val", C.PROMPT]))
    if vcfg.max_prompts is not None:
        val_prompts = val_prompts[: vcfg.max_prompts]
    if len(val_prompts) < 2:
        raise UserError(f"{table_path}: the value head needs val prompts (split 'val'); found {len(val_prompts)}")

    gen = cfg.generation
    log.info(f"[value] pi_ref answers {len(val_prompts)} val prompts (greedy, {gen.max_new_tokens} new tokens)")
    replies = generate_greedy(ref_path, val_prompts, cfg)
    scorer = reward.scorer(pool=cfg.scoring.reward_pool)
    targets = np.asarray(scorer.rewards(val_prompts, replies)[C.REWARD], dtype=np.float64)
    if not np.all(np.isfinite(targets)):
        raise UserError(f"the reward of {int((~np.isfinite(targets)).sum())} of pi_ref's val replies is not finite; "
                        "check the reward components")
    write_parquet(os.path.join(out_dir, GENERATIONS),
                  pd.DataFrame({C.PROMPT: val_prompts, C.RESPONSE: replies, C.REWARD: targets}))
    faults.hit("value.targets")  # tests: a crash between the generations and the fit

    # Frozen: pi_ref only supplies the prompt states, loaded as training loads the policy (dtype, 4-bit).
    model, tokenizer = load_frozen_policy(ref_path, cfg.model, _device())
    fmt = prompt_format(cfg)
    check_chat_template(tokenizer, fmt, ref_path)
    max_prompt = cfg.model.max_prompt_tokens
    states = prompt_states(model, tokenizer, val_prompts, max_prompt, vcfg.batch_size, show_progress, fmt=fmt)
    result = fit_value_head(states, targets, heads=vcfg.heads, dropout=vcfg.dropout, max_value=vcfg.max_value,
                            lr=vcfg.lr, epochs=vcfg.epochs, batch_size=vcfg.batch_size,
                            holdout_fraction=vcfg.holdout_fraction, seed=cfg.seed)
    fit = result.report
    fit["reference"] = ref_path
    write_json(os.path.join(out_dir, FIT_REPORT), fit)
    log.info(f"[value] fit: held-out MSE {fit['mse/holdout']:.4f} vs predict-the-mean {fit['mse/holdout_predict_mean']:.4f}"
             f" (best epoch {fit['best_epoch']}/{vcfg.epochs}; {fit['prompts/fit']} fit / {fit['prompts/holdout']} "
             f"held-out prompts; mean target {fit['target/mean_fit']:.3f})")
    save_head(result.head, out_dir, reference=ref_path, max_prompt_tokens=max_prompt,
              best_epoch=fit["best_epoch"], holdout_mse=fit["mse/holdout"])

    prompts = list(pd.unique(table[C.PROMPT]))
    values = prompt_values(model, tokenizer, result.head.to(_device()), prompts, max_prompt_tokens=max_prompt,
                           batch_size=vcfg.batch_size, show_progress=show_progress, fmt=fmt)
    if not np.all(np.isfinite(values)):
        raise UserError(f"the value head gave {int((~np.isfinite(values)).sum())} non-finite values; "
                        "nothing was written (check value.* settings)")
    scored = add_value_columns(table, dict(zip(prompts, values)), source=table_path)
    write_parquet(os.path.join(out_dir, TABLE_FILE), scored)

    adv = advantage_report(scored)
    adv["histogram"] = os.path.basename(plot_advantages(scored, os.path.join(out_dir, HISTOGRAM)))
    write_json(os.path.join(out_dir, ADVANTAGE_REPORT), adv)
    a = adv["advantage/train"]
    log.info(f"[value] advantages of {a['rows']} train rows: A > 0 for {a['positive_fraction']:.1%}; "
             + ", ".join(f"p{q} {a[f'p{q}']:+.3f}" for q in PERCENTILES))
    if "advantage/train_best" in adv:
        log.info(f"[value] rank-0 train rows: A > 0 for {adv['advantage/train_best']['positive_fraction']:.1%}")
    return {"fit": {k: v for k, v in fit.items() if k != "epochs"}, "advantages": adv,
            "table": os.path.join(out_dir, TABLE_FILE)}
