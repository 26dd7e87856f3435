"""The scored table and its content-addressed cache.

Layout::

    <run>/scored/table.parquet                    the canonical rows + row_key + reward + ref log-prob columns
    <run>/scored/scoring.json                     what the run scored, scorer keys, reward statistics
    <run>/cache/scores/<scorer_key>/part-*.parquet  row_key + the scorer's output, one part per finished block
    <run>/cache/scores/<scorer_key>/scorer.json     what the key stands for

The cache lives outside the stage's output folder: a table built for another config (another reward
weight, other rows) reuses every score it can, and an interrupted pass keeps its finished parts.

A **row key** hashes the row's content (prompt, response); a **scorer key** hashes everything a score
depends on: the scorer's kind and settings, the model's identity (hub id@revision, or a hash of the
folder's files), the source of the scoring code, the numeric precision. A pass scores only the row keys
its scorer's cache lacks, so a re-run does no work, appended rows cost only themselves, and an
interrupted run resumes: every finished block was written as a part (temp name, then an atomic
rename), and a block is retried as a whole if its actor dies.

Where reward transforms apply (the HH data carries raw reward-model logits; A-LoL trains on
sigmoid(logit)):

- the cache holds raw scores; weights and each component's ``transform`` apply when the table is
  assembled (``reward/<name>`` transformed, ``reward_raw/<name>`` raw when they differ), so changing a
  weight or transform re-assembles the table without scoring anything;
- rows that carry a reward keep it unless ``reward.rescore``; ``reward.train_transform`` (raw | sigmoid)
  applies to such carried rewards, and the carried value stays in ``reward_raw/data`` whenever the table's
  ``reward`` differs from it;
- so everything downstream (value head, training, evaluation) reads one ``reward`` column on one scale.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import logging
import os
import time
import uuid
from typing import Any, Callable, Optional

import numpy as np
import pandas as pd

from alol_ray import columns as C
from alol_ray import faults, storage
from alol_ray.actor_pool import actor_kwargs, pool_pass
from alol_ray.atomic import read_json, write_json, write_parquet
from alol_ray.config import ActorPoolConfig, RewardComponentConfig, RunConfig
from alol_ray.errors import ConfigError, UserError
from alol_ray.families import TEXT, PromptFormat, prompt_format
from alol_ray.hashing import model_identity, module_identity
from alol_ray.reward_kinds import kind_of, needs_model
from alol_ray.scoring.reference import ReferenceScorer
from alol_ray.scoring.reward import Reward, RewardScorer, check_components, combine, raw_column, scorer_params

log = logging.getLogger("alol")

TABLE_FILE = "table.parquet"
REPORT_FILE = "scoring.json"
DATA_REWARD = "data"  # raw_column(DATA_REWARD) keeps a reward the input rows carried
KEY_VERSION = "v1"  # bump when a cached score's meaning changes


# ----------------------------------------------------------------------------------------------- keys


def row_keys(prompts, responses) -> np.ndarray:
    """Content hash of each (prompt, response) row: 32 hex digits."""
    return np.array([hashlib.sha256(json.dumps([p, r], ensure_ascii=False).encode()).hexdigest()[:32]
                     for p, r in zip(prompts, responses)], dtype=object)


def _key(prefix: str, identity: dict) -> str:
    blob = json.dumps(identity, sort_keys=True, default=str)
    return f"{prefix}-{hashlib.sha256(blob.encode()).hexdigest()[:20]}"


def _precision(pool: ActorPoolConfig) -> str:
    return "bfloat16" if (pool.num_gpus > 0 and pool.bf16) else "float32"


def reward_scorer_key(comp: RewardComponentConfig, pool: ActorPoolConfig) -> str:
    """What a component's raw score depends on. Name, weight and transform are not part of it."""
    kind = kind_of(comp)
    identity: dict[str, Any] = {"v": KEY_VERSION, "kind": comp.kind, "params": scorer_params(comp)}
    identity.update(kind.identity(comp, kind, _precision(pool)))
    return _key(comp.kind, identity)


