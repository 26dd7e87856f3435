"""The one training loop (``train_loop_per_worker``) every offline method runs under Ray Train.

Read top to bottom, one optimizer step per iteration:

    set LR -> maybe evaluate + checkpoint -> micro-batches forward/backward -> clip -> step -> log

Each worker draws its slice of the step's global batch from the sampler, so with equal slices the
per-worker mean loss averaged by DDP is the mean over the global batch (2 workers x 4 == 1 worker x 8).
Reference log-probs come from the scored table; there is no reference model in this loop.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Optional

# Score recorded for checkpoints taken at steps without an evaluation: finite (Ray's checkpoint
# snapshot is JSON) and below any reward, so Ray's top-k retention always keeps the evaluated ones.
NOT_EVALUATED = -1e30
SELECTION_METRIC = "selection/val_reward"


@dataclass
class LoopSpec:
    """Everything a worker needs, shipped once through ``train_loop_config``."""

    method: str
    train: Any  # TrainConfig
    model: Any  # PolicyConfig (LoRA, dtype, max prompt/response tokens)
    generation: Any  # GenerationConfig (eval replies: max_new_tokens, stop)
    reward: Any  # RewardConfig (eval scoring)
    policy_path: str  # the starting weights (HF folder or hub id)
    data_ref: Any  # ObjectRef of (frame, units, sampler), see trainer.prepare_data
    total_steps: int  # after the positive-fraction scaling
    eval_every: int  # 0 = never (after the scaling)
    val_prompts: list[str] = field(default_factory=list)
    run_dir: Optional[str] = None  # metrics.jsonl, val.jsonl (shared filesystem; None = not written)


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


def step_seed(seed: int, step: int, rank: int) -> int:
    """The torch seed of one worker at one step: resuming needs no saved RNG state."""
    return (seed * 1_000_003 + step * 1_009 + rank) % (2**63 - 1)


def adapter_base(path: str) -> tuple[str, Optional[str]]:
    """(base model, adapter) when ``path`` is a peft adapter (a folder or hub repo with adapter_config.json,
    like timdettmers/qlora-hh-rlhf-7b), else (path, None)."""
    from alol_ray.train.checkpoint import ADAPTER_CONFIG

    if os.path.isdir(path):
        if not os.path.exists(os.path.join(path, ADAPTER_CONFIG)):
            return path, None
    try:
        import peft

        config = peft.PeftConfig.from_pretrained(path)
    except Exception:  # not an adapter (or not reachable): load it as a plain model
        return path, None
    return config.base_model_name_or_path, path


def build_policy(spec: LoopSpec, checkpoint_model_dir: Optional[str], device):
    """The trainable policy: from the checkpoint if resuming, else the starting weights; LoRA if enabled.

    A starting policy that is itself a LoRA adapter is trained further as that adapter (with LoRA on), or
    merged into its base for full fine-tuning (LoRA off).
    """
    import torch

    from alol_ray.models import load_policy
    from alol_ray.train.checkpoint import is_adapter

    pc, tc = spec.model, spec.train
    lora = pc.lora
    on_gpu = device.type == "cuda"
    # Full fine-tuning keeps fp32 master weights (bf16 only through autocast); a frozen LoRA base may
    # be stored in bf16 on GPU.
    dtype = pc.dtype if pc.dtype != "auto" else ("bfloat16" if lora.enabled and on_gpu else "float32")
    base_path, start_adapter = adapter_base(spec.policy_path)
    if not lora.enabled:
        if checkpoint_model_dir:
            model, tokenizer = load_policy(checkpoint_model_dir, dtype=dtype, trust_remote_code=pc.trust_remote_code)
        else:
            model, tokenizer = load_policy(base_path, dtype=dtype, trust_remote_code=pc.trust_remote_code)
            if start_adapter:
                import peft

                model = peft.PeftModel.from_pretrained(model, start_adapter).merge_and_unload()
                model.requires_grad_(True)  # peft froze the base weights; full fine-tuning trains them all
    else:
        import peft

        if lora.load_in_4bit:
            model, tokenizer = _load_4bit(base_path, pc, device)
        else:
            model, tokenizer = load_policy(base_path, dtype=dtype, trust_remote_code=pc.trust_remote_code)
        adapter = checkpoint_model_dir if checkpoint_model_dir and is_adapter(checkpoint_model_dir) else start_adapter
        if adapter:
            model = peft.PeftModel.from_pretrained(model, adapter, is_trainable=True)
        else:
            model = peft.get_peft_model(model, peft.LoraConfig(
                r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                target_modules=list(lora.target_modules) or None, task_type="CAUSAL_LM"))
    if tc.disable_dropout:
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
    model.config.use_cache = False  # training forward passes need no KV cache
    return model, tokenizer


def _load_4bit(path: str, pc, device):
    """QLoRA base: 4-bit NF4 weights through bitsandbytes (CUDA only)."""
    import torch

    from alol_ray.errors import ConfigError

    if device.type != "cuda":
        raise ConfigError("model.lora.load_in_4bit (QLoRA) needs a CUDA GPU: set train.use_gpu=true, or disable it")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ConfigError("model.lora.load_in_4bit needs bitsandbytes: pip install bitsandbytes") from None
    import peft
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from alol_ray.models import load_tokenizer

    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=quant, device_map={"": device.index or 0},
                                                 trust_remote_code=pc.trust_remote_code, dtype=torch.bfloat16)
    model = peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return model, load_tokenizer(path, trust_remote_code=pc.trust_remote_code)


def make_optimizer(params, tc):
    import torch

    if tc.optimizer == "paged_adamw_32bit":  # the paper's QLoRA optimizer; bitsandbytes, CUDA only
        import bitsandbytes as bnb

        return bnb.optim.PagedAdamW32bit(params, lr=tc.lr, weight_decay=tc.weight_decay)
    if tc.optimizer == "sgd":  # plain (momentum) SGD: the update is linear in the gradient
        return torch.optim.SGD(params, lr=tc.lr, momentum=tc.momentum, weight_decay=tc.weight_decay)
    return torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay)


SUMMED_METRICS = ("train/tokens",)  # totals over workers; every other metric is a mean


def _all_reduce(metrics: dict[str, float], world: int, device) -> dict[str, float]:
    """Metrics of the whole step: means over workers (every worker has the same keys: the same loss ran
    everywhere; equal shards make the mean of worker means the global mean), totals for SUMMED_METRICS."""
    if world == 1:
        return metrics
    import torch
    import torch.distributed as dist

    keys = sorted(metrics)
    values = torch.tensor([metrics[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(values)
    return {k: v if k in SUMMED_METRICS else v / world for k, v in zip(keys, values.tolist())}


def _quiet_ray_train_reports() -> None:
    """Ray Train v2 logs every ``ray.train.report`` call in full at INFO (one long line per call, from every
    worker); the loop prints its own one-line progress instead (``_progress_line``)."""
    import logging

    from ray.train.v2._internal.execution import context as train_context

    logging.getLogger(train_context.__file__).setLevel(logging.WARNING)


def _say(line: str) -> None:
    """One line to the worker's stdout (Ray forwards it to the driver). Not print(): Ray Train patches print
    in its workers to also log through the root logger, which shows every line twice."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _progress_line(method: str, step: int, total: int, metrics: dict[str, float]) -> str:
    loss = metrics.get("loss/policy", metrics.get("loss/total", float("nan")))
    return (f"[train] {method} step {step}/{total} ({100.0 * step / max(total, 1):.0f}%): loss {loss:.4g}, "
            f"grad norm {metrics.get('train/grad_norm', float('nan')):.3g}, {metrics['time/step_s']:.2f} s/step")


