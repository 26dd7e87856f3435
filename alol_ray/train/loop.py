"""The one training loop (``train_loop_per_worker``) every offline method runs under Ray Train.

Read top to bottom, one optimizer step per iteration:

    set LR -> maybe evaluate + checkpoint -> micro-batches forward/backward -> clip -> step -> log

Each worker draws its slice of the step's global batch from the sampler, so with equal slices the
per-worker mean loss averaged by DDP is the mean over the global batch (2 workers x 4 == 1 worker x 8).
Reference log-probs come from the scored table; there is no reference model in this loop.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch

from alol_ray import faults, ray_compat, storage, tracking
from alol_ray.atomic import append_jsonl, truncate_jsonl
from alol_ray.families import TEXT, PromptFormat, check_chat_template, describe
from alol_ray.scoring.reward import run_scorer
from alol_ray.train import checkpoint as ckpt
from alol_ray.train.methods import Method, collate_units
from alol_ray.train.policy import build_policy, make_optimizer
from alol_ray.train.selection import evaluate_policy
from alol_ray.train.strategy import make_strategy
from alol_ray.train.worker import (
    NOT_EVALUATED,
    SELECTION_METRIC,
    mean_over_workers,
    record_step,
    report_checkpoint,
    say,
    step_seed,
)

SUMMED_METRICS = ("train/tokens",)  # totals over workers; every other metric is a mean


@dataclass
class LoopSpec:
    """Everything a worker needs, shipped once through ``train_loop_config``."""

    method: Method
    train: Any  # TrainConfig
    model: Any  # PolicyConfig (LoRA, dtype, max prompt/response tokens)
    generation: Any  # GenerationConfig (eval replies: max_new_tokens, stop)
    reward: Any  # RewardConfig (eval scoring)
    reward_stats: dict  # (mean, std) of standardised reward components, from the scored table
    policy_path: str  # the starting weights (HF folder or hub id)
    data_ref: Any  # ObjectRef of (frame, units, sampler), see trainer.prepare_data
    total_steps: int  # after the positive-fraction scaling
    eval_every: int  # 0 = never (after the scaling)
    val_prompts: list[str] = field(default_factory=list)
    run_dir: Optional[str] = None  # metrics.jsonl, val.jsonl: a folder or a storage URI (None = not written)
    stop_at_step: int = 0  # > 0: end after the checkpoint at that step (the run is not finished)
    tracking: Optional[tracking.TrackingSpec] = None  # rank 0 sends metrics.jsonl / val.jsonl lines to its backends
    prompt_format: PromptFormat = TEXT  # how prompts become ids (text or the chat template), as in scoring


def learning_rate(step: int, tc, total_steps: int) -> float:
    """Linear warmup over ``warmup_steps``, then constant, linear or cosine decay to 0 at ``total_steps``."""
    if step < tc.warmup_steps:
        return tc.lr * (step + 1) / tc.warmup_steps
    if tc.lr_schedule == "constant":
        return tc.lr
    progress = min(1.0, (step - tc.warmup_steps) / max(1, total_steps - tc.warmup_steps))
    if tc.lr_schedule == "linear":
        return tc.lr * (1.0 - progress)
    return tc.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def _progress_line(method: str, step: int, total: int, metrics: dict[str, float]) -> str:
    loss = metrics.get("loss/policy", metrics.get("loss/total", float("nan")))
    return (f"[train] {method} step {step}/{total} ({100.0 * step / max(total, 1):.0f}%): loss {loss:.4g}, "
            f"grad norm {metrics.get('train/grad_norm', float('nan')):.3g}, {metrics['time/step_s']:.2f} s/step")


def train_loop_per_worker(config: dict) -> None:
    # lazy: ray (alol_ray.train.loop imports without it)
    import ray
    import ray.train
    import ray.train.torch

    spec: LoopSpec = config["spec"]
    tc, pc, method = spec.train, spec.model, spec.method
    ray_compat.quiet_train_reports()
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        torch.set_num_threads(max(1, int(tc.cpus_per_worker)))
    params = method.make_params(tc)
    frame, units, sampler = ray.get(spec.data_ref)
    total = spec.total_steps

    # Resume: the latest checkpoint of this run (same name and storage path), else the starting policy.
    resumed = ray.train.get_checkpoint()
    state = {"step": 0, "best_val_reward": None, "best_step": None}
    with resumed.as_directory() if resumed else contextlib.nullcontext() as resume_dir:
        model_dir = os.path.join(resume_dir, ckpt.MODEL_DIR) if resume_dir else None
        model, tokenizer = build_policy(pc, tc, spec.policy_path, model_dir, device)
        check_chat_template(tokenizer, spec.prompt_format, spec.policy_path)
        if rank == 0 and not resume_dir:
            say(f"[train] {method.name}: {describe(model, tokenizer).summary()}")
        strategy = make_strategy(tc, world, load_in_4bit=pc.lora.load_in_4bit)
        model = strategy.wrap(model, device)
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = make_optimizer(trainable, tc)
        if resume_dir:
            state = ckpt.read_state(resume_dir)
            sampler.check_state(state["sampler"])
            strategy.load_optimizer(resume_dir, model, optimizer)
    start = state["step"]
    if resumed and rank == 0:
        say(f"[train] {method.name}: resuming from the checkpoint at step {start}/{total}")
    method_state = method.make_state(model, tc) if method.make_state else None
    logs = storage.worker_folder(spec.run_dir) if spec.run_dir and rank == 0 else None
    metrics_path = os.path.join(logs, "metrics.jsonl") if logs else None
    val_path = os.path.join(logs, "val.jsonl") if logs else None
    if logs:
        for path in (metrics_path, val_path):
            truncate_jsonl(path, start)
    tracker = tracking.start(spec.tracking if rank == 0 else None, first_step=start + 1 if resumed else 0)
    reward_fn = None
    if rank == 0 and spec.eval_every > 0 and spec.val_prompts:
        reward_fn = run_scorer(spec.reward, stats=spec.reward_stats).rewards
    model.train()

    for step in range(start, total + 1):
        # 1. Learning rate: a function of the step alone, so a resumed run continues the schedule.
        lr = learning_rate(step, tc, total)
        for group in optimizer.param_groups:
            group["lr"] = lr

        # 2. Evaluate and checkpoint the model as it is after `step` updates (not again right after a resume).
        fresh = step > start or (step == 0 and not resumed)
        evaluate = fresh and spec.eval_every > 0 and (
            (step > 0 and (step % spec.eval_every == 0 or step == total)) or (step == 0 and tc.eval_at_start))
        save = fresh and step > 0 and (step % tc.checkpoint_every == 0 or step == total or evaluate
                                       or step == spec.stop_at_step)
        if evaluate or save:
            report: dict[str, float] = {"train/step": step}
            if evaluate and rank == 0 and reward_fn is not None:
                val, _ = evaluate_policy(model, tokenizer, spec.val_prompts, reward_fn,
                                         max_prompt_tokens=pc.max_prompt_tokens,
                                         max_new_tokens=spec.generation.max_new_tokens,
                                         stop=list(spec.generation.stop), batch_size=spec.generation.batch_size,
                                         fmt=spec.prompt_format)
                report.update(val)
                if state["best_val_reward"] is None or val["val/reward"] > state["best_val_reward"]:
                    state.update(best_val_reward=val["val/reward"], best_step=step)
                if val_path:
                    append_jsonl(val_path, report)
                tracker.log(report, step=step)
                say(f"[train] {method.name} step {step}/{total}: val reward {val['val/reward']:.4f} "
                     f"(best {state['best_val_reward']:.4f} at step {state['best_step']})")
            report[SELECTION_METRIC] = report.get("val/reward", NOT_EVALUATED)
            if save:
                state.update(step=step, total_steps=total, method=method.name, sampler=sampler.state_dict())
                # Replicated: one copy of the weights from rank 0 (DDP keeps every worker's identical).
                writes = rank == 0 or strategy.writes_on_every_rank
                if not writes:  # a strategy's save may gather from every rank, the writers' and the others'
                    strategy.save(None, model, tokenizer, optimizer, state)
                write = (lambda tmp: strategy.save(tmp, model, tokenizer, optimizer, state)) if writes else None
                report_checkpoint(report, f"checkpoint-{step:07d}", write)
                if logs:
                    storage.push_back(logs, spec.run_dir)  # the logs up to this checkpoint, next to it
            else:
                ray.train.report(report)
        if step == total or step == spec.stop_at_step > 0:
            break
        if rank == world - 1:
            faults.hit("train.step", step)  # tests: a worker lost mid-run (Ray restarts the group, it resumes)

        # 3. Micro-batches: this worker's slice of the global batch, gradients summed over grad_accum.
        t0 = time.perf_counter()
        torch.manual_seed(step_seed(tc.seed, step, rank))
        micro_batches = np.array_split(sampler.shard(step, rank, world), tc.grad_accum)
        sums: dict[str, float] = {}
        tokens = 0
        for i, unit_ids in enumerate(micro_batches):
            batch = collate_units(frame, [units[j] for j in unit_ids], tokenizer,
                                  max_prompt_tokens=pc.max_prompt_tokens, max_response_tokens=pc.max_response_tokens,
                                  columns=method.columns, fmt=spec.prompt_format).to(device)
            last = i == len(micro_batches) - 1
            # Gradients are synchronised once per optimizer step, on the last micro-batch.
            with strategy.accumulate(model, last):
                with strategy.autocast(device):
                    loss, metrics = method.compute(model, batch, params, method_state)
                (loss / tc.grad_accum).backward()  # mean over micro-batches = mean over this worker's slice
            for key, value in metrics.items():
                sums[key] = sums.get(key, 0.0) + value / len(micro_batches)
            tokens += int(batch.policy.attention_mask.sum())

        # 4. Clip (the norm is logged either way), 5. step.
        max_norm = tc.grad_clip if tc.grad_clip > 0 else float("inf")
        grad_norm = strategy.clip_grad_norm(model, trainable, max_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if method.after_step:
            method.after_step(method_state, model, step + 1)

        # 6. Log: worker-averaged metrics, one JSON line per step; Ray gets them every log_every steps.
        sums.update({"train/grad_norm": grad_norm, "train/tokens": float(tokens)})
        metrics = mean_over_workers(sums, world, device, SUMMED_METRICS)
        metrics.update({"train/step": step + 1, "train/lr": lr, "time/step_s": time.perf_counter() - t0,
                        "time/wall": time.time()})
        log_now = (step + 1) % tc.log_every == 0
        record_step(metrics, step + 1, metrics_path, tracker, report=log_now)
        if log_now and rank == 0:
            say(_progress_line(method.name, step + 1, total, metrics))

    tracker.close()
    if logs:
        storage.push_back(logs, spec.run_dir)
