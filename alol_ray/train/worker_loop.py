"""The one worker-loop skeleton every Ray Train job here runs: the offline methods (``train.loop``), PPO
(``alol_ray.baselines.ppo``) and the reward model (``rm.train``). A method supplies its work as ``Hooks``; the
skeleton owns the order of things and every decision the three loops share, once:

    resume -> for step in start..total:
                  set LR -> maybe evaluate + checkpoint -> stop? -> fault point -> hooks.train_step -> log

- **resume**: the run's latest checkpoint (Ray Train restores it); the hooks build the model from its
  ``model/`` (before the strategy wraps it), the strategy loads the optimizer, the trainer state gives the
  step. Nothing is evaluated or saved again at the step a run resumed at. The torch RNG is re-seeded from
  ``(seed, step, rank)`` before every step, so a resumed run continues as the uninterrupted one would.
- **learning rate**: a pure function of the step (``learning_rate``).
- **cadence**: evaluate every ``eval_every`` steps and at the last (and at step 0 with ``eval_at_start``);
  checkpoint every ``checkpoint_every`` steps, at the last, at every evaluated step and at ``stop_at_step``.
- **model selection**: the best val reward among checkpointed steps. Step 0 (the starting policy) is
  measured (val.jsonl, the tracker) but never selected: no checkpoint of it exists to export.
- **logging**: metrics.jsonl one line per step and val.jsonl one per evaluation (rank 0; both cut back to
  the resumed step, so a step trained twice is logged once), the tracker, Ray Train every ``log_every``
  steps (a step that is checkpointed next reports its metrics with the checkpoint instead).
- **checkpointing** goes through the parallel strategy (``alol_ray.train.strategy``, made by
  ``make_strategy``): it wraps the model, saves the checkpoint and loads the optimizer; the hooks add
  their own state to ``trainer_state.json`` and their own files beside ``model/``.
- **stop at step** ``stop_at_step`` (after its checkpoint; the run is not finished), and the fault point
  ``spec.fault_point`` (tests: a worker lost mid-run; Ray restarts the group, which resumes).

A "step" is the method's unit: an optimizer step (offline), a rollout iteration (PPO), an epoch (reward model).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Optional

from alol_ray import faults, ray_compat, storage, tracking
from alol_ray.atomic import append_jsonl, truncate_jsonl
from alol_ray.train.worker import NOT_EVALUATED, SELECTION_METRIC, record_step, report_checkpoint, say, step_seed


@dataclass(frozen=True)
class LRSchedule:
    """Linear warmup over ``warmup_steps``, then ``lr_schedule``: constant, linear or cosine decay to 0."""

    lr: float
    warmup_steps: int = 0
    lr_schedule: str = "constant"  # constant | linear | cosine

    @classmethod
    def of(cls, tc) -> "LRSchedule":
        """train.lr, train.warmup_steps, train.lr_schedule (``tc``: TrainConfig)."""
        return cls(lr=tc.lr, warmup_steps=tc.warmup_steps, lr_schedule=tc.lr_schedule)


def learning_rate(step: int, schedule, total_steps: int) -> float:
    """The LR of ``step`` under ``schedule`` (an ``LRSchedule`` or a TrainConfig): a function of the step
    alone, so a resumed run continues the schedule."""
    if step < schedule.warmup_steps:
        return schedule.lr * (step + 1) / schedule.warmup_steps
    if schedule.lr_schedule == "constant":
        return schedule.lr
    progress = min(1.0, (step - schedule.warmup_steps) / max(1, total_steps - schedule.warmup_steps))
    if schedule.lr_schedule == "linear":
        return schedule.lr * (1.0 - progress)
    return schedule.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass
class LoopSpec:
    """The skeleton's settings, the same for every method, shipped once through ``train_loop_config`` next to
    the method's hooks (which carry the method's own settings)."""

    name: str  # the method: console lines, trainer_state.json's "method"
    total_steps: int
    schedule: LRSchedule
    parallel: Any  # TrainConfig whose keys choose the parallel strategy (``make_strategy``)
    eval_every: int = 0  # 0 = never
    eval_at_start: bool = False  # also evaluate the starting policy (measured, never selected)
    checkpoint_every: int = 1
    log_every: int = 1  # steps between Ray Train reports (metrics.jsonl gets every step)
    seed: int = 0  # the torch RNG of every step is seeded from (seed, step, rank)
    cpus_per_worker: float = 1.0  # torch threads of a CPU worker
    load_in_4bit: bool = False  # 4-bit weights are placed when loaded: the strategy must not move them
    stop_at_step: int = 0  # > 0: end after the checkpoint at that step (the run is not finished)
    run_dir: Optional[str] = None  # metrics.jsonl, val.jsonl: a folder or a storage URI (None = not written)
    tracking: Optional[tracking.TrackingSpec] = None  # rank 0 sends metrics.jsonl / val.jsonl lines to its backends
    unit: str = "step"  # what one step is, in console lines and in the step-time metric ``time/<unit>_s``
    tag: str = "[train]"  # console prefix
    fault_point: str = "train.step"  # alol_ray.faults point hit by the last worker before each step


@dataclass
class Worker:
    """One worker's view of the run, handed to every hook. ``model`` is the strategy's wrapped model."""

    spec: LoopSpec
    rank: int
    world: int
    device: Any
    strategy: Any  # alol_ray.train.strategy.Strategy
    model: Any = None
    tokenizer: Any = None
    optimizer: Any = None
    trainable: list = field(default_factory=list)

    @property
    def lead(self) -> bool:
        return self.rank == 0

    def apply_gradients(self, max_norm: float) -> float:
        """Clip (through the strategy; the norm before clipping is returned either way), step, zero."""
        norm = self.strategy.clip_grad_norm(self.model, self.trainable, max_norm if max_norm > 0 else float("inf"))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm


class Hooks:
    """A method's part of the worker loop; the skeleton calls them in this order. ``build``,
    ``make_optimizer`` and ``train_step`` are required, the others optional."""

    def build(self, w: Worker, model_dir: Optional[str]) -> tuple[Any, Any]:
        """(model, tokenizer or None) before wrapping: the starting weights, or a checkpoint's ``model_dir``."""
        raise NotImplementedError

    def make_optimizer(self, w: Worker, trainable: list):
        raise NotImplementedError

    def restore(self, w: Worker, state: dict, folder: str) -> None:
        """The method's own state from a checkpoint (``state``: its trainer_state.json)."""

    def start(self, w: Worker) -> None:
        """Once, after the resume: actors, the val-reward scorer."""

    def evaluate(self, w: Worker, step: int) -> Optional[dict[str, float]]:
        """Rank 0: validation metrics of the model after ``step`` steps (``val/reward`` selects); None: none."""
        return None

    def train_step(self, w: Worker, step: int, lr: float) -> dict[str, float]:
        """Step ``step`` -> ``step + 1``: the step's metrics, the same keys on every worker (already reduced
        over workers where they must be)."""
        raise NotImplementedError

    def state(self, w: Worker) -> dict[str, Any]:
        """Entries for trainer_state.json at a checkpoint."""
        return {}

    def save_extra(self, w: Worker, folder: str) -> None:
        """Files beside the checkpoint's ``model/`` (on the writing ranks)."""

    def progress(self, w: Worker, step: int, metrics: dict[str, float]) -> Optional[str]:
        """Rank 0's console line every ``log_every`` steps (None: the skeleton's)."""
        return None

    def close(self, w: Worker) -> None:
        """Always called at the end (actors to stop)."""