def _append_jsonl(path: str, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")


def _truncate_jsonl(path: str, last_step: int) -> None:
    """Drop lines written after the checkpoint we resume from (they will be written again)."""
    if not os.path.exists(path):
        return
    with open(path, encoding="utf-8") as fh:
        kept = [line for line in fh if line.strip() and json.loads(line).get("train/step", 0) <= last_step]
    with open(path, "w", encoding="utf-8") as fh:
        fh.writelines(kept)


def train_loop_per_worker(config: dict) -> None:
    import numpy as np
    import ray
    import ray.train
    import ray.train.torch
    import torch

    from alol_ray.train import checkpoint as ckpt
    from alol_ray.train.methods import collate_units, get_method
    from alol_ray.train.selection import evaluate_policy, reward_function

    spec: LoopSpec = config["spec"]
    tc, pc = spec.train, spec.model
    _quiet_ray_train_reports()
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        torch.set_num_threads(max(1, int(tc.cpus_per_worker)))
    method = get_method(spec.method)
    params = method.make_params(tc)
    frame, units, sampler = ray.get(spec.data_ref)
    total = spec.total_steps

    # Resume: the latest checkpoint of this run (same name and storage path), else the starting policy.
    resumed = ray.train.get_checkpoint()
    state = {"step": 0, "best_val_reward": None, "best_step": None}
    with resumed.as_directory() if resumed else contextlib.nullcontext() as resume_dir:
        model_dir = os.path.join(resume_dir, ckpt.MODEL_DIR) if resume_dir else None
        model, tokenizer = build_policy(spec, model_dir, device)
        # To the worker's device (4-bit weights are placed when loaded and cannot move); DDP if world > 1.
        model = ray.train.torch.prepare_model(model, move_to_device=not pc.lora.load_in_4bit)
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = make_optimizer(trainable, tc)
        if resume_dir:
            state = ckpt.read_state(resume_dir)
            sampler.check_state(state["sampler"])
            ckpt.load_optimizer(resume_dir, optimizer)
    start = state["step"]
    method_state = method.make_state(model, tc) if method.make_state else None
    metrics_path = os.path.join(spec.run_dir, "metrics.jsonl") if spec.run_dir and rank == 0 else None
    val_path = os.path.join(spec.run_dir, "val.jsonl") if spec.run_dir and rank == 0 else None
    if rank == 0 and spec.run_dir:
        os.makedirs(spec.run_dir, exist_ok=True)
        for path in (metrics_path, val_path):
            _truncate_jsonl(path, start)
    reward_fn = reward_function(spec.reward) if rank == 0 and spec.eval_every > 0 and spec.val_prompts else None
    use_autocast = device.type == "cuda" and tc.bf16
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
                                       or step == tc.stop_at_step)
        if evaluate or save:
            report: dict[str, float] = {"train/step": step}
            if evaluate and rank == 0 and reward_fn is not None:
                val, _ = evaluate_policy(model, tokenizer, spec.val_prompts, reward_fn,
                                         max_prompt_tokens=pc.max_prompt_tokens,
                                         max_new_tokens=spec.generation.max_new_tokens,
                                         stop=list(spec.generation.stop), batch_size=spec.generation.batch_size)
                report.update(val)
                if state["best_val_reward"] is None or val["val/reward"] > state["best_val_reward"]:
                    state.update(best_val_reward=val["val/reward"], best_step=step)
                if val_path:
                    _append_jsonl(val_path, report)
                _say(f"[train] {spec.method} step {step}/{total}: val reward {val['val/reward']:.4f} "
                     f"(best {state['best_val_reward']:.4f} at step {state['best_step']})")
            report[SELECTION_METRIC] = report.get("val/reward", NOT_EVALUATED)
            if save:
                state.update(step=step, total_steps=total, method=spec.method, sampler=sampler.state_dict())
                with tempfile.TemporaryDirectory() as tmp:
                    checkpoint = None
                    if rank == 0:  # one copy of the weights; DDP keeps every worker's identical
                        ckpt.save_checkpoint(tmp, model, tokenizer, optimizer, state)
                        checkpoint = ray.train.Checkpoint.from_directory(tmp)
                    ray.train.report(report, checkpoint=checkpoint, checkpoint_dir_name=f"checkpoint-{step:07d}")
            else:
                ray.train.report(report)
        if step == total or step == tc.stop_at_step > 0:
            break
        _maybe_crash(tc, step, rank, world, spec.run_dir)

        # 3. Micro-batches: this worker's slice of the global batch, gradients summed over grad_accum.
        t0 = time.perf_counter()
        torch.manual_seed(step_seed(tc.seed, step, rank))
        micro_batches = np.array_split(sampler.shard(step, rank, world), tc.grad_accum)
        sums: dict[str, float] = {}
        tokens = 0
        for i, unit_ids in enumerate(micro_batches):
            batch = collate_units(frame, [units[j] for j in unit_ids], tokenizer,
                                  max_prompt_tokens=pc.max_prompt_tokens, max_response_tokens=pc.max_response_tokens,
                                  columns=method.columns).to(device)
            last = i == len(micro_batches) - 1
            # DDP all-reduces gradients once per optimizer step, on the last micro-batch.
            sync = contextlib.nullcontext() if last or world == 1 else model.no_sync()
            with sync:
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_autocast):
                    loss, metrics = method.compute(model, batch, params, method_state)
                (loss / tc.grad_accum).backward()  # mean over micro-batches = mean over this worker's slice
            for key, value in metrics.items():
                sums[key] = sums.get(key, 0.0) + value / len(micro_batches)
            tokens += int(batch.policy.attention_mask.sum())

        # 4. Clip (the norm is logged either way), 5. step.
        max_norm = tc.grad_clip if tc.grad_clip > 0 else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(trainable, max_norm))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if method.after_step:
            method.after_step(method_state, model, step + 1)

        # 6. Log: worker-averaged metrics, one JSON line per step; Ray gets them every log_every steps.
        sums.update({"train/grad_norm": grad_norm, "train/tokens": float(tokens)})
        metrics = _all_reduce(sums, world, device)
        metrics.update({"train/step": step + 1, "train/lr": lr, "time/step_s": time.perf_counter() - t0})
        if not all(math.isfinite(v) for v in metrics.values()):
            raise FloatingPointError(f"non-finite metrics at step {step + 1}: {metrics}")
        if metrics_path:
            _append_jsonl(metrics_path, metrics)
        if (step + 1) % tc.log_every == 0:
            ray.train.report(metrics)
            if rank == 0:
                _say(_progress_line(spec.method, step + 1, total, metrics))


def _maybe_crash(tc, step: int, rank: int, world: int, run_dir: Optional[str]) -> None:
    """Fault-injection hook for the resume test: the last worker dies hard, once, at ``crash_at_step``."""
    if tc.crash_at_step <= 0 or step != tc.crash_at_step or rank != world - 1 or not run_dir:
        return
    marker = os.path.join(run_dir, ".crash_injected")
    if os.path.exists(marker):
        return
    with open(marker, "w", encoding="utf-8") as fh:
        fh.write(str(step))
    os._exit(1)
