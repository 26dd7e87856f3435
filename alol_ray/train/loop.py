"""The offline methods' part of the worker-loop skeleton (``alol_ray.train.worker_loop``): every offline
method trains under Ray Train through ``OfflineHooks``.

One step is one optimizer step: this worker's slice of the step's global batch from the sampler, in
``grad_accum`` micro-batches, the method's loss by name, clip, step. With equal slices the per-worker mean
loss averaged by DDP is the mean over the global batch (2 workers x 4 == 1 worker x 8). Reference log-probs
come from the scored table; there is no reference model in this loop. Resume, the learning rate, evaluation
and checkpoint cadence, logging and model selection are the skeleton's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from alol_ray.families import TEXT, PromptFormat, check_chat_template, describe
from alol_ray.scoring.reward import run_scorer
from alol_ray.train.methods import Method, collate_units
from alol_ray.train.policy import build_policy, make_optimizer
from alol_ray.train.selection import evaluate_policy
from alol_ray.train.worker import mean_over_workers, say
from alol_ray.train.worker_loop import Hooks, LoopSpec, LRSchedule, Worker

SUMMED_METRICS = ("train/tokens",)  # totals over workers; every other metric is a mean


@dataclass
class OfflineHooks(Hooks):
    """The policy from ``policy_path`` (or a checkpoint), trained on the prepared data with ``method``.
    Shipped to the workers with the run's ``LoopSpec`` (see ``loop_spec``)."""

    method: Method
    train: Any  # TrainConfig (batch, grad_accum, optimizer, grad clip, the method's section)
    model: Any  # PolicyConfig (LoRA, dtype, max prompt/response tokens)
    generation: Any  # GenerationConfig (eval replies: max_new_tokens, stop)
    reward: Any  # RewardConfig (eval scoring)
    reward_stats: dict  # (mean, std) of standardised reward components, from the scored table
    policy_path: str  # the starting weights (HF folder or hub id)
    data_ref: Any  # ObjectRef of (frame, units, sampler), see trainer.prepare_data
    val_prompts: list[str] = field(default_factory=list)
    prompt_format: PromptFormat = TEXT  # how prompts become ids (text or the chat template), as in scoring

    def build(self, w: Worker, model_dir):
        self.params = self.method.make_params(self.train)
        # lazy: ray (alol_ray.train.loop imports without it)
        import ray

        self.frame, self.units, self.sampler = ray.get(self.data_ref)
        model, tokenizer = build_policy(self.model, self.train, self.policy_path, model_dir, w.device)
        check_chat_template(tokenizer, self.prompt_format, self.policy_path)
        if w.lead and model_dir is None:
            say(f"[train] {self.method.name}: {describe(model, tokenizer).summary()}")
        return model, tokenizer

    def make_optimizer(self, w: Worker, trainable):
        return make_optimizer(trainable, self.train)

    def restore(self, w: Worker, state: dict, folder: str) -> None:
        self.sampler.check_state(state["sampler"])

    def start(self, w: Worker) -> None:
        self.method_state = self.method.make_state(w.model, self.train) if self.method.make_state else None
        self.reward_fn = None
        if w.lead and w.spec.eval_every > 0 and self.val_prompts:
            self.reward_fn = run_scorer(self.reward, stats=self.reward_stats).rewards

    def evaluate(self, w: Worker, step: int):
        if self.reward_fn is None:
            return None
        gen = self.generation
        val, _ = evaluate_policy(w.model, w.tokenizer, self.val_prompts, self.reward_fn,
                                 max_prompt_tokens=self.model.max_prompt_tokens, max_new_tokens=gen.max_new_tokens,
                                 stop=list(gen.stop), batch_size=gen.batch_size, fmt=self.prompt_format)
        return val

    def state(self, w: Worker) -> dict:
        return {"sampler": self.sampler.state_dict()}

    def train_step(self, w: Worker, step: int, lr: float) -> dict[str, float]:
        # Micro-batches: this worker's slice of the global batch, gradients summed over grad_accum.
        tc, pc, method = self.train, self.model, self.method
        micro_batches = np.array_split(self.sampler.shard(step, w.rank, w.world), tc.grad_accum)
        sums: dict[str, float] = {}
        tokens = 0
        for i, unit_ids in enumerate(micro_batches):
            batch = collate_units(self.frame, [self.units[j] for j in unit_ids], w.tokenizer,
                                  max_prompt_tokens=pc.max_prompt_tokens, max_response_tokens=pc.max_response_tokens,
                                  columns=method.columns, fmt=self.prompt_format).to(w.device)
            # Gradients are synchronised once per optimizer step, on the last micro-batch.
            with w.strategy.accumulate(w.model, i == len(micro_batches) - 1):
                with w.strategy.autocast(w.device):
                    loss, metrics = method.compute(w.model, batch, self.params, self.method_state)
                (loss / tc.grad_accum).backward()  # mean over micro-batches = mean over this worker's slice
            for key, value in metrics.items():
                sums[key] = sums.get(key, 0.0) + value / len(micro_batches)
            tokens += int(batch.policy.attention_mask.sum())
        grad_norm = w.apply_gradients(tc.grad_clip)  # the norm is logged either way
        if method.after_step:
            method.after_step(self.method_state, w.model, step + 1)
        # Worker-averaged metrics (token counts summed).
        sums.update({"train/grad_norm": grad_norm, "train/tokens": float(tokens)})
        return mean_over_workers(sums, w.world, w.device, SUMMED_METRICS)


def loop_spec(method: Method, tc, model_cfg, *, total_steps: int, eval_every: int, stop_at_step: int = 0,
              run_dir=None, track=None) -> LoopSpec:
    """The skeleton's settings of an offline run (``total_steps`` and ``eval_every`` after the positive-fraction
    scaling; ``tc``: TrainConfig)."""
    return LoopSpec(name=method.name, total_steps=total_steps, schedule=LRSchedule.of(tc), parallel=tc,
                    eval_every=eval_every, eval_at_start=tc.eval_at_start, checkpoint_every=tc.checkpoint_every,
                    log_every=tc.log_every, seed=tc.seed, cpus_per_worker=tc.cpus_per_worker,
                    load_in_4bit=model_cfg.lora.load_in_4bit, stop_at_step=stop_at_step, run_dir=run_dir,
                    tracking=track)