class RayTrainSession:
    """The skeleton's link to Ray Train (a worker of a ``TorchTrainer``)."""

    def __init__(self):
        # lazy: ray (alol_ray.train.worker_loop imports without it)
        import ray.train
        import ray.train.torch

        ray_compat.quiet_train_reports()
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device()
        self._train = ray.train

    def latest_checkpoint(self) -> Optional[contextlib.AbstractContextManager]:
        """The run's latest checkpoint as a folder (a context), None for a fresh run."""
        resumed = self._train.get_checkpoint()
        return resumed.as_directory() if resumed else None

    def report(self, metrics: dict) -> None:
        self._train.report(metrics)

    def report_checkpoint(self, metrics: dict, name: str, write) -> None:
        report_checkpoint(metrics, name, write)


def train_loop_per_worker(config: dict) -> None:
    """What every ``TorchTrainer`` here runs: ``train_loop_config`` = {"loop": LoopSpec, "hooks": the method's Hooks}."""
    run(config["loop"], config["hooks"])


def cadence(spec: LoopSpec, step: int, *, start: int, resumed: bool) -> tuple[bool, bool]:
    """(evaluate, save) at ``step``, before training it: the model as it is after ``step`` steps."""
    total = spec.total_steps
    fresh = step > start or (step == 0 and not resumed)  # not again right after a resume
    evaluate = fresh and spec.eval_every > 0 and (
        (step > 0 and (step % spec.eval_every == 0 or step == total)) or (step == 0 and spec.eval_at_start))
    save = fresh and step > 0 and (step % spec.checkpoint_every == 0 or step == total or evaluate
                                   or step == spec.stop_at_step)
    return evaluate, save


