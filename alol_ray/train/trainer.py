"""The training driver: scored table -> units + sampler -> ``TorchTrainer.fit`` -> best checkpoint exported.

    outcome = fit(cfg, method=get_method("a_lol"), train_cfg=cfg.train, table="runs/x/value/table.parquet",
                  policy_path="runs/x/train/reference-s0/best", work_dir="runs/x/train/.a_lol-s0.staging-...")

Everything goes into ``work_dir`` (the stage's staging folder, see ``alol_ray.stage``)::

    checkpoints/     the Ray Train run: checkpoint-<step>/ (model/, optimizer.pt, trainer_state.json)
    metrics.jsonl    one line per optimizer step (rank 0), val.jsonl one per evaluation
    best/            the checkpoint with the best val reward, exported as an HF folder
    summary.json     steps, best step, best val reward, positive fraction

Calling ``fit`` again with the same ``work_dir`` resumes from the latest checkpoint (Ray Train restores the
run from its storage path and name; the loop reads it with ``ray.train.get_checkpoint()``). Checkpoints are
scored by validation reward: Ray keeps the ``keep_checkpoints`` best plus the latest.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, fields, is_dataclass
from typing import Any, Optional

import numpy as np

from alol_ray import columns as C
from alol_ray import ray_compat, storage, tracking
from alol_ray.atomic import write_json
from alol_ray.engines import generation_identity
from alol_ray.errors import DataError, RowProblem, UserError
from alol_ray.families import prompt_format
from alol_ray.hashing import file_sha, model_identity
from alol_ray.models import adapter_base
from alol_ray.ray_utils import init_ray
from alol_ray.scoring.reward import Reward
from alol_ray.stage import Unfinished
from alol_ray.train.checkpoint import MODEL_DIR, STATE_FILE, export_policy
from alol_ray.train.loop import OfflineHooks, loop_spec
from alol_ray.train.methods import Method, training_units
from alol_ray.train.samplers import make_sampler, needs_advantage, positive_fraction, resolve_sampler, scaled_steps
from alol_ray.train.worker import NOT_EVALUATED, SELECTION_METRIC
from alol_ray.train.worker_loop import LoopSpec, train_loop_per_worker

log = logging.getLogger("alol")

SUMMARY_FILE = "summary.json"
BEST_DIR = "best"
CHECKPOINTS_DIR = "checkpoints"  # the Ray Train run's name inside the work folder


def shared_settings(tc) -> dict:
    """The keys of ``train.*`` (or ``reference.train.*``) that a run of any method reads -- its loop, sampler,
    optimizer, step budget, selection -- without the runtime-only ones and without the methods' own sections
    (``Method.identity`` says what of its own a method reads). Runtime-only keys (``config_fields.runtime_field``:
    workers, logging, retries) are left out: a rerun that changes only them resumes."""
    return {f.name: getattr(tc, f.name) for f in fields(tc)
            if not f.metadata.get("runtime") and not is_dataclass(getattr(tc, f.name))}


def identity(cfg, tc, method: Method, *, init: str, table: str, reward: Reward,
             reference: Optional[str] = None) -> dict:
    """What a training run of ``method`` reads (the train and reference stages' fingerprint): the shared
    ``train.*`` keys, the method's own knobs, PPO's section for the online method, the policy's settings
    (``model``: how it is loaded, tokenised, adapted), generation and the run's ``reward`` where the run generates
    (val-reward selection, rollouts), and its inputs by content: the starting policy, the table (or rows), pi_ref
    (online)."""
    evaluates = method.online or tc.eval_every > 0  # the loop scores val replies only then
    return {
        "method": method.name,
        "train": shared_settings(tc),
        "knobs": method.identity(tc),
        "ppo": cfg.ppo if method.online else None,
        "model": cfg.model,
        "evaluation": (generation_identity(cfg.generation), reward.identity()) if evaluates else None,
        "init": model_identity(init),
        "table": file_sha(table),
        "reference": model_identity(reference) if reference else None,
    }


@dataclass
class PreparedData:
    frame: Any  # the train split with the columns the method and sampler read
    units: list[np.ndarray]
    sampler: Any
    total_steps: int
    eval_every: int
    positive_fraction: Optional[float]


def _unit_values(frame, units: list[np.ndarray], column: str) -> Optional[np.ndarray]:
    """The column's value of each unit's best (first) row; None when the table lacks the column."""
    if column not in frame.columns:
        return None
    values = frame[column].to_numpy(dtype=np.float64)
    return values[[u[0] for u in units]]


def prepare_data(table, method: Method, tc, *, source: str = "scored table") -> PreparedData:
    """Training units of the train split, the sampler, and the step budget (scaled by the positive
    fraction for advantage-weighted methods when ``scale_steps_by_positive``)."""
    sampler_name = resolve_sampler(tc.sampler, method.sample_weight)
    needed = set(method.columns)
    if needs_advantage(tc.sampler, method.sample_weight):
        needed.add(C.ADVANTAGE)
    if sampler_name == "good_priority" and method.sample_weight == "reward":
        needed.add(C.REWARD)
    missing = sorted(c for c in needed | {C.PROMPT_ID, C.PROMPT, C.RESPONSE, C.RANK, C.SPLIT} if c not in table.columns)
    if missing:
        hint = " (run `alol value` to add advantages)" if C.ADVANTAGE in missing else ""
        raise UserError(f"{source}: method '{method.name}' with sampler '{sampler_name}' needs columns {missing}{hint}")
    keep = [C.PROMPT_ID, C.PROMPT, C.RESPONSE, C.RANK] + sorted(needed)
    frame = table.loc[table[C.SPLIT] == "train", keep].reset_index(drop=True)
    units = training_units(frame, method.layout, tc.responses)
    if not units:
        raise UserError(f"{source}: no training units for method '{method.name}' (layout {method.layout})")
    used = np.concatenate(units)
    train_rows = np.flatnonzero(table[C.SPLIT].to_numpy() == "train")  # frame row i = table row train_rows[i]
    problems = []
    for column in sorted(needed - {C.REF_TOKEN_LOGPS}):
        values = frame[column].to_numpy(dtype=np.float64)
        for i in sorted(set(used[~np.isfinite(values[used])].tolist())):
            problems.append(RowProblem(source, f"row {int(train_rows[i]) + 1}", column, "not_finite",
                                       f"'{column}' is missing or not finite (prompt_id {frame[C.PROMPT_ID].iloc[i]!r})"))
    if problems:
        raise DataError(problems, hint=f"{source} is not a complete scored table: rebuild it (alol score / alol value)")
    advantage = _unit_values(frame, units, C.ADVANTAGE)
    reward = _unit_values(frame, units, C.REWARD)
    try:
        sampler = make_sampler(tc.sampler, method.sample_weight, batch_size=tc.batch_size, seed=tc.seed,
                               advantage=advantage, reward=reward, n_units=len(units))
    except ValueError as err:
        raise UserError(f"{source}: {err}") from None
    fraction = positive_fraction(advantage) if advantage is not None else None
    total, eval_every = tc.steps, tc.eval_every
    if method.sample_weight == "advantage" and tc.scale_steps_by_positive and fraction is not None:
        total = scaled_steps(tc.steps, fraction)  # the paper: A-LoL trains on the positive share only
        eval_every = scaled_steps(tc.eval_every, fraction) if tc.eval_every > 0 else 0
    return PreparedData(frame, units, sampler, total, eval_every, fraction)


def val_prompts(table, n: int) -> list[str]:
    """The first ``n`` distinct val prompts (table order): the model-selection set."""
    if n <= 0 or C.SPLIT not in table.columns:
        return []
    prompts = table.loc[table[C.SPLIT] == "val", C.PROMPT].drop_duplicates()
    return prompts.head(n).tolist()


@dataclass
class TrainOutcome:
    run_dir: str
    export_dir: str
    total_steps: int
    best_step: Optional[int]
    best_val_reward: Optional[float]
    positive_fraction: Optional[float]
    checkpoint_path: str  # the exported checkpoint
    last_metrics: dict


def run_folder(work_dir: str) -> str:
    """Where the workers write the run's logs: ``work_dir``, or its URI when it mirrors a bucket."""
    return storage.mirrored(work_dir) or os.path.abspath(work_dir)


def fetch_logs(work_dir: str) -> None:
    """After a bucket run, the logs rank 0 pushed (metrics.jsonl, val.jsonl) into the driver's ``work_dir``."""
    uri = storage.mirrored(work_dir)
    if uri:
        storage.pull(uri, work_dir, checkpoints=False)


def build_trainer(loop: LoopSpec, hooks, tc, work_dir: str):
    """The ``TorchTrainer`` of the worker-loop skeleton with a method's ``hooks`` (offline or PPO): resources
    from config, gloo on CPU / NCCL on GPU, score-based retention, the run stored in ``work_dir``/checkpoints,
    or in the bucket when ``work_dir`` mirrors one (every worker writes there and a rerun restores from there,
    whichever node the driver runs on)."""
    # lazy: ray (alol_ray.train.trainer imports without it)
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    storage_path, filesystem = storage.train_storage(work_dir)
    resources = {"CPU": tc.cpus_per_worker}
    if tc.use_gpu:
        resources["GPU"] = 1
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"loop": loop, "hooks": hooks},
        torch_config=TorchConfig(backend="nccl" if tc.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=tc.num_workers, use_gpu=tc.use_gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name=CHECKPOINTS_DIR,
            storage_path=storage_path,
            storage_filesystem=filesystem,
            failure_config=FailureConfig(max_failures=tc.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=tc.keep_checkpoints,
                                               checkpoint_score_attribute=SELECTION_METRIC,
                                               checkpoint_score_order="max"),
        ),
    )


