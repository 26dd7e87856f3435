"""Stage orchestration: each `ensure_*` makes one stage's output exist, skipping work already done.

A stage's output folder holds a ``stage.json`` with the fingerprint of the config that produced it
(a hash of the config sections the stage depends on). Same fingerprint -> the stage is skipped.
Stages call the `ensure_*` of what they need, so any `alol <stage>` works from a fresh run dir.

    rows -> base policy -> reference (nll SFT) -> scored table (reward + ref log-probs) -> value/advantage
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from typing import Any, Callable

from alol_ray.config import RunConfig, save_config
from alol_ray.runs import RunPaths

STAGE_FILE = "stage.json"


def fingerprint(*parts: Any) -> str:
    """A stable hash of config sections (dataclasses), strings and numbers."""

    def plain(x: Any) -> Any:
        if dataclasses.is_dataclass(x):
            return plain(dataclasses.asdict(x))
        if isinstance(x, dict):
            return {str(k): plain(v) for k, v in sorted(x.items())}
        if isinstance(x, (list, tuple)):
            return [plain(v) for v in x]
        return x

    blob = json.dumps([plain(p) for p in parts], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def stage_done(folder: str, fp: str) -> bool:
    path = os.path.join(folder, STAGE_FILE)
    if not os.path.exists(path):
        return False
    with open(path, encoding="utf-8") as fh:
        return json.load(fh).get("fingerprint") == fp


def mark_done(folder: str, fp: str, **info: Any) -> None:
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, STAGE_FILE), "w", encoding="utf-8") as fh:
        json.dump({"fingerprint": fp, "finished_at": time.time(), **info}, fh, indent=2)


def run_stage(name: str, folder: str, fp: str, build: Callable[[], dict | None], *, log: Callable = print) -> bool:
    """Run `build` unless `folder` holds the same fingerprint. Returns True if work was done."""
    if stage_done(folder, fp):
        log(f"[{name}] up to date ({folder})")
        return False
    log(f"[{name}] running ...")
    start = time.time()
    info = build() or {}
    mark_done(folder, fp, seconds=round(time.time() - start, 2), **info)
    log(f"[{name}] done in {time.time() - start:.1f}s")
    return True


def write_run_config(cfg: RunConfig) -> RunPaths:
    """Create the run dir and write the resolved config into it."""
    paths = RunPaths.from_config(cfg)
    os.makedirs(paths.root, exist_ok=True)
    save_config(cfg, paths.config)
    return paths


# ----------------------------------------------------------------------------------------------- stages


def rows_fingerprint(cfg: RunConfig) -> str:
    return fingerprint("rows-v1", cfg.data)


def ensure_rows(cfg: RunConfig, log: Callable = print) -> str:
    """Canonical rows of the run: <run>/data/rows.parquet."""
    from alol_ray.data.loaders import load_rows, summarize, write_rows

    paths = write_run_config(cfg)

    def build():
        frame, report = load_rows(cfg.data)
        write_rows(frame, paths.data)
        summary = summarize(frame, report)
        with open(os.path.join(paths.data, "summary.json"), "w", encoding="utf-8") as fh:
            json.dump(summary, fh, indent=2)
        if report.invalid:
            log(f"[rows] dropped invalid rows: {dict(report.invalid)}")
        return {"rows": summary["rows"], "prompts": summary["prompts"]}

    run_stage("rows", paths.data, rows_fingerprint(cfg), build, log=log)
    return paths.rows


def base_policy_fingerprint(cfg: RunConfig) -> str:
    if cfg.model.init == "tiny":
        return fingerprint("base-v1", cfg.model.tiny, rows_fingerprint(cfg), cfg.seed)
    return fingerprint("base-v1", cfg.model.name_or_path, cfg.model.revision)


def ensure_base_policy(cfg: RunConfig, log: Callable = print) -> str:
    """The starting policy: a tiny GPT-2 built from config (tokenizer trained on the run's text), or the
    pretrained model's hub id / folder, returned as is."""
    if cfg.model.init == "pretrained":
        return cfg.model.name_or_path
    import pandas as pd

    from alol_ray import columns as C
    from alol_ray.models import init_tiny_policy

    rows_path = ensure_rows(cfg, log)
    paths = RunPaths.from_config(cfg)

    def build():
        frame = pd.read_parquet(rows_path, columns=[C.PROMPT, C.RESPONSE, C.SPLIT])
        train = frame[frame[C.SPLIT] == "train"]
        texts = list(train[C.PROMPT].unique()) + list(train[C.RESPONSE])
        t = cfg.model.tiny
        init_tiny_policy(paths.base_policy, texts, vocab_size=t.vocab_size, n_layer=t.n_layer, n_embd=t.n_embd,
                         n_head=t.n_head, n_positions=t.n_positions, seed=cfg.seed)
        return {"kind": "tiny"}

    run_stage("base policy", paths.base_policy, base_policy_fingerprint(cfg), build, log=log)
    return paths.base_policy


def ensure_scored(cfg: RunConfig, log: Callable = print) -> str:
    """The scored table <run>/scored/table.parquet: rewards (``reward``, ``reward/<name>``) and, unless
    ``scoring.reference`` is off, pi_ref's ``ref_token_logps`` / ``ref_logp``. Scores are cached per row
    and scorer (alol_ray.scoring.table), so re-runs and appended rows cost only what is new.

    pi_ref is ``reference.path`` when set, else what ``ensure_reference(cfg)`` makes.
    """
    import pandas as pd

    from alol_ray.errors import UserError
    from alol_ray.scoring import table

    rows_path = ensure_rows(cfg, log)
    paths = RunPaths.from_config(cfg)
    ref_path = None
    if cfg.scoring.reference:
        ref_path = cfg.reference.path or None
        if not ref_path:
            make_reference = globals().get("ensure_reference")  # defined by the training stage
            if make_reference is None:
                raise UserError("reference log-probs need pi_ref: set reference.path, or score rewards only "
                                "with `alol score --no-reference` (scoring.reference=false)")
            ref_path = make_reference(cfg, log)
    # The rows file's content, not its config: whatever rewrote rows.parquet, the table follows.
    fp = fingerprint("scored-v1", table.file_sha(rows_path), table.stage_identity(cfg, ref_path))
    table_path = os.path.join(paths.scored, table.TABLE_FILE)
    if not os.path.exists(table_path) and os.path.exists(os.path.join(paths.scored, STAGE_FILE)):
        os.remove(os.path.join(paths.scored, STAGE_FILE))  # the table was deleted: build it again

    def build():
        rows = pd.read_parquet(rows_path)
        return table.score_rows(rows, cfg, paths.scored, ref_path=ref_path, log=log).summary()

    run_stage("scored", paths.scored, fp, build, log=log)
    return table_path


def _stage_fingerprint(folder: str) -> str | None:
    path = os.path.join(folder, STAGE_FILE)
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as fh:
        return json.load(fh).get("fingerprint")


def ensure_value(cfg: RunConfig, log: Callable = print) -> str:
    """The scored table with ``value`` and ``advantage`` (written into <run>/scored/table.parquet); the
    head and the fit/advantage reports in <run>/value/ (alol_ray.value).

    pi_ref is ``reference.path`` when set, else what ``ensure_reference(cfg)`` makes. Re-runs when the
    value, generation or reward config, pi_ref or the scored table's stage changes, or when the table
    was rebuilt without the value columns.
    """
    from alol_ray.errors import UserError
    from alol_ray.value.fit import build_value, has_value_columns

    paths = RunPaths.from_config(cfg)
    ref_path = cfg.reference.path or None
    if not ref_path:
        make_reference = globals().get("ensure_reference")  # defined by the training stage
        if make_reference is None:
            raise UserError("the value head needs pi_ref: set reference.path (an HF folder or hub id)")
        ref_path = make_reference(cfg, log)
    table_path = ensure_scored(cfg, log)
    fp = fingerprint("value-v1", cfg.value, cfg.generation, cfg.reward, cfg.scoring.reward_pool,
                     cfg.model.max_prompt_tokens, cfg.model.dtype, cfg.seed, ref_path,
                     _stage_fingerprint(paths.ref), _stage_fingerprint(paths.scored))
    if not has_value_columns(table_path) and os.path.exists(os.path.join(paths.value, STAGE_FILE)):
        os.remove(os.path.join(paths.value, STAGE_FILE))  # the table was rebuilt: add the columns again

    def build():
        out = build_value(cfg, ref_path, table_path, paths.value, log=log)
        fit, adv = out["fit"], out["advantages"]["advantage/train"]
        return {"mse/holdout": fit["mse/holdout"], "mse/holdout_predict_mean": fit["mse/holdout_predict_mean"],
                "best_epoch": fit["best_epoch"], "advantage/positive_fraction": adv["positive_fraction"]}

    run_stage("value", paths.value, fp, build, log=log)
    return table_path


def ensure_reward_model(cfg: RunConfig, log: Callable = print, force: bool = False) -> str:
    """A reward model trained on the run's rows (`rm` section): the HF folder rm.output or <run>/rm/model,
    with alol_reward.json (input rendering) and alol_rm_eval.json (held-out metrics)."""
    from alol_ray.rm.train import reward_model_dir, reward_model_fingerprint, train_reward_model

    rows_path = ensure_rows(cfg, log)
    out = reward_model_dir(cfg)
    fp = reward_model_fingerprint(cfg, rows_fingerprint(cfg))
    if force and os.path.exists(os.path.join(out, STAGE_FILE)):
        os.remove(os.path.join(out, STAGE_FILE))
    run_stage("reward model", out, fp, lambda: train_reward_model(cfg, rows_path, out, log, fresh=force), log=log)
    return out


def ensure_eval(cfg: RunConfig, method: str, seed: int, model_path: str | None = None,
                log: Callable = print) -> str:
    """One policy's evaluation on ``eval.split``: <run>/eval/<method>-s<seed>.parquet + .json (the summary,
    whose path is returned). ``model_path`` None = the reference policy. Skipped when the summary holds
    the same fingerprint (policy files, generation, reward and eval settings, rows, pi_ref)."""
    from evaluation.eval_job import eval_fingerprint, reference_policy, run_eval, summary_path_for

    out = RunPaths.from_config(cfg).eval(method, seed)
    summary = summary_path_for(out)
    ensure_rows(cfg, log)
    ref_path = reference_policy(cfg, log) if (model_path is None or cfg.eval.win_rate) else None
    fp = eval_fingerprint(cfg, model_path or ref_path, cfg.eval.split, cfg.eval.max_prompts, ref_path)
    if os.path.exists(out) and os.path.exists(summary):
        with open(summary, encoding="utf-8") as fh:
            if json.load(fh).get("fingerprint") == fp:
                log(f"[eval {method}-s{seed}] up to date ({out})")
                return summary
    result = run_eval(cfg, model=model_path, method=method, seed=seed, log=log)
    log(result.table)
    return result.summary_path


# ----------------------------------------------------------------------------------------------- training

# TrainConfig fields that change how a run is executed or logged, not what it trains: a rerun that only
# changes them resumes the same run.
_RUNTIME_TRAIN_FIELDS = {"stop_at_step", "crash_at_step", "max_failures", "log_every", "num_workers",
                         "cpus_per_worker"}


def train_identity(tc) -> dict:
    return {k: v for k, v in dataclasses.asdict(tc).items() if k not in _RUNTIME_TRAIN_FIELDS}


def _policy_identity(path: str) -> str:
    """A policy folder made by a stage is identified by its stage fingerprint, anything else by its path."""
    marker = os.path.join(path, STAGE_FILE)
    if os.path.exists(marker):
        with open(marker, encoding="utf-8") as fh:
            return json.load(fh).get("fingerprint") or path
    return path


def reference_fingerprint(cfg: RunConfig) -> str:
    tc = cfg.reference.train
    evaluation = (cfg.generation, cfg.reward) if tc.eval_every > 0 else None
    return fingerprint("reference-v1", tc.algo, train_identity(tc), cfg.model, evaluation,
                       base_policy_fingerprint(cfg), rows_fingerprint(cfg))


def ensure_reference(cfg: RunConfig, log: Callable = print) -> str:
    """pi_ref: ``reference.path`` when set, else the base policy fine-tuned by ``reference.train`` (NLL on
    the preferred train responses; `alol train --algo nll --reference`), exported as an HF folder to
    <run>/ref. Its Ray run lives in <run>/train/reference-s<seed> and resumes if interrupted."""
    if cfg.reference.path:
        return cfg.reference.path
    from alol_ray.train.trainer import fit

    rows_path = ensure_rows(cfg, log)
    base = ensure_base_policy(cfg, log)
    paths = RunPaths.from_config(cfg)
    tc = cfg.reference.train
    fp = reference_fingerprint(cfg)

    def build():
        out = fit(cfg, method=tc.algo, train_cfg=tc, table=rows_path, policy_path=base,
                  run_dir=paths.train("reference", tc.seed), export_dir=paths.ref, fingerprint=fp, log=log)
        return {"algo": tc.algo, "steps": out.total_steps, "exported_step": out.best_step}

    run_stage("reference", paths.ref, fp, build, log=log)
    return paths.ref


def ensure_train(cfg: RunConfig, method: str | None = None, seed: int | None = None, log: Callable = print, *,
                 table: str | None = None, init: str | None = None) -> str:
    """A trained policy: <run>/train/<method>-s<seed>/best (HF folder, the checkpoint with the best val
    reward). Prerequisites come from the pipeline (scored table, value/advantages when the method needs
    them, pi_ref as the start) unless ``table`` / ``init`` are given. Interrupted runs resume."""
    if (method or cfg.train.algo) == "ppo":  # online: trains on its own rollouts (baselines/ppo.py)
        return ensure_ppo(cfg, seed=seed, log=log, init=init)
    from alol_ray.scoring.table import file_sha
    from alol_ray.train.methods import get_method
    from alol_ray.train.trainer import BEST_DIR, fit

    method = method or cfg.train.algo
    tc = dataclasses.replace(cfg.train, algo=method, seed=cfg.train.seed if seed is None else seed)
    needs = get_method(method)
    if table is None:
        table = ensure_value(cfg, log) if needs.needs_advantage else ensure_scored(cfg, log)
    if init is None:
        init = {"reference": lambda: ensure_reference(cfg, log),
                "base": lambda: ensure_base_policy(cfg, log)}.get(tc.init_from, lambda: tc.init_from)()
    paths = RunPaths.from_config(cfg)
    run_dir = paths.train(method, tc.seed)
    fp = fingerprint("train-v1", method, train_identity(tc), cfg.model, cfg.generation, cfg.reward,
                     _policy_identity(init), file_sha(table))

    def build():
        out = fit(cfg, method=method, train_cfg=tc, table=table, policy_path=init, run_dir=run_dir,
                  export_dir=os.path.join(run_dir, BEST_DIR), fingerprint=fp, log=log)
        return {"steps": out.total_steps, "best_step": out.best_step, "best_val_reward": out.best_val_reward,
                "positive_fraction": out.positive_fraction}

    run_stage(f"train {method}-s{tc.seed}", run_dir, fp, build, log=log)
    return os.path.join(run_dir, BEST_DIR)


# ----------------------------------------------------------------------------------------------- ppo


def ensure_ppo(cfg: RunConfig, seed: int | None = None, log: Callable = print, *, init: str | None = None) -> str:
    """The online PPO baseline (baselines.ppo, `ppo` section): <run>/train/ppo-s<seed>/best, an HF folder like
    every offline method's. Prompts from the run's rows, pi_ref from ``ensure_reference``; resumes."""
    from baselines.ppo import ensure_ppo as run_ppo

    return run_ppo(cfg, seed=seed, log=log, init=init)