def reference_scorer_key(ref_path: str, model_cfg, pool: ActorPoolConfig, fmt: PromptFormat = TEXT) -> str:
    """What the reference log-probs depend on: pi_ref, how it is loaded (dtype, 4-bit; ``model_cfg``), the
    truncation limits, how prompts become ids (``fmt``: text or the chat template), the tokenisation code."""
    return _key("reference", {"v": KEY_VERSION, "model": model_identity(ref_path),
                              "max_prompt": model_cfg.max_prompt_tokens, "max_response": model_cfg.max_response_tokens,
                              "precision": _precision(pool), "load": model_cfg.load_identity(pool.num_gpus > 0),
                              "prompt_format": dataclasses.asdict(fmt),
                              "tokenization": module_identity("alol_ray.tokenization"),
                              "families": module_identity("alol_ray.families")})


# ----------------------------------------------------------------------------------------------- cache


class ScoreCache:
    """Parquet parts of scored rows, one folder per scorer key."""

    def __init__(self, root: str):
        self.root = root

    def folder(self, key: str) -> str:
        return os.path.join(self.root, key)

    def parts(self, key: str) -> list[str]:
        return sorted(glob.glob(os.path.join(self.folder(key), "part-*.parquet")))

    def read(self, key: str, columns: Optional[list[str]] = None) -> pd.DataFrame:
        """Every cached row of a scorer (duplicates, if any, included: callers decide)."""
        frames = [pd.read_parquet(p, columns=columns) for p in self.parts(key)]
        if not frames:
            return pd.DataFrame({C.ROW_KEY: pd.Series([], dtype=object)})
        return pd.concat(frames, ignore_index=True)

    def done(self, key: str) -> set[str]:
        return set(self.read(key, columns=[C.ROW_KEY])[C.ROW_KEY])

    def write_part(self, key: str, frame: pd.DataFrame) -> str:
        """Write one part atomically: a reader never sees half a part, a crash leaves only a temp file."""
        path = os.path.join(self.folder(key), f"part-{time.time_ns()}-{uuid.uuid4().hex[:8]}.parquet")
        written = write_parquet(path, frame)
        storage.persist(written)  # a bucket run: in the bucket before the next part is scored
        return written

    def describe(self, key: str, info: dict) -> None:
        path = os.path.join(self.folder(key), "scorer.json")
        if not os.path.exists(path):
            write_json(path, info)
            storage.persist(path)

    def clean_temp(self) -> None:
        """Temp files of a run that died mid-write (their blocks are simply scored again)."""
        for tmp in glob.glob(os.path.join(self.root, "*", ".*.tmp")):
            os.remove(tmp)


# ----------------------------------------------------------------------------------------------- passes


def _run_with_retries(remaining: Callable[[], pd.DataFrame], fn_cls: type, ctor_kwargs: dict,
                      pool: ActorPoolConfig, scoring, on_output: Callable, desc: str, ray_cfg) -> None:
    """``pool_pass`` on the rows not cached yet, restarted up to ``scoring.pass_retries`` times when Ray loses an
    actor for good (e.g. ``ray.kill`` without restart, a lost node): Ray Data retries a task on a restarted
    actor, but fails the whole dataset when the actor cannot come back."""
    # lazy: ray (alol_ray.scoring.table imports without it)
    import ray

    lost = (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError,
            ray.exceptions.ObjectLostError)
    for attempt in range(scoring.pass_retries + 1):
        todo = remaining()
        if todo.empty:
            return
        try:
            pool_pass(todo, fn_cls, ctor_kwargs, pool, sort_by_length=scoring.sort_by_length,
                      batches_per_block=scoring.batches_per_block, on_output=on_output, desc=desc, ray_cfg=ray_cfg)
            return
        except lost as exc:
            if attempt == scoring.pass_retries:
                raise
            log.info(f"[score] {desc}: {type(exc).__name__} ({str(exc).splitlines()[0]}); "
                     f"restarting the pass for the {len(remaining())} rows not cached yet")


