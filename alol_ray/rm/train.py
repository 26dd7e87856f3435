"""`alol rm train`: fit a one-output sequence classifier on canonical rows as a Ray Train job.

    rows -> train / held-out prompts (deterministic) -> examples (rows for regression, rank pairs for pairwise)
         -> [frozen BERT-family encoder: encoder features once, Ray Data actor pool, cached]
         -> TorchTrainer: head (or whole model) trained with the loss by name; a checkpoint per epoch
         -> HF folder (model + tokenizer + alol_reward.json) -> evaluation (alol_rm_eval.json)
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import shutil
import time
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import pandas as pd

from alol_ray import columns as C
from alol_ray import ray_compat, storage, tracking
from alol_ray.atomic import write_json
from alol_ray.config import RewardModelConfig, RunConfig, TrainConfig
from alol_ray.errors import UserError
from alol_ray.hashing import added_at_default, fingerprint, model_identity
from alol_ray.ray_utils import init_ray
from alol_ray.reward_spec import RewardSpec
from alol_ray.rm.backbone import (
    EVAL_FILE,
    detect_pooling,
    encode,
    fold_target_scale,
    has_cacheable_head,
    load_reward_model,
    make_head,
    resolve_backbone,
)
from alol_ray.rm.embed import cached_features, run_pass
from alol_ray.rm.metrics import evaluate_slice, format_report, pairwise_accuracy, pearson, spearman
from alol_ray.train.worker import SELECTION_METRIC
from alol_ray.train.worker_loop import Hooks, LoopSpec, LRSchedule, Worker, train_loop_per_worker

log = logging.getLogger("alol")

TRAIN_DIR = ".train"  # the Ray Train run inside the output folder while it trains
# Fields that choose resources or where the output goes, not what is learned.
RESOURCE_FIELDS = ("num_workers", "cpus_per_worker", "use_gpu", "max_failures", "embed_pool", "output")


# ----------------------------------------------------------------------------------------------- data


def split_holdout(frame: pd.DataFrame, rm: RewardModelConfig) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """(training rows, evaluation slices). The held-out prompts are a seeded, exact fraction of the
    training split's prompts (sorted by a hash of seed and prompt_id), so every run holds out the same."""
    train_all = frame[frame[C.SPLIT] == rm.train_split]
    if train_all.empty:
        raise UserError(f"rm.train_split={rm.train_split!r}: no rows in that split "
                        f"(splits present: {sorted(frame[C.SPLIT].unique())})")
    pids = sorted(train_all[C.PROMPT_ID].unique(),
                  key=lambda p: hashlib.sha1(f"{rm.seed}:{p}".encode()).hexdigest())
    held = set(pids[: int(round(rm.holdout_fraction * len(pids)))])
    is_held = train_all[C.PROMPT_ID].isin(held)
    slices: dict[str, pd.DataFrame] = {}
    if is_held.any():
        slices["holdout"] = train_all[is_held].reset_index(drop=True)
    for split in rm.eval_splits:
        part = frame[frame[C.SPLIT] == split]
        if split != rm.train_split and not part.empty:
            slices[split] = part.reset_index(drop=True)
    return train_all[~is_held].reset_index(drop=True), slices


def rank_pairs(frame: pd.DataFrame) -> np.ndarray:
    """[P, 2] row positions (chosen, rejected): every two responses of one prompt, chosen = lower rank."""
    pairs = []
    ranks = frame[C.RANK].to_numpy()
    for positions in frame.groupby(C.PROMPT_ID, sort=False).indices.values():
        ordered = sorted(positions, key=lambda i: ranks[i])
        pairs += [(a, b) for i, a in enumerate(ordered) for b in ordered[i + 1:] if ranks[a] < ranks[b]]
    return np.asarray(pairs, dtype=np.int64).reshape(-1, 2)


