"""The evaluation job: one policy, one split of the run's prompts -> replies, rewards, metrics.

    result = run_eval(cfg, model="runs/builtin/train/a_lol-s0/best", method="a_lol", seed=0)
    print(result.table)

1. prompts: the run's canonical rows (``pipeline.ensure_rows``), one row per ``prompt_id`` of the split,
   ordered by ``prompt_id``, the first ``eval.max_prompts`` of them;
2. replies: ``Generator`` (vLLM on GPU, transformers on CPU) with ``generation.*`` settings;
3. rewards: the run's ``RewardScorer`` components, in this process;
4. the reference policy's replies to the same prompts (generated once, cached in
   ``<run>/eval/reference_replies.parquet``) for the win rate;
5. metrics (``evaluation.metrics``): per-example parquet + summary JSON + a printed table.

Every method is evaluated by this one function, so their numbers line up.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from typing import Callable, Optional

import numpy as np
import pandas as pd

from alol_ray import columns as C
from alol_ray.config import RunConfig
from alol_ray.errors import UserError
from alol_ray.runs import RunPaths

# Per-example columns besides the canonical ones (prompt_id, prompt, response, reward, reward/<name>).
RESPONSE_TOKENS = "response_tokens"  # int: tokens of the reply (EOS excluded)
RESPONSE_WORDS = "response_words"  # int: whitespace tokens of the reply
FINISH_REASON = "finish_reason"  # str: eos | stop | length
REF_RESPONSE = "ref_response"  # str: the reference policy's reply to the same prompt
REF_REWARD = "ref_reward"  # float: its total reward
WIN = "win"  # float: 1 win, 0.5 tie, 0 loss against the reference reply

REFERENCE_METHOD = "reference"
REFERENCE_CACHE = "reference_replies.parquet"


@dataclass
class EvalResult:
    examples: pd.DataFrame
    summary: dict
    examples_path: str
    summary_path: str
    table: str


def summary_path_for(examples_path: str) -> str:
    """The summary JSON next to the per-example parquet."""
    stem = examples_path[: -len(".parquet")] if examples_path.endswith(".parquet") else examples_path
    return stem + ".json"


# ----------------------------------------------------------------------------------------------- inputs


def eval_prompts(cfg: RunConfig, split: str, max_prompts: Optional[int], log: Callable = print) -> pd.DataFrame:
    """One row per prompt of ``split`` (prompt_id, prompt), ordered by prompt_id, at most ``max_prompts``."""
    from alol_ray.pipeline import ensure_rows

    rows = pd.read_parquet(ensure_rows(cfg, log), columns=[C.PROMPT_ID, C.PROMPT, C.SPLIT])
    chosen = rows[rows[C.SPLIT] == split]
    if chosen.empty:
        have = sorted(rows[C.SPLIT].unique())
        raise UserError(f"eval split '{split}' has no prompts in {RunPaths.from_config(cfg).rows} (splits: {have}); "
                        "pick one with --split or eval.split=")
    prompts = chosen.drop_duplicates(C.PROMPT_ID).sort_values(C.PROMPT_ID, kind="stable")
    if max_prompts is not None:
        if max_prompts < 1:
            raise UserError(f"--max-prompts must be >= 1, got {max_prompts}")
        prompts = prompts.head(max_prompts)
    return prompts[[C.PROMPT_ID, C.PROMPT]].reset_index(drop=True)


def reference_policy(cfg: RunConfig, log: Callable = print) -> str:
    """pi_ref: ``reference.path`` when set, else what the training stage's ``ensure_reference`` makes."""
    if cfg.reference.path:
        return cfg.reference.path
    from alol_ray import pipeline

    make_reference = getattr(pipeline, "ensure_reference", None)
    if make_reference is not None:
        return make_reference(cfg, log)
    ref = RunPaths.from_config(cfg).ref
    if os.path.exists(os.path.join(ref, "config.json")):
        return ref
    raise UserError("no reference policy: set reference.path=<folder or hub id> (or pass --model and "
                    "eval.win_rate=false)")


