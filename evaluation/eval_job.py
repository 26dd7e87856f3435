"""The evaluation job: one policy, one set of prompts -> replies, rewards, metrics.

    result = run_eval(cfg, prompts=frame, model_path="runs/builtin/train/a_lol-s0/best", method="a_lol", seed=0,
                      split="test", ref_path=..., ref_cache=..., reward=pipeline.reward(), out_dir=...)
    print(result.table)

1. prompts: given by the caller (the pipeline takes one row per prompt_id of the split, in order);
2. replies: ``Generator`` (vLLM where installed, transformers otherwise) with ``generation.*`` settings;
3. rewards: the run's reward (``scoring.reward.run_scorer``), in this process;
4. the reference policy's replies to the same prompts and their rewards (generated and scored once, cached in
   ``ref_cache`` and beside it) for the win rate;
5. metrics (``alol_ray.evaluation.metrics``): ``examples.parquet`` + ``summary.json`` in ``out_dir`` + a printed table.

Every method is evaluated by this one function, so their numbers line up.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np
import pandas as pd

from alol_ray import columns as C
from alol_ray import faults
from alol_ray.atomic import read_json, write_json, write_parquet
from alol_ray.config import RunConfig
from alol_ray.engines import generation_identity
from alol_ray.families import prompt_format, prompt_identity
from alol_ray.generation import Generator
from alol_ray.hashing import file_sha, fingerprint, model_identity
from alol_ray.ray_utils import init_ray
from alol_ray.scoring.reward import Reward
from alol_ray.evaluation.metrics import format_table, summarize, win_outcomes

log = logging.getLogger("alol")

# Per-example columns besides the canonical ones (prompt_id, prompt, response, reward, reward/<name>).
RESPONSE_TOKENS = "response_tokens"  # int: tokens of the reply (EOS excluded)
RESPONSE_WORDS = "response_words"  # int: whitespace tokens of the reply
FINISH_REASON = "finish_reason"  # str: eos | stop | length
REF_RESPONSE = "ref_response"  # str: the reference policy's reply to the same prompt
REF_REWARD = "ref_reward"  # float: its total reward
WIN = "win"  # float: 1 win, 0.5 tie, 0 loss against the reference reply

REFERENCE_METHOD = "reference"
EXAMPLES_FILE = "examples.parquet"
SUMMARY_FILE = "summary.json"


@dataclass
class EvalResult:
    examples: pd.DataFrame
    summary: dict
    examples_path: str
    summary_path: str
    table: str


def identity(cfg: RunConfig, *, model_path: str, ref_path: Optional[str], split: str, prompts: pd.DataFrame,
             reward: Reward) -> dict:
    """Everything one evaluation reads (the eval stage's fingerprint): the policy (and pi_ref, for the win rate)
    by content, the prompts, their decoding (``generation.*``, ``model.max_prompt_tokens``, the prompt format),
    the run's ``reward`` (components and the scored table's statistics) at the reward pool's precision, and the
    statistics' settings (``eval.bootstrap_*``, ``eval.win_rate``)."""
    ev = cfg.eval
    return {"model": model_identity(model_path), "generation": generation_identity(cfg.generation),
            "reward": reward.identity(),
            "reward_pool": cfg.scoring.reward_pool, "max_prompt_tokens": cfg.model.max_prompt_tokens,
            "eval": {"bootstrap_samples": ev.bootstrap_samples, "bootstrap_seed": ev.bootstrap_seed,
                     "win_rate": ev.win_rate},
            "split": split, "prompts": prompts.to_dict("list"),
            "reference": model_identity(ref_path) if ref_path else None, "prompt": prompt_identity(cfg)}


def score_replies(cfg: RunConfig, prompts: list[str], responses: list[str], reward: Reward) -> dict[str, np.ndarray]:
    """``reward`` and ``reward/<name>`` (plus ``reward_raw/<name>`` for transformed components) per reply."""
    return reward.scorer(pool=cfg.scoring.reward_pool).rewards(list(prompts), list(responses))


def generate_replies(model_path: str, cfg: RunConfig, prompts: list[str]):
    """(GenerationOutputs, engine name) for ``prompts`` from one policy; the actors are shut down after."""
    log.info(f"[eval] generating {len(prompts)} replies with {model_path}")
    with Generator(model_path, cfg.generation, max_prompt_tokens=cfg.model.max_prompt_tokens,
                   prompt_format=prompt_format(cfg)) as gen:
        return gen.generate_with_ids(prompts), gen.engine


def _reply_columns(outputs) -> dict[str, list]:
    return {
        C.RESPONSE: [o.text for o in outputs],
        RESPONSE_TOKENS: [o.num_tokens - (1 if o.finish_reason == "eos" else 0) for o in outputs],
        FINISH_REASON: [o.finish_reason for o in outputs],
    }