def best_checkpoint(result) -> tuple[Any, dict]:
    """The kept checkpoint with the highest val reward; the latest one when none was evaluated."""
    evaluated = [(c, m) for c, m in (result.best_checkpoints or []) if m.get(SELECTION_METRIC, NOT_EVALUATED) > NOT_EVALUATED]
    if evaluated:
        return max(evaluated, key=lambda cm: (cm[1][SELECTION_METRIC], cm[1].get("train/step", 0)))
    latest = [(c, m) for c, m in (result.best_checkpoints or []) if c.path == getattr(result.checkpoint, "path", None)]
    if latest:
        return latest[0]
    if result.checkpoint is None:
        raise RuntimeError("training finished without a checkpoint")
    return result.checkpoint, result.metrics or {}


def export_best(result, work_dir: str, policy_path: str, model_cfg) -> tuple[dict, dict, str]:
    """Export the best kept checkpoint to ``work_dir``/best: (its trainer state, its metrics, its path)."""
    checkpoint, metrics = best_checkpoint(result)
    with checkpoint.as_directory() as folder:
        with open(os.path.join(folder, STATE_FILE), encoding="utf-8") as fh:
            state = json.load(fh)
        export_policy(os.path.join(folder, MODEL_DIR), os.path.join(work_dir, BEST_DIR),
                      base_path=adapter_base(policy_path)[0],
                      dtype=None if model_cfg.dtype == "auto" else model_cfg.dtype,
                      trust_remote_code=model_cfg.trust_remote_code)
    return state, dict(metrics or {}), checkpoint.path