# ----------------------------------------------------------------------------------------------- scoring


@dataclasses.dataclass
class ScoreReport:
    table: str
    rows: int
    reward_scored: int  # rows the reward pass produced in this run (0 = all cached)
    reference_scored: int  # rows the reference pass produced in this run
    reward_keys: dict[str, str]
    reference_key: Optional[str]
    seconds: float

    def summary(self) -> dict:
        """What the stage records in stage.json (its own timing is recorded there already)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in ("table", "seconds")}


def rows_to_score(rows: pd.DataFrame, rescore: bool) -> np.ndarray:
    """Mask of rows whose reward is computed: all with ``rescore``, else those without a reward."""
    if rescore or C.REWARD not in rows:
        return np.ones(len(rows), dtype=bool)
    return rows[C.REWARD].isna().to_numpy()


def score_rows(rows: pd.DataFrame, cfg: RunConfig, out_dir: str, *, cache_dir: str, ref_path: Optional[str] = None,
               on_part: Optional[Callable[[str, int], None]] = None) -> ScoreReport:
    """Score canonical rows (rewards and, with ``ref_path``, reference log-probs) into
    ``<out_dir>/table.parquet`` (+ scoring.json), computing only what ``cache_dir`` lacks.

    ``on_part(pass_name, rows_done)`` is called after each cached part (progress hooks, fault tests).
    """
    start = time.time()
    for col in (C.PROMPT, C.RESPONSE):
        if col not in rows:
            raise UserError(f"rows to score lack the column '{col}'")
    components = list(cfg.reward.components)
    check_components(components)
    rows = rows.reset_index(drop=True).copy()
    rows[C.ROW_KEY] = row_keys(rows[C.PROMPT], rows[C.RESPONSE])
    os.makedirs(out_dir, exist_ok=True)
    cache = ScoreCache(cache_dir)
    cache.clean_temp()
    scoring = cfg.scoring

    # -- reward pass: every component, on the rows that need a reward and lack it in the cache (and on the
    #    agreement sample of rows that carry one, when a model scores it: cached like the rest)
    needs_reward = rows_to_score(rows, cfg.reward.rescore)
    if needs_reward.any() and not components:
        raise ConfigError(f"{int(needs_reward.sum())} rows carry no reward and reward.components is empty")
    agreement = agreement_sample(rows, needs_reward, components, scoring.agreement_rows)
    by_model = any(needs_model(c) for c in components)
    to_cache = needs_reward | (agreement if by_model else False)
    pool = scoring.reward_pool
    reward_keys = {c.name: reward_scorer_key(c, pool) for c in components} if to_cache.any() else {}
    unique = rows.loc[to_cache, [C.ROW_KEY, C.PROMPT, C.RESPONSE]].drop_duplicates(C.ROW_KEY)
    missing = {c.name: ~unique[C.ROW_KEY].isin(cache.done(reward_keys[c.name])).to_numpy() for c in components
               } if len(unique) else {}
    reward_scored = 0
    if missing and any(m.any() for m in missing.values()):
        done = {c.name: set(unique.loc[~missing[c.name], C.ROW_KEY]) for c in components}
        # Rows missing the same set of components go through one pool together.
        signature = pd.Series(["|".join(n for n in missing if missing[n][i]) for i in range(len(unique))])
        for sig, group in unique.groupby(signature.to_numpy(), sort=True):
            if not sig:
                continue
            todo = [c for c in components if c.name in sig.split("|")]
            for c in todo:
                cache.describe(reward_keys[c.name], {"component": dataclasses.asdict(c)})
            log.info(f"[score] reward: {len(group)} of {len(unique)} unique rows to score with {[c.name for c in todo]}")

            def write(out: pd.DataFrame, todo=todo) -> None:
                nonlocal reward_scored
                for c in todo:
                    new = ~out[C.ROW_KEY].isin(done[c.name]).to_numpy()  # a retried pass never caches twice
                    if new.any():
                        cache.write_part(reward_keys[c.name], pd.DataFrame(
                            {C.ROW_KEY: out[C.ROW_KEY].to_numpy()[new], "value": out[raw_column(c.name)].to_numpy()[new]}))
                    done[c.name].update(out[C.ROW_KEY])
                reward_scored += len(out)  # rows the pool produced (a duplicate from Ray would count twice)
                faults.hit("score.part", reward_scored)  # tests: the driver dies between two cached parts
                if on_part:
                    on_part("reward", reward_scored)

            def remaining(group=group, todo=todo) -> pd.DataFrame:
                return group[~np.logical_and.reduce([group[C.ROW_KEY].isin(done[c.name]).to_numpy() for c in todo])]

            # A reward model trained in a bucket run goes to the actors by its URI (alol_ray.storage).
            components = [{**dataclasses.asdict(c), "model": storage.shared(c.model) if c.model else c.model}
                          for c in todo]
            _run_with_retries(remaining, RewardScorer, {"components": components, "raw_only": True,
                               **actor_kwargs(pool)}, pool, scoring, write, "reward", cfg.ray)
    elif to_cache.any():
        log.info(f"[score] reward: all {len(unique)} unique rows cached")

    # -- reference pass: pi_ref log-probs of every row
    reference_key, reference_scored = None, 0
    if ref_path:
        rpool = scoring.reference_pool
        mp, mr = cfg.model.max_prompt_tokens, cfg.model.max_response_tokens
        fmt = prompt_format(cfg)
        reference_key = reference_scorer_key(ref_path, cfg.model, rpool, fmt)
        unique_all = rows[[C.ROW_KEY, C.PROMPT, C.RESPONSE]].drop_duplicates(C.ROW_KEY)
        todo_rows = unique_all[~unique_all[C.ROW_KEY].isin(cache.done(reference_key))]
        if len(todo_rows):
            cache.describe(reference_key, {"reference": ref_path, "max_prompt_tokens": mp, "max_response_tokens": mr})
            log.info(f"[score] reference: {len(todo_rows)} of {len(unique_all)} unique rows to score with {ref_path}")

            done_ref: set = set()

            def write_ref(out: pd.DataFrame) -> None:
                nonlocal reference_scored
                reference_scored += len(out)  # rows the pool produced (a duplicate from Ray would count twice)
                out = out[~out[C.ROW_KEY].isin(done_ref)]
                if len(out):
                    cache.write_part(reference_key, out[[C.ROW_KEY, C.REF_TOKEN_LOGPS, C.REF_LOGP]])
                done_ref.update(out[C.ROW_KEY])
                faults.hit("score.ref_part", reference_scored)
                if on_part:
                    on_part("reference", reference_scored)

            _run_with_retries(lambda: todo_rows[~todo_rows[C.ROW_KEY].isin(done_ref)], ReferenceScorer,
                              {"model_path": storage.shared(ref_path), "max_prompt_tokens": mp,
                               "max_response_tokens": mr,
                               "model_cfg": cfg.model.frozen_copy(), "prompt_format": fmt, **actor_kwargs(rpool)},
                              rpool, scoring, write_ref, "reference", cfg.ray)
        else:
            log.info(f"[score] reference: all {len(unique_all)} unique rows cached")

    table, stats = assemble(rows, cfg, cache, needs_reward, reward_keys, reference_key)
    agreed = reward_agreement(table, agreement, cfg, cache if by_model else None, reward_keys, stats)
    path = write_parquet(os.path.join(out_dir, TABLE_FILE), table)
    report = ScoreReport(table=path, rows=len(table), reward_scored=reward_scored, reference_scored=reference_scored,
                         reward_keys=reward_keys, reference_key=reference_key, seconds=round(time.time() - start, 2))
    write_json(os.path.join(out_dir, REPORT_FILE), {**report.summary(), "seconds": report.seconds,
                                                    "reward_stats": stats, "agreement": agreed})
    return report


def agreement_sample(rows: pd.DataFrame, needs_reward: np.ndarray, components, n: int) -> np.ndarray:
    """Mask of up to ``n`` rows that carry a reward (kept, not rescored), to score with the components too:
    the first ``n`` distinct rows in row-key order (a fixed, content-chosen sample)."""
    mask = np.zeros(len(rows), dtype=bool)
    if n <= 0 or C.REWARD not in rows or not any(c.weight != 0 for c in components):
        return mask
    carried = ~needs_reward & rows[C.REWARD].notna().to_numpy()
    keys = rows.loc[carried, C.ROW_KEY].drop_duplicates().sort_values().head(n)
    return carried & rows[C.ROW_KEY].isin(set(keys)).to_numpy()


def reward_agreement(table: pd.DataFrame, sample: np.ndarray, cfg: RunConfig, cache: Optional[ScoreCache],
                     reward_keys: dict[str, str], stats: dict) -> Optional[dict]:
    """How well the data's own rewards (the table's ``reward``, after ``train_transform``) and the run's reward
    components agree on the sample: Pearson and Spearman correlation. The value head is fit to the components'
    scores of pi_ref's replies and the evaluation uses them, while training advantages start from the data's
    rewards: a low agreement means the two live on different scales (another reward model, another input
    format), which biases the advantages. Components come from ``cache`` (a model scored the sample in the
    pass) or are computed here (cheap scorers)."""
    if not sample.any():
        return None
    part = table.loc[sample].drop_duplicates(C.ROW_KEY)
    components = list(cfg.reward.components)
    if cache is not None:
        raw = {n: _lookup(cache, k, part[C.ROW_KEY], ["value"])["value"].to_numpy(dtype=np.float64)
               for n, k in reward_keys.items()}
    else:
        raw = RewardScorer(components).score(part[C.PROMPT].tolist(), part[C.RESPONSE].tolist())
    # standardised components: the table's statistics where rows were scored, else the sample's own
    moments = {n: (stats[n]["mean"], stats[n]["std"]) if n in stats else (float(np.mean(v)), float(np.std(v)))
               for n, v in raw.items()}
    theirs = combine(components, raw, moments)[C.REWARD]
    ours = part[C.REWARD].to_numpy(dtype=np.float64)
    if len(part) < 3 or np.std(ours) == 0 or np.std(theirs) == 0:
        return {"rows": int(len(part)), "pearson": None, "spearman": None}
    pearson = float(np.corrcoef(ours, theirs)[0, 1])
    spearman = float(np.corrcoef(pd.Series(ours).rank(), pd.Series(theirs).rank())[0, 1])
    line = (f"[score] agreement of the data's rewards and reward.components on {len(part)} rows: Pearson "
            f"{pearson:.3f}, Spearman {spearman:.3f}")
    if pearson < cfg.scoring.agreement_warn_below:
        line += (f" -- WARNING: below {cfg.scoring.agreement_warn_below}: the value targets and evaluations "
                 "(components) and the training rewards (data) measure different things; check each component's "
                 "model and input format (template, turns)")
        log.warning(line)
    else:
        log.info(line)
    return {"rows": int(len(part)), "pearson": pearson, "spearman": spearman}


def _lookup(cache: ScoreCache, key: str, row_key: pd.Series, columns: list[str]) -> pd.DataFrame:
    """The cached columns of ``key`` for each row key (in order); raises if any row is missing."""
    cached = cache.read(key).drop_duplicates(C.ROW_KEY).set_index(C.ROW_KEY)
    lost = ~row_key.isin(cached.index)
    if lost.any():
        raise RuntimeError(f"scoring cache {key}: {int(lost.sum())} rows were not scored")
    return cached.loc[row_key.to_numpy(), columns].reset_index(drop=True)


def assemble(rows: pd.DataFrame, cfg: RunConfig, cache: ScoreCache, needs_reward: np.ndarray,
             reward_keys: dict[str, str], reference_key: Optional[str]) -> tuple[pd.DataFrame, dict]:
    """The scored table: rows + reward columns (weights and transforms applied here) + ref columns."""
    table = rows.copy()
    stats: dict[str, dict] = {}
    carried = table[C.REWARD].to_numpy(dtype=np.float64) if C.REWARD in table else None
    if carried is not None and (cfg.reward.rescore or cfg.reward.train_transform != "raw") \
            and not np.isnan(carried).all():
        table[raw_column(DATA_REWARD)] = carried
    table[C.REWARD_RAW] = carried if carried is not None else np.nan  # rows scored below get their own
    if carried is not None and cfg.reward.train_transform == "sigmoid":
        table[C.REWARD] = 1.0 / (1.0 + np.exp(-carried))
    if needs_reward.any():
        scored_keys = table.loc[needs_reward, C.ROW_KEY]
        raw = {name: _lookup(cache, key, scored_keys, ["value"])["value"].to_numpy(dtype=np.float64)
               for name, key in reward_keys.items()}
        # Standardise statistics over the table's distinct scored rows (kept in scoring.json for reuse).
        first = ~scored_keys.duplicated().to_numpy()
        for name, values in raw.items():
            stats[name] = {"mean": float(np.mean(values[first])), "std": float(np.std(values[first]))}
        columns = combine(list(cfg.reward.components), raw,
                          {n: (s["mean"], s["std"]) for n, s in stats.items()})
        for col, values in columns.items():
            if col not in table:
                table[col] = np.nan
            table[col] = table[col].astype(np.float64)
            table.loc[needs_reward, col] = values
    if reference_key is not None:
        ref = _lookup(cache, reference_key, table[C.ROW_KEY], [C.REF_TOKEN_LOGPS, C.REF_LOGP])
        table[C.REF_TOKEN_LOGPS] = ref[C.REF_TOKEN_LOGPS].to_numpy()
        table[C.REF_LOGP] = ref[C.REF_LOGP].to_numpy(dtype=np.float64)
    return table, stats


def reward_stats(reward_cfg, scored_dir: str) -> dict[str, tuple[float, float]]:
    """(mean, std) of the raw scores of every component that is standardised without fixed params, from the
    scored table in ``scored_dir``: what ``run_scorer(stats=...)`` needs to score new replies (value targets,
    val-reward selection, evaluation, serving) on the table's scale. {} when no component needs them."""
    need = [c.name for c in reward_cfg.components
            if c.transform == "standardise" and not {"mean", "std"} <= set(c.params or {})]
    if not need:
        return {}
    stats = (read_json(os.path.join(scored_dir, REPORT_FILE)) or {}).get("reward_stats", {})
    missing = [n for n in need if n not in stats]
    if missing:
        raise UserError(f"reward components {missing} use transform standardise without params.mean/std, and "
                        f"there is no scored table to take them from ({scored_dir}): run `alol score` first, "
                        "or give the components params.mean and params.std")
    return {n: (stats[n]["mean"], stats[n]["std"]) for n in need}


def resolve_reward(reward_cfg, scored_dir: str) -> Reward:
    """The run's reward with the statistics of the scored table in ``scored_dir`` (see ``reward_stats``)."""
    return Reward(reward_cfg, reward_stats(reward_cfg, scored_dir))


def stage_identity(cfg: RunConfig, ref_path: Optional[str]) -> dict:
    """Everything the scored table depends on besides the rows (for the stage fingerprint)."""
    rpool = cfg.scoring.reference_pool
    return {
        "reward": [dict(dataclasses.asdict(c), key=reward_scorer_key(c, cfg.scoring.reward_pool))
                   for c in cfg.reward.components],
        "rescore": cfg.reward.rescore,
        "train_transform": cfg.reward.train_transform,
        "reference": reference_scorer_key(ref_path, cfg.model, rpool, prompt_format(cfg)) if ref_path else None,
        # not in the score caches' keys: they change no score (pi_ref's code is trusted or not; the agreement report)
        "trust_remote_code": cfg.model.trust_remote_code if ref_path else None,
        "agreement": (cfg.scoring.agreement_rows, cfg.scoring.agreement_warn_below),
        "reward_precision": _precision(cfg.scoring.reward_pool),  # the reward actors are started with it
    }