def _marker_path(cache_path: str) -> str:
    return cache_path[: -len(".parquet")] + ".json"


def read_cache(cache_path: str, fp: str, key: list[str]) -> Optional[pd.DataFrame]:
    """The rows of a keyed parquet cache (one per ``key``, the last kept) when the JSON marker beside it, written
    last, holds ``fp`` and the parquet's hash; None when it is absent, stale or half-written."""
    meta = read_json(_marker_path(cache_path)) or {}
    if os.path.exists(cache_path) and meta.get("fingerprint") == fp and meta.get("sha") == file_sha(cache_path):
        return pd.read_parquet(cache_path).drop_duplicates(key, keep="last")
    return None


def extend_cache(cache_path: str, fp: str, cached: pd.DataFrame, fresh: pd.DataFrame) -> pd.DataFrame:
    """``cached`` plus the ``fresh`` rows, written to the cache at ``cache_path``, then its marker; returned."""
    cached = pd.concat([cached, fresh], ignore_index=True) if len(cached) else fresh.reset_index(drop=True)
    write_parquet(cache_path, cached)
    write_json(_marker_path(cache_path), {"fingerprint": fp, "sha": file_sha(cache_path), "replies": len(cached)})
    return cached


def reference_fingerprint(cfg: RunConfig, ref_path: str) -> str:
    return fingerprint("ref-replies-v1", model_identity(ref_path), generation_identity(cfg.generation),
                       cfg.model.max_prompt_tokens,
                       *prompt_identity(cfg))


def reference_replies(cfg: RunConfig, ref_path: str, prompts: pd.DataFrame, cache_path: str,
                      own: Optional[pd.DataFrame] = None) -> pd.DataFrame:
    """The reference policy's replies to ``prompts`` (prompt_id, prompt, response, response_tokens,
    finish_reason) from the cache at ``cache_path``; missing prompts are generated and added to it.

    The cache is a parquet file and a JSON marker beside it written last (the fingerprint of pi_ref and the
    generation settings, and the parquet's hash): a half-written or stale cache is never read.
    ``own``: replies just generated by the reference itself (when it is the policy under evaluation).
    """
    fp = reference_fingerprint(cfg, ref_path)
    key = [C.PROMPT_ID, C.PROMPT]
    cached = read_cache(cache_path, fp, key)
    if cached is None:
        if read_json(_marker_path(cache_path)):
            log.info("[eval] reference replies are stale (pi_ref or generation settings changed): regenerating")
        cached = pd.DataFrame(columns=[C.PROMPT_ID, C.PROMPT, C.RESPONSE, RESPONSE_TOKENS, FINISH_REASON])
    merged = prompts[key].merge(cached, on=key, how="left")
    missing = merged[C.RESPONSE].isna().to_numpy()
    if missing.any():
        if own is not None:
            fresh = own.loc[missing, key + [C.RESPONSE, RESPONSE_TOKENS, FINISH_REASON]]
        else:
            todo = prompts.loc[missing, key].reset_index(drop=True)
            outputs, _ = generate_replies(ref_path, cfg, todo[C.PROMPT].tolist())
            fresh = todo.assign(**_reply_columns(outputs))
        cached = extend_cache(cache_path, fp, cached, fresh)
        merged = prompts[key].merge(cached, on=key, how="left")
    else:
        log.info(f"[eval] reference replies from cache ({cache_path})")
    return merged


def rewards_cache_path(ref_cache: str) -> str:
    """Where the rewards of the reference replies cached at ``ref_cache`` are kept: beside them."""
    return ref_cache[: -len(".parquet")] + "_rewards.parquet"