def score_replies(cfg: RunConfig, prompts: list[str], responses: list[str]) -> dict[str, np.ndarray]:
    """``reward`` and ``reward/<name>`` (plus ``reward_raw/<name>`` for transformed components) per reply,
    with the run's RewardScorer in this process (the scored table's statistics for ``standardise``)."""
    from alol_ray.scoring.reward import RewardScorer

    components = cfg.reward.components
    stats = {}
    needs_stats = any(c.transform == "standardise" and not {"mean", "std"} <= set(c.params or {})
                      for c in components)
    if needs_stats:
        from alol_ray.scoring.table import load_reward_stats

        scored = RunPaths.from_config(cfg).scored
        try:
            stats = load_reward_stats(scored)
        except FileNotFoundError:
            raise UserError(f"a standardised reward needs the scored table's statistics ({scored}): "
                            "run `alol score` first, or give the component params.mean and params.std") from None
    pool = cfg.scoring.reward_pool
    scorer = RewardScorer(components, use_gpu=pool.num_gpus > 0, bf16=pool.bf16,
                          num_threads=max(1, int(pool.num_cpus)), stats=stats)
    return scorer.rewards(list(prompts), list(responses))


def generate_replies(model_path: str, cfg: RunConfig, prompts: list[str], log: Callable = print):
    """(GenerationOutputs, engine name) for ``prompts`` from one policy; the actors are shut down after."""
    from alol_ray.generation import Generator

    log(f"[eval] generating {len(prompts)} replies with {model_path}")
    with Generator(model_path, cfg.generation, max_prompt_tokens=cfg.model.max_prompt_tokens) as gen:
        return gen.generate_with_ids(prompts), gen.engine


def _reply_columns(outputs) -> dict[str, list]:
    return {
        C.RESPONSE: [o.text for o in outputs],
        RESPONSE_TOKENS: [o.num_tokens - (1 if o.finish_reason == "eos" else 0) for o in outputs],
        FINISH_REASON: [o.finish_reason for o in outputs],
    }


def _model_identity(path: str) -> str:
    from alol_ray.scoring.table import model_identity

    return model_identity(path)


def reference_fingerprint(cfg: RunConfig, ref_path: str) -> str:
    from alol_ray.pipeline import fingerprint

    return fingerprint("ref-replies-v1", _model_identity(ref_path), cfg.generation, cfg.model.max_prompt_tokens)


def reference_replies(cfg: RunConfig, ref_path: str, prompts: pd.DataFrame, log: Callable = print,
                      own: Optional[pd.DataFrame] = None) -> pd.DataFrame:
    """The reference policy's replies to ``prompts`` (prompt_id, prompt, response, response_tokens,
    finish_reason), from the run's cache; missing prompts are generated and added to it.

    ``own``: replies just generated by the reference itself (when it is the policy under evaluation).
    """
    cache_dir = os.path.join(RunPaths.from_config(cfg).root, "eval")
    cache_path = os.path.join(cache_dir, REFERENCE_CACHE)
    meta_path = summary_path_for(cache_path)
    fp = reference_fingerprint(cfg, ref_path)
    cached = pd.DataFrame(columns=[C.PROMPT_ID, C.PROMPT, C.RESPONSE, RESPONSE_TOKENS, FINISH_REASON])
    if os.path.exists(cache_path) and os.path.exists(meta_path):
        with open(meta_path, encoding="utf-8") as fh:
            if json.load(fh).get("fingerprint") == fp:
                cached = pd.read_parquet(cache_path).drop_duplicates([C.PROMPT_ID, C.PROMPT], keep="last")
            else:
                log("[eval] reference replies are stale (pi_ref or generation settings changed): regenerating")
    key = [C.PROMPT_ID, C.PROMPT]
    merged = prompts[key].merge(cached, on=key, how="left")
    missing = merged[C.RESPONSE].isna().to_numpy()
    if missing.any():
        if own is not None:
            fresh = own.loc[missing, key + [C.RESPONSE, RESPONSE_TOKENS, FINISH_REASON]]
        else:
            todo = prompts.loc[missing, key].reset_index(drop=True)
            outputs, _ = generate_replies(ref_path, cfg, todo[C.PROMPT].tolist(), log)
            fresh = todo.assign(**_reply_columns(outputs))
        cached = pd.concat([cached, fresh], ignore_index=True) if len(cached) else fresh.reset_index(drop=True)
        os.makedirs(cache_dir, exist_ok=True)
        cached.to_parquet(cache_path, index=False)
        with open(meta_path, "w", encoding="utf-8") as fh:
            json.dump({"fingerprint": fp, "reference": ref_path, "replies": len(cached)}, fh, indent=2)
        merged = prompts[key].merge(cached, on=key, how="left")
    else:
        log(f"[eval] reference replies from cache ({cache_path})")
    return merged


# ----------------------------------------------------------------------------------------------- the job