def finish(outcome: TrainOutcome, work_dir: str, stopped_at: int) -> TrainOutcome | Unfinished:
    """Write summary.json; a run that stopped early on purpose is Unfinished (nothing is published)."""
    if stopped_at and stopped_at < outcome.total_steps:
        return Unfinished(f"stopped after step {stopped_at} of {outcome.total_steps} as asked; "
                          "rerun without --stop-at-step to continue from there")
    write_json(os.path.join(work_dir, SUMMARY_FILE),
               {k: v for k, v in outcome.__dict__.items() if k not in ("last_metrics", "run_dir", "export_dir",
                                                                        "checkpoint_path")})
    log.info(f"[train] exported step {outcome.best_step} (val reward "
             f"{outcome.best_val_reward if outcome.best_val_reward is not None else 'n/a'}) to {outcome.export_dir}")
    return outcome


def fit(cfg, *, method: Method, train_cfg, table, policy_path: str, work_dir: str, stop_at_step: int = 0,
        reward: Optional[Reward] = None) -> TrainOutcome | Unfinished:
    """Train ``method`` on the scored ``table`` (parquet path or DataFrame) from ``policy_path`` in
    ``work_dir`` (see the module docs); resumes what an interrupted call left there. ``reward``: the run's
    reward with the scored table's statistics (val-reward selection; default: ``cfg.reward`` without any)."""
    # lazy: pandas, ray (alol_ray.train.trainer imports without them)
    import pandas as pd
    import ray

    tc = train_cfg
    source = table if isinstance(table, str) else "scored table"
    frame = pd.read_parquet(table) if isinstance(table, str) else table
    data = prepare_data(frame, method, tc, source=source)
    prompts = val_prompts(frame, tc.eval_prompts)
    if data.eval_every > 0 and not prompts:
        raise UserError(f"{source}: train.eval_every > 0 needs val prompts (rows with split 'val'), and there are none")
    frac = "" if data.positive_fraction is None else f", positive advantage {data.positive_fraction:.1%}"
    log.info(f"[train] {method.name}: {len(data.units)} units, sampler {data.sampler.name}, {data.total_steps} steps "
             f"x batch {tc.batch_size} on {tc.num_workers} worker(s){frac}")

    track = tracking.prepare(cfg, tracking.job_name(work_dir), work_dir=work_dir, train_cfg=tc)  # before any worker
    init_ray(cfg.ray)
    reward = reward or Reward(cfg.reward)
    loop = loop_spec(method, tc, cfg.model, total_steps=data.total_steps, eval_every=data.eval_every,
                     stop_at_step=stop_at_step, run_dir=run_folder(work_dir), track=track)
    hooks = OfflineHooks(method=method, train=tc, model=cfg.model, generation=cfg.generation, reward=reward.config,
                         reward_stats=dict(reward.stats), policy_path=storage.shared(policy_path),
                         data_ref=ray.put((data.frame, data.units, data.sampler)), val_prompts=prompts,
                         prompt_format=prompt_format(cfg))
    result = ray_compat.fit(build_trainer(loop, hooks, tc, work_dir))
    fetch_logs(work_dir)
    state, metrics, path = export_best(result, work_dir, policy_path, cfg.model)
    outcome = TrainOutcome(run_dir=work_dir, export_dir=os.path.join(work_dir, BEST_DIR), total_steps=data.total_steps,
                           best_step=state["step"], best_val_reward=metrics.get("val/reward"),
                           positive_fraction=data.positive_fraction, checkpoint_path=path,
                           last_metrics=dict(result.metrics or {}))
    return finish(outcome, work_dir, stop_at_step)