def training_examples(train: pd.DataFrame, rm: RewardModelConfig) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The rows the model sees and the targets: {"y", "mean", "std"} (regression) or {"pairs"} (pairwise)."""
    if rm.loss == "regression":
        if C.REWARD not in train or train[C.REWARD].isna().all():
            raise UserError("rm.loss=regression needs rows with a reward; these rows carry none "
                            "(use rm.loss=pairwise to learn from the ranking)")
        train = train[train[C.REWARD].notna()].reset_index(drop=True)
        y = train[C.REWARD].to_numpy(dtype=np.float64)
        mean, std = (float(y.mean()), float(y.std())) if rm.standardize_targets else (0.0, 1.0)
        std = std if std > 0 else 1.0
        return train, {"y": ((y - mean) / std).astype(np.float32), "mean": mean, "std": std}
    pairs = rank_pairs(train)
    if len(pairs) == 0:
        raise UserError("rm.loss=pairwise needs prompts with at least two ranked responses; found none")
    used = np.unique(pairs)
    remap = np.full(len(train), -1, dtype=np.int64)
    remap[used] = np.arange(len(used))
    return train.iloc[used].reset_index(drop=True), {"pairs": remap[pairs]}


def _features_key(cfg: RunConfig, backbone_path: str) -> str:
    """What determines the encoder features: the backbone (by content) and the input rendering."""
    rm = cfg.rm
    return fingerprint("rm-encoder-v2", model_identity(backbone_path, rm.revision), rm.pooling, rm.template,
                       rm.max_length, rm.truncation_side)


# ------------------------------------------------------------------------------------- the worker loop


@dataclass
class RewardModelHooks(Hooks):
    """The reward model's part of the worker-loop skeleton (``alol_ray.train.worker_loop``): one step is one
    epoch over the examples, each worker taking its slice of every global batch, the loss by name.

    Head mode trains pooler + classifier on cached encoder features; full mode runs the classifier on
    tokenized text (the encoder frozen or not). A checkpoint's model/ holds the trainable weights (the head's
    state dict, or the whole classifier as an HF folder), so a restarted worker group resumes at the next epoch.
    """

    rm: Any  # RewardModelConfig (loss, template, lengths, optimizer, batch, seed)
    mode: str  # "head" (cached features) | "full" (text through the classifier)
    backbone: str  # resolved backbone folder
    pooling: str  # resolved pooling
    data: Any  # ObjectRef of the training payload (features or texts, targets)
    holdout: Any = None  # ObjectRef of the held-out slice, or None

    def build(self, w: Worker, model_dir):
        # lazy: ray, alol_ray.rm.losses (torch), alol_ray.train.checkpoint (transformers)
        # (alol_ray.rm.train imports without them)
        import ray

        from alol_ray.rm.losses import LOSSES
        from alol_ray.train.checkpoint import load_weights

        rm = self.rm
        self.payload = ray.get(self.data)
        self.held = ray.get(self.holdout) if self.holdout is not None else None
        self.loss_fn = LOSSES[rm.loss]
        model, self.tok, _ = load_reward_model(self.backbone, self.pooling, revision=rm.revision,
                                               trust_remote_code=rm.trust_remote_code, seed=rm.seed)
        module = make_head(model) if self.mode == "head" else model
        if self.mode == "full" and rm.freeze_encoder:
            for p in model.base_model.parameters():  # no cached features for this architecture: freeze in place
                p.requires_grad_(False)
        if model_dir:
            load_weights(module, model_dir)
        return module, None if self.mode == "head" else self.tok

    def make_optimizer(self, w: Worker, trainable):
        # lazy: torch (alol_ray.rm.train imports without it)
        import torch

        return torch.optim.AdamW(trainable, lr=self.rm.lr, weight_decay=self.rm.weight_decay)

    def rewards(self, w: Worker, rows: np.ndarray, source: dict, model=None):
        """The output of ``model`` (default: the trained one) for rows (positions into ``source``): from
        features or from text."""
        # lazy: torch (alol_ray.rm.train imports without it)
        import torch

        model = w.model if model is None else model
        if self.mode == "head":
            return model(torch.as_tensor(source["X"][rows], device=w.device))
        rm = self.rm
        enc = encode(self.tok, rm.template, [source["prompts"][i] for i in rows],
                     [source["responses"][i] for i in rows], rm.max_length, rm.truncation_side)
        return model(**enc.to(w.device)).logits.squeeze(-1)

    def evaluate_holdout(self, w: Worker) -> dict[str, float]:
        """Rank 0 alone. Through the module inside DDP: DDP's own forward broadcasts buffers to the other
        workers (a collective they do not join here, which hung 2-worker runs)."""
        # lazy: torch (alol_ray.rm.train imports without it)
        import torch

        held = self.held
        model = getattr(w.model, "module", w.model)
        model.eval()
        with torch.no_grad():
            scores = np.concatenate([self.rewards(w, np.arange(i, min(i + 256, held["n"])), held, model).cpu().numpy()
                                     for i in range(0, held["n"], 256)])
        model.train()
        frame = pd.DataFrame({C.PROMPT_ID: held["pid"], C.RANK: held["rank"]})
        out = {"holdout/pairwise_acc": pairwise_accuracy(frame, scores)[0]}
        labelled = ~np.isnan(held["reward"])
        if labelled.sum() > 1:
            out["holdout/pearson"] = pearson(scores[labelled], held["reward"][labelled])
            out["holdout/spearman"] = spearman(scores[labelled], held["reward"][labelled])
        return out

    def train_step(self, w: Worker, epoch: int, lr: float) -> dict[str, float]:
        # lazy: torch, tqdm (alol_ray.rm.train imports without them)
        import torch
        from tqdm import tqdm

        rm, data = self.rm, self.payload
        n_examples = len(data["pairs"]) if rm.loss == "pairwise" else data["n"]
        batch, per_worker = rm.batch_size, rm.batch_size // w.world
        steps = max(n_examples // batch, 1)  # the last incomplete global batch is dropped (reshuffled each epoch)
        # The same permutation on every worker; worker r takes its slice of each global batch.
        perm = np.random.default_rng(rm.seed + epoch).permutation(n_examples)
        totals: dict[str, float] = {}
        for step in tqdm(range(steps), desc=f"rm epoch {epoch + 1}", disable=not w.lead or self.mode == "head",
                         mininterval=5):
            mine = perm[step * batch: (step + 1) * batch][w.rank * per_worker: (w.rank + 1) * per_worker]
            with w.strategy.autocast(w.device):
                if rm.loss == "pairwise":
                    chosen, rejected = data["pairs"][mine, 0], data["pairs"][mine, 1]
                    scores = self.rewards(w, np.concatenate([chosen, rejected]), data)
                    loss, metrics = self.loss_fn(scores[: len(mine)], scores[len(mine):])
                else:
                    y = torch.as_tensor(data["y"][mine], device=w.device)
                    loss, metrics = self.loss_fn(self.rewards(w, mine, data), y)
            loss.backward()
            # grad_clip keeps one noisy batch from throwing the head far off (0: the norm is only measured)
            metrics["train/grad_norm"] = w.apply_gradients(rm.grad_clip)
            for k, v in metrics.items():
                totals[k] = totals.get(k, 0.0) + v / steps
        report = {"epoch": epoch + 1, **totals}
        if self.held is not None:
            with w.strategy.unsharded(w.model):  # every rank: FSDP gathers the weights the lead scores with
                held = self.evaluate_holdout(w) if w.lead else {}
            # A metric undefined on this slice (constant labels, no pair) is left out: step metrics are finite.
            report.update({k: v for k, v in held.items() if np.isfinite(v)})
        return report

    def progress(self, w: Worker, epoch: int, metrics: dict[str, float]) -> str:
        shown = {k: v for k, v in metrics.items() if not k.startswith(("time/", "train/"))}
        return "[rm] " + "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in shown.items())


def loop_spec(rm: RewardModelConfig, track=None) -> LoopSpec:
    """The skeleton's settings of a reward-model run: rm.epochs steps of one epoch, a checkpoint after each,
    a constant learning rate, ``rm.strategy`` (DDP or FSDP) over ``rm.num_workers`` (no autocast)."""
    parallel = TrainConfig(num_workers=rm.num_workers, cpus_per_worker=rm.cpus_per_worker, use_gpu=rm.use_gpu,
                           bf16=False, strategy=rm.strategy)
    return LoopSpec(name="reward model", total_steps=rm.epochs, schedule=LRSchedule(lr=rm.lr), parallel=parallel,
                    checkpoint_every=1, seed=rm.seed, cpus_per_worker=rm.cpus_per_worker, tracking=track,
                    unit="epoch", tag="[rm]", fault_point="rm.epoch")


# --------------------------------------------------------------------------------------- orchestration


def learned_settings(rm: RewardModelConfig) -> dict:
    """The rm settings that change what is learned (resources and the output folder do not); a setting added
    after reward models were trained (``config_fields.added_field``) only when it is not at its default, so a
    reward model trained before it existed is still up to date."""
    later = {f.name for f in dataclasses.fields(rm) if added_at_default(f, getattr(rm, f.name))}
    return {k: v for k, v in dataclasses.asdict(rm).items() if k not in RESOURCE_FIELDS and k not in later}


def _payload(frame: pd.DataFrame, features: Optional[np.ndarray]) -> dict[str, Any]:
    """What a worker needs about rows: features (head mode) or texts (full mode)."""
    if features is not None:
        return {"n": len(frame), "X": np.ascontiguousarray(features, dtype=np.float32)}
    return {"n": len(frame), "prompts": frame[C.PROMPT].tolist(), "responses": frame[C.RESPONSE].tolist()}


def train_reward_model(cfg: RunConfig, rows_path: str, out_dir: str, *, cache_dir: str) -> dict[str, Any]:
    """Train, save the HF folder into ``out_dir``, evaluate; returns a summary (also in alol_rm_eval.json).

    The Ray Train run lives in ``out_dir``/.train while it runs, so a rerun into the same folder (the stage's
    staging folder) resumes from the last epoch; it is removed once the model is saved. Frozen-encoder
    features are cached in ``cache_dir``.
    """
    # lazy: ray, torch, alol_ray.train.checkpoint (transformers) (alol_ray.rm.train imports without them)
    import ray
    import torch
    from ray.train import CheckpointConfig, FailureConfig, ScalingConfig
    from ray.train import RunConfig as RayRunConfig
    from ray.train.torch import TorchTrainer

    from alol_ray.train.checkpoint import MODEL_DIR, load_weights

    rm = cfg.rm
    start = time.time()
    frame = pd.read_parquet(rows_path)
    train_rows, slices = split_holdout(frame, rm)
    train_rows, targets = training_examples(train_rows, rm)
    backbone = resolve_backbone(rm.backbone)
    pooling = detect_pooling(backbone, rm.pooling)
    # Building the model once here fails fast on a bad backbone and tells which training mode applies.
    model, tok, pooling = load_reward_model(backbone, pooling, revision=rm.revision,
                                            trust_remote_code=rm.trust_remote_code, seed=rm.seed)
    head_mode = rm.freeze_encoder and has_cacheable_head(model)
    log.info(f"[rm] {len(train_rows):,} training rows ({len(targets.get('pairs', [])) or len(train_rows):,} "
             f"{'pairs' if rm.loss == 'pairwise' else 'rows'}), eval slices "
             f"{ {k: len(v) for k, v in slices.items()} }; backbone {backbone} (pooling {pooling}); "
             f"{'head on cached encoder features' if head_mode else 'whole model' if not rm.freeze_encoder else 'head, encoder frozen in place'}")

    init_ray(cfg.ray)
    runner_kwargs = {"backbone": backbone, "pooling": pooling, "template": rm.template, "max_length": rm.max_length,
                     "truncation_side": rm.truncation_side, "revision": rm.revision,
                     "trust_remote_code": rm.trust_remote_code, "use_gpu": rm.embed_pool.num_gpus > 0}
    eval_features: dict[str, np.ndarray] = {}
    train_features = None
    if head_mode:
        # One pass over training and evaluation rows together: one actor pool start-up.
        everything = pd.concat([train_rows] + list(slices.values()), ignore_index=True)
        features = cached_features(everything, cache_dir, _features_key(cfg, backbone), rm.embed_pool,
                                   runner_kwargs)
        train_features, offset = features[: len(train_rows)], len(train_rows)
        for name, part in slices.items():
            eval_features[name] = features[offset: offset + len(part)]
            offset += len(part)

    data = {**_payload(train_rows, train_features), **{k: v for k, v in targets.items() if k in ("y", "pairs")}}
    holdout = None
    if "holdout" in slices:
        h = slices["holdout"]
        holdout = {**_payload(h, eval_features.get("holdout")), "pid": h[C.PROMPT_ID].to_numpy(),
                   "rank": h[C.RANK].to_numpy(),
                   "reward": h[C.REWARD].to_numpy(dtype=np.float64) if C.REWARD in h else np.full(len(h), np.nan)}
    hooks = RewardModelHooks(rm=rm, mode="head" if head_mode else "full", backbone=backbone, pooling=pooling,
                             data=ray.put(data), holdout=ray.put(holdout) if holdout is not None else None)
    loop = loop_spec(rm, track=tracking.prepare(cfg, f"rm-s{rm.seed}", work_dir=out_dir, job_type="rm"))
    train_dir = os.path.join(out_dir, TRAIN_DIR)
    storage_path, filesystem = storage.train_storage(train_dir)  # a bucket run: the bucket itself
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"loop": loop, "hooks": hooks},
        scaling_config=ScalingConfig(num_workers=rm.num_workers, use_gpu=rm.use_gpu,
                                     resources_per_worker={"CPU": rm.cpus_per_worker}),
        # Same folder for the same config (the stage's staging folder): a rerun resumes from the last epoch.
        run_config=RayRunConfig(name="checkpoints", storage_path=storage_path, storage_filesystem=filesystem,
                                checkpoint_config=CheckpointConfig(num_to_keep=2),
                                failure_config=FailureConfig(max_failures=rm.max_failures)),
    )
    train_start = time.time()
    result = ray_compat.fit(trainer)
    if result.checkpoint is None:
        raise RuntimeError("reward-model training reported no checkpoint")
    train_seconds = time.time() - train_start

    # The trained weights go back into the full classifier, which is saved as a standard HF folder.
    trained = make_head(model) if head_mode else model
    with result.checkpoint.as_directory() as folder:
        load_weights(trained, os.path.join(folder, MODEL_DIR))
    if rm.loss == "regression":
        fold_target_scale(model, targets["mean"], targets["std"])
    shutil.rmtree(train_dir, ignore_errors=True)  # done: the checkpoints were only there to resume
    storage.remove_remote(train_dir)
    model.eval()
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    RewardSpec(template=rm.template, max_length=rm.max_length, truncation_side=rm.truncation_side, transform="raw",
               pooling=pooling, loss=rm.loss, backbone=rm.backbone,
               target_mean=targets.get("mean"), target_std=targets.get("std"),
               trained_on={"rows": len(train_rows), "pairs": int(len(targets.get("pairs", []))),
                           "epochs": rm.epochs}).save(out_dir)

    # Evaluation: cached features through the saved head, or the saved folder itself on the actor pool.
    report: dict[str, Any] = {}
    for name, part in slices.items():
        if head_mode:
            with torch.no_grad():
                scores = make_head(model).eval()(torch.as_tensor(eval_features[name])).numpy()
        else:
            scores = run_pass(part, rm.embed_pool, {**runner_kwargs, "backbone": out_dir, "output": "reward"})
        report[name] = evaluate_slice(part, scores)
    summary = {"slices": report, "train_seconds": round(train_seconds, 1),
               "total_seconds": round(time.time() - start, 1), "mode": "head" if head_mode else "full",
               "final_metrics": {k: v for k, v in (result.metrics or {}).items()
                                 if isinstance(v, (int, float)) and k != SELECTION_METRIC},
               "config": dataclasses.asdict(rm)}
    write_json(os.path.join(out_dir, EVAL_FILE), summary)
    log.info("[rm] evaluation (" + os.path.join(out_dir, EVAL_FILE) + ")\n" + format_report(report))
    log.info(f"[rm] saved {out_dir}")
    return {"mode": summary["mode"], "train_seconds": summary["train_seconds"]}