def eval_fingerprint(cfg: RunConfig, model_path: str, split: str, max_prompts: Optional[int],
                     ref_path: Optional[str]) -> str:
    """What an evaluation's numbers depend on (``pipeline.ensure_eval`` skips a matching one)."""
    from alol_ray.pipeline import fingerprint
    from alol_ray.scoring.table import file_sha

    rows = RunPaths.from_config(cfg).rows
    return fingerprint("eval-v1", _model_identity(model_path), cfg.generation, cfg.reward, cfg.model.max_prompt_tokens,
                       cfg.eval.bootstrap_samples, cfg.eval.bootstrap_seed, split, max_prompts,
                       file_sha(rows) if os.path.exists(rows) else None,
                       _model_identity(ref_path) if ref_path else None)


def run_eval(cfg: RunConfig, *, model: Optional[str] = None, split: Optional[str] = None,
             max_prompts: Optional[int] = None, method: Optional[str] = None, seed: Optional[int] = None,
             out: Optional[str] = None, log: Callable = print) -> EvalResult:
    """Evaluate ``model`` (default: the run's reference policy) on ``split`` and write the results."""
    from alol_ray.ray_utils import init_ray
    from evaluation.metrics import format_table, summarize

    split = split or cfg.eval.split
    max_prompts = max_prompts if max_prompts is not None else cfg.eval.max_prompts
    if model is not None and not os.path.exists(model) and (os.path.isabs(model) or model.startswith(".")):
        raise UserError(f"--model: no such folder: {model}")
    prompts = eval_prompts(cfg, split, max_prompts, log)
    ref_path = reference_policy(cfg, log) if (model is None or cfg.eval.win_rate) else None
    model_path = model or ref_path
    method = method or (REFERENCE_METHOD if model is None else "model")
    seed = cfg.train.seed if seed is None else seed
    out = out or RunPaths.from_config(cfg).eval(method, seed)

    init_ray(cfg.ray)
    outputs, engine = generate_replies(model_path, cfg, prompts[C.PROMPT].tolist(), log)
    examples = prompts.assign(**_reply_columns(outputs))
    examples[RESPONSE_WORDS] = [len(t.split()) for t in examples[C.RESPONSE]]

    log(f"[eval] scoring {len(examples)} replies")
    rewards = score_replies(cfg, examples[C.PROMPT].tolist(), examples[C.RESPONSE].tolist())
    for col, values in rewards.items():
        examples[col] = values
    ref_rewards = None
    if ref_path is not None and cfg.eval.win_rate:
        is_ref = os.path.realpath(ref_path) == os.path.realpath(model_path)
        ref = reference_replies(cfg, ref_path, prompts, log, own=examples if is_ref else None)
        examples[REF_RESPONSE] = ref[C.RESPONSE].to_numpy()
        ref_rewards = score_replies(cfg, examples[C.PROMPT].tolist(), examples[REF_RESPONSE].tolist())[C.REWARD]
        examples[REF_REWARD] = ref_rewards

    reward_cols = [C.REWARD] + [C.reward_column(c.name) for c in cfg.reward.components]
    metrics, ci = summarize({c: examples[c].to_numpy() for c in reward_cols}, examples[C.RESPONSE].tolist(),
                            examples[RESPONSE_TOKENS].to_numpy(), ref_rewards,
                            n_bootstrap=cfg.eval.bootstrap_samples, seed=cfg.eval.bootstrap_seed)
    if ref_rewards is not None:
        from evaluation.metrics import win_outcomes

        examples[WIN] = win_outcomes(examples[C.REWARD].to_numpy(), ref_rewards)

    summary = {
        "method": method, "seed": seed, "model": model_path, "reference": ref_path, "split": split,
        "prompts": len(examples), "engine": engine, "metrics": metrics, "ci95": ci,
        "generation": asdict(cfg.generation), "max_prompt_tokens": cfg.model.max_prompt_tokens,
        "examples": os.path.abspath(out),
        "fingerprint": eval_fingerprint(cfg, model_path, split, max_prompts, ref_path),
    }
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    examples.to_parquet(out, index=False)
    summary_path = summary_path_for(out)
    with open(summary_path, "w", encoding="utf-8") as fh:
        json.dump(summary, fh, indent=2)
    title = f"alol eval: {method}-s{seed} on '{split}' ({len(examples)} prompts, {engine} engine)"
    table = format_table(metrics, ci, title=title)
    return EvalResult(examples=examples, summary=summary, examples_path=out, summary_path=summary_path, table=table)