def _progress_line(spec: LoopSpec, step: int, metrics: dict[str, float]) -> str:
    total = spec.total_steps
    loss = metrics.get("loss/policy", metrics.get("loss/total", float("nan")))
    return (f"{spec.tag} {spec.name} {spec.unit} {step}/{total} ({100.0 * step / max(total, 1):.0f}%): "
            f"loss {loss:.4g}, grad norm {metrics.get('train/grad_norm', float('nan')):.3g}, "
            f"{metrics[f'time/{spec.unit}_s']:.2f} s/{spec.unit}")


def run(spec: LoopSpec, hooks: Hooks, session=None) -> None:
    """One worker's whole run (see the module docs). ``session``: Ray Train's (the default), or an in-process
    one in tests."""
    # lazy: torch, and transformers through the checkpoint module (alol_ray.train.worker_loop imports without them)
    import torch

    from alol_ray.train import checkpoint as ckpt
    from alol_ray.train.strategy import make_strategy

    session = session or RayTrainSession()
    w = Worker(spec, session.rank, session.world, session.device,
               make_strategy(spec.parallel, session.world, load_in_4bit=spec.load_in_4bit))
    if w.device.type == "cpu":
        torch.set_num_threads(max(1, int(spec.cpus_per_worker)))
    total = spec.total_steps

    # Resume: the latest checkpoint of this run (same name and storage path), else the starting weights.
    opened = session.latest_checkpoint()
    resumed = opened is not None
    state: dict[str, Any] = {"step": 0, "best_val_reward": None, "best_step": None}
    with opened or contextlib.nullcontext() as resume_dir:
        # What build draws at random (fresh LoRA adapters) comes from the run's seed, the same on every rank: a
        # run is reproducible, and FSDP's ranks (which, unlike DDP, broadcast nothing) shard one initialisation.
        torch.manual_seed(spec.seed)
        model, w.tokenizer = hooks.build(w, os.path.join(resume_dir, ckpt.MODEL_DIR) if resume_dir else None)
        w.model = w.strategy.wrap(model, w.device)
        w.trainable = [p for p in w.model.parameters() if p.requires_grad]
        w.optimizer = hooks.make_optimizer(w, w.trainable)
        if resume_dir:
            state = ckpt.read_state(resume_dir)
            w.strategy.load_optimizer(resume_dir, w.model, w.optimizer)
            hooks.restore(w, state, resume_dir)
    start = state["step"]
    if resumed and w.lead:
        say(f"{spec.tag} {spec.name}: resuming from the checkpoint at {spec.unit} {start}/{total}")

    logs = storage.worker_folder(spec.run_dir) if spec.run_dir and w.lead else None
    metrics_path = os.path.join(logs, "metrics.jsonl") if logs else None
    val_path = os.path.join(logs, "val.jsonl") if logs else None
    if logs:
        for path in (metrics_path, val_path):
            truncate_jsonl(path, start)  # a step trained again after a restart is logged once
    tracker = tracking.start(spec.tracking if w.lead else None, first_step=start + 1 if resumed else 0)
    last: dict[str, float] = {}  # the latest step's metrics, reported with the next checkpoint
    try:
        hooks.start(w)
        w.model.train()
        for step in range(start, total + 1):
            # 1. Learning rate: a function of the step alone, so a resumed run continues the schedule.
            lr = learning_rate(step, spec.schedule, total)
            for group in w.optimizer.param_groups:
                group["lr"] = lr

            # 2. Evaluate and checkpoint the model as it is after `step` steps.
            evaluate, save = cadence(spec, step, start=start, resumed=resumed)
            if evaluate or save:
                report: dict[str, float] = {**last, "train/step": step}
                val = None
                if evaluate:
                    with w.strategy.unsharded(w.model):  # every rank: FSDP gathers the weights the lead generates with
                        val = hooks.evaluate(w, step) if w.lead else None
                if val is not None:
                    report.update(val)
                    if step > 0 and (state["best_val_reward"] is None or val["val/reward"] > state["best_val_reward"]):
                        state.update(best_val_reward=val["val/reward"], best_step=step)  # step 0 is never selected
                    if val_path:
                        append_jsonl(val_path, {"train/step": step, **val})
                    tracker.log({"train/step": step, **val}, step=step)
                    best = ("" if state["best_step"] is None else
                            f" (best {state['best_val_reward']:.4f} at {spec.unit} {state['best_step']})")
                    say(f"{spec.tag} {spec.name} {spec.unit} {step}/{total}: val reward {val['val/reward']:.4f}{best}")
                report[SELECTION_METRIC] = report.get("val/reward", NOT_EVALUATED) if step > 0 else NOT_EVALUATED
                if save:
                    state.update(step=step, total_steps=total, method=spec.name, **hooks.state(w))
                    _save_checkpoint(w, hooks, session, state, report, f"checkpoint-{step:07d}")
                    if logs:
                        storage.push_back(logs, spec.run_dir)  # the logs up to this checkpoint, next to it
                else:
                    session.report(report)
            if step == total or step == spec.stop_at_step > 0:
                break
            if w.rank == w.world - 1:
                faults.hit(spec.fault_point, step)  # tests: a worker lost mid-run (Ray restarts the group, it resumes)

            # 3. The method's step (seeded from (seed, step, rank): no RNG state to save).
            t0 = time.perf_counter()
            torch.manual_seed(step_seed(spec.seed, step, w.rank))
            metrics = hooks.train_step(w, step, lr)

            # 4. Log: one JSON line per step; Ray gets them every log_every steps (with the checkpoint if one follows).
            metrics.update({"train/step": step + 1, "train/lr": lr, f"time/{spec.unit}_s": time.perf_counter() - t0,
                            "time/wall": time.time()})
            log_now = (step + 1) % spec.log_every == 0
            record_step(metrics, step + 1, metrics_path, tracker, report=False)
            if log_now and not cadence(spec, step + 1, start=start, resumed=resumed)[1]:
                session.report(metrics)
            if log_now and w.lead:
                say(hooks.progress(w, step + 1, metrics) or _progress_line(spec, step + 1, metrics))
            last = metrics
        tracker.close()
        if logs:
            storage.push_back(logs, spec.run_dir)
    finally:
        hooks.close(w)


def _save_checkpoint(w: Worker, hooks: Hooks, session, state: dict, report: dict, name: str) -> None:
    """One checkpoint through the strategy, reported to Ray Train by every worker (as it requires). A
    replicated model is written once, by rank 0; a strategy may gather from every rank, so it is called on
    the ranks that write nothing too, with no folder."""
    writes = w.lead or w.strategy.writes_on_every_rank
    if not writes:
        w.strategy.save(None, w.model, w.tokenizer, w.optimizer, state)

    def write(folder: str) -> None:
        w.strategy.save(folder, w.model, w.tokenizer, w.optimizer, state)
        hooks.save_extra(w, folder)

    session.report_checkpoint(report, name, write if writes else None)