def reference_rewards(cfg: RunConfig, examples: pd.DataFrame, cache_path: str, stats: Optional[dict] = None,
                      known: Optional[np.ndarray] = None) -> np.ndarray:
    """The total reward of the reference replies in ``examples`` (prompt_id, prompt, ref_response), from the
    cache at ``cache_path`` (keyed by prompt_id, prompt and reply); the missing ones are taken from ``known``
    (when the reference itself is under evaluation: its rewards, NaN where its reply is not the cached one) or
    scored, and added. Every policy of a comparison is judged against the same reference replies, so they are
    scored once, not once per policy. The cache's marker holds the fingerprint of the reward settings (the reward
    models by content), so another reward means scoring again (``read_cache``)."""
    fp = fingerprint("ref-rewards-v1", cfg.reward, stats or {})
    key = [C.PROMPT_ID, C.PROMPT, C.RESPONSE]
    want = pd.DataFrame({C.PROMPT_ID: examples[C.PROMPT_ID].to_numpy(), C.PROMPT: examples[C.PROMPT].to_numpy(),
                         C.RESPONSE: examples[REF_RESPONSE].to_numpy()})
    cached = read_cache(cache_path, fp, key)
    if cached is None:
        cached = pd.DataFrame({**{k: pd.Series(dtype=want[k].dtype) for k in key}, C.REWARD: pd.Series(dtype=float)})
    rewards = want.merge(cached, on=key, how="left")[C.REWARD].to_numpy(dtype=float, copy=True)
    missing = np.isnan(rewards)
    if missing.any():
        todo = want[missing].reset_index(drop=True)
        fresh = np.full(len(todo), np.nan) if known is None else np.asarray(known, dtype=float)[missing]
        unknown = np.isnan(fresh)
        if unknown.any():
            part = todo[unknown]
            fresh[unknown] = score_replies(cfg, part[C.PROMPT].tolist(), part[C.RESPONSE].tolist(),
                                           Reward(cfg.reward, stats or {}))[C.REWARD]
        rewards[missing] = fresh
        extend_cache(cache_path, fp, cached, todo.assign(**{C.REWARD: fresh}))
    else:
        log.info(f"[eval] rewards of the reference replies from cache ({cache_path})")
    return rewards


def run_eval(cfg: RunConfig, *, prompts: pd.DataFrame, model_path: str, method: str, seed: int, split: str,
             out_dir: str, ref_path: Optional[str] = None, ref_cache: Optional[str] = None,
             reward: Optional[Reward] = None) -> EvalResult:
    """Evaluate ``model_path`` on ``prompts`` (prompt_id, prompt) and write the results into ``out_dir``.
    With ``ref_path`` and ``eval.win_rate``, the reference policy's replies (cached in ``ref_cache``) are
    scored too and the win rate is reported. ``reward``: the run's reward with the scored table's statistics
    (default: ``cfg.reward`` without any)."""
    reward = reward or Reward(cfg.reward)
    init_ray(cfg.ray)
    outputs, engine = generate_replies(model_path, cfg, prompts[C.PROMPT].tolist())
    examples = prompts.assign(**_reply_columns(outputs))
    examples[RESPONSE_WORDS] = [len(t.split()) for t in examples[C.RESPONSE]]

    log.info(f"[eval] scoring {len(examples)} replies")
    for col, values in score_replies(cfg, examples[C.PROMPT].tolist(), examples[C.RESPONSE].tolist(), reward).items():
        examples[col] = values
    ref_rewards = None
    if ref_path is not None and cfg.eval.win_rate:
        is_ref = os.path.realpath(ref_path) == os.path.realpath(model_path)
        ref = reference_replies(cfg, ref_path, prompts, ref_cache, own=examples if is_ref else None)
        examples[REF_RESPONSE] = ref[C.RESPONSE].to_numpy()
        known = None
        if is_ref:  # its own rewards, where its reply is the cached one (the cache may hold an earlier reply)
            same = (examples[REF_RESPONSE] == examples[C.RESPONSE]).to_numpy()
            known = np.where(same, examples[C.REWARD].to_numpy(dtype=float), np.nan)
        ref_rewards = reference_rewards(cfg, examples, rewards_cache_path(ref_cache), reward.stats, known=known)
        examples[REF_REWARD] = ref_rewards
        examples[WIN] = win_outcomes(examples[C.REWARD].to_numpy(), ref_rewards)

    reward_cols = [C.REWARD] + [C.reward_column(c.name) for c in cfg.reward.components]
    metrics, ci = summarize({c: examples[c].to_numpy() for c in reward_cols}, examples[C.RESPONSE].tolist(),
                            examples[RESPONSE_TOKENS].to_numpy(), ref_rewards,
                            n_bootstrap=cfg.eval.bootstrap_samples, seed=cfg.eval.bootstrap_seed)
    summary = {
        "method": method, "seed": seed, "model": model_path, "reference": ref_path, "split": split,
        "prompts": len(examples), "engine": engine, "metrics": metrics, "ci95": ci,
        "generation": asdict(cfg.generation), "max_prompt_tokens": cfg.model.max_prompt_tokens,
        "chat_template": cfg.model.chat_template,
    }
    faults.hit("eval.scored", method)  # tests: a crash after the replies were scored, before anything is written
    examples_path = write_parquet(os.path.join(out_dir, EXAMPLES_FILE), examples)
    summary_path = write_json(os.path.join(out_dir, SUMMARY_FILE), summary)
    title = f"alol eval: {method}-s{seed} on '{split}' ({len(examples)} prompts, {engine} engine)"
    return EvalResult(examples=examples, summary=summary, examples_path=examples_path, summary_path=summary_path,
                      table=format_table(metrics, ci, title=title))
