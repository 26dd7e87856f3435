"""PPO, the online baseline: rollouts from the current policy, scored, and a clipped policy + value update,
as ONE Ray Train job (``TorchTrainer``) per run.

Each iteration, read top to bottom in ``PPOHooks.train_step`` (one step of the worker-loop skeleton,
``alol_ray.train.worker_loop``, which owns resume, cadence, logging, checkpoints and selection):

    1. rank 0 samples ``ppo.rollout_size`` train prompts and the Generator actors (alol_ray.generation; vLLM
       wherever it is installed, GPU or CPU build, else transformers) answer them with the current policy
       (``ppo.temperature`` / ``top_p``);
    2. rank 0 scores the replies with the RewardScorer (in-process, or the Ray Serve deployment when
       ``ppo.reward_service``) and gets pi_ref's token log-probs of the exact rollout tokens from the
       ``ReferencePolicy`` actor (frozen pi_ref, ``ppo.reference_cpus/gpus``); the rollout is broadcast;
    3. every worker computes pi_old's log-probs and the critic's values for its shard, the per-token
       KL-penalised rewards, GAE and (globally) whitened advantages (alol_ray.baselines.ppo_loss);
    4. ``ppo.ppo_epochs`` passes of clipped-surrogate + clipped-value mini-batch updates (DDP over workers);
    5. the adaptive KL coefficient is updated and the new weights go into the running Generator engines in
       place (``Generator.update_weights``: one copy in Ray's object store, read by every engine; vLLM
       reloads them with its own ``reload_weights``; no engine restarts). Under ``train.strategy: fsdp`` every
       rank sends its shards and rank 0 loads them into its CPU copy of the policy first
       (``PPOHooks.current_weights``); the value head is gathered the same way at each checkpoint;
    6. every ``ppo.eval_every`` iterations the greedy val reward (the offline trainer's selection) is measured
       and a checkpoint is reported; the best one is exported as an HF folder like every other method.

Why one long Train job and not a ``TorchTrainer.fit`` per iteration: starting a worker group costs ~20 s
on an idle 2-core machine (minutes under load), more than a whole tiny iteration; one job keeps the
workers, the optimizer state and the Generator / reference actors alive across iterations, and it resumes
from its latest checkpoint like the offline runs (``FailureConfig``; the actors are children of rank 0 and
are restarted with it). Weights reach the engines through Ray's object store, not a folder, so the engines
may run on any node.

The critic is a linear value head on the policy's last hidden state at each response position (TRL's
``AutoModelForCausalLMWithValueHead``: shared body, ``vf_coef``-weighted loss), zero-initialised, saved as
``value_head.safetensors`` next to the checkpoint's ``model/``.

Run layout (as the offline trainer): ``<run>/train/ppo-s<seed>/{metrics.jsonl, val.jsonl, summary.json, best/}``.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch

from alol_ray import columns as C
from alol_ray import ray_compat, storage, tracking
from alol_ray.errors import ConfigError, UserError
from alol_ray.generation import Generator
from alol_ray.families import prompt_format, response_end_id
from alol_ray.generation.common import encode_prompts
from alol_ray.generation.generator import choose_engine, engine_resources
from alol_ray.ray_utils import init_ray, is_local_ray
from alol_ray.scoring.reference import ReferenceScorer
from alol_ray.scoring.reward import run_scorer
from alol_ray.tokenization import PolicyBatch, collate, logps_from_logits, response_logits, response_token_logps
from alol_ray.train.methods import Method, register
from alol_ray.train.selection import evaluate_policy
from alol_ray.train.worker import all_reduce_sum, broadcast, mean_over_workers
from alol_ray.train.worker_loop import Hooks, LoopSpec, LRSchedule, Worker
from alol_ray.baselines import ppo_loss as P

log = logging.getLogger("alol")

METHOD = "ppo"
VALUE_HEAD_FILE = "value_head.safetensors"
POLICY_PREFIX = "policy."  # the policy's entries in the state dict of the policy + value head module
PPO_STATE_KEY = "ppo"  # trainer_state.json entry with the KL coefficient and score moments


# ------------------------------------------------------------------------------------------- models


def _value_head_module(hidden_size: int):
    head = torch.nn.Linear(hidden_size, 1)
    torch.nn.init.zeros_(head.weight)  # V = 0 at the start: the first advantages are the returns themselves
    torch.nn.init.zeros_(head.bias)
    return head


class PolicyWithValueHead:
    """Factory for the torch module (kept out of module scope so importing this file needs no torch)."""

    @staticmethod
    def build(policy, value_head=None):
        class _Module(torch.nn.Module):
            def __init__(self, policy, head):
                super().__init__()
                self.policy = policy
                self.value_head = head

            def save_pretrained(self, folder: str, state_dict: Optional[dict] = None, **kwargs) -> None:
                """A checkpoint's model/ is the policy alone (build_policy and export_policy load it); the value
                head is saved beside it (``PPOHooks.save_extra``). A ``state_dict`` given (FSDP's gathered one)
                is this module's: its ``policy.`` entries are the policy's."""
                state_dict = None if state_dict is None else policy_entries(state_dict)
                self.policy.save_pretrained(folder, state_dict=state_dict, **kwargs)

            def get_base_model(self):
                """The transformers model inside (as peft's wrapper has it): where FSDP finds the decoder layers."""
                return self.policy.get_base_model() if hasattr(self.policy, "get_base_model") else self.policy

            def forward(self, batch, with_entropy: bool = False):
                """(token log-probs [B, R], values [B, R], entropy [B, R] or None) at the response positions:
                the value of the state that emits token t is read at the position whose logits predict t."""
                # the LM head on the response positions alone where the forward allows it (response_logits)
                picked, out = response_logits(self.policy, batch, output_hidden_states=True)
                picked = picked.float()  # [B, R, V]
                index = batch.response_index
                log_norm = torch.logsumexp(picked, dim=-1)
                logps = logps_from_logits(picked, batch, log_norm)
                hidden = out.hidden_states[-1]
                hidden = hidden.gather(1, index.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
                values = self.value_head(hidden.to(self.value_head.weight.dtype)).squeeze(-1).float()
                real = batch.response_mask > 0
                entropy = None
                if with_entropy:
                    with torch.no_grad():
                        probs = torch.softmax(picked, dim=-1)
                        entropy = log_norm - (probs * picked).sum(-1)
                        entropy = torch.where(real, entropy, torch.zeros_like(entropy))
                return logps, torch.where(real, values, torch.zeros_like(values)), entropy

        if value_head is None:
            value_head = _value_head_module(policy.config.hidden_size)
        return _Module(policy, value_head)


class ReferencePolicy:
    """The frozen pi_ref as a Ray actor: log-probs of given token ids (the exact rollout tokens, not a
    re-tokenisation of the decoded text). Loading and the forward pass are the ReferenceScorer's."""

    def __init__(self, model_path: str, *, max_prompt_tokens: int, max_response_tokens: int, model_cfg,
                 use_gpu: bool, bf16: bool, num_threads: Optional[int], prompt_format=None):
        self.scorer = ReferenceScorer(model_path, max_prompt_tokens=max_prompt_tokens,
                                      max_response_tokens=max_response_tokens, model_cfg=model_cfg,
                                      prompt_format=prompt_format, use_gpu=use_gpu, bf16=bf16,
                                      num_threads=num_threads)

    def token_logps(self, pairs: list[tuple[list[int], list[int]]], batch_size: int = 32) -> list[np.ndarray]:
        tok, out = self.scorer.tokenizer, []
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        for start in range(0, len(pairs), batch_size):
            batch = collate(pairs[start:start + batch_size], pad_id).to(self.scorer.device)
            with torch.inference_mode():
                logps = response_token_logps(self.scorer.model, batch).float().cpu().numpy()
            out += [logps[i, :n] for i, n in enumerate(batch.response_lengths.tolist())]
        return out


# ------------------------------------------------------------------------------------------- spec


def rollout_generation_config(cfg):
    """generation.* with PPO's sampling settings: rollouts are sampled, evaluation stays greedy."""
    pc = cfg.ppo
    return dataclasses.replace(cfg.generation, temperature=pc.temperature, top_p=pc.top_p,
                               max_new_tokens=pc.max_new_tokens,
                               cpus_per_engine=pc.generation_cpus or cfg.generation.cpus_per_engine)


def ppo_train_config(cfg, tc):
    """train.* for the PPO update: ``ppo.cpus_per_worker`` (when set) replaces train.cpus_per_worker."""
    return dataclasses.replace(tc, cpus_per_worker=cfg.ppo.cpus_per_worker or tc.cpus_per_worker)


def resources_needed(cfg, tc) -> dict[str, float]:
    """What one PPO run holds at once: the Train workers, the Generator engines, the pi_ref actor and, with
    ``ppo.reward_service``, the Serve replicas at their minimum count."""
    gen, pc = rollout_generation_config(cfg), cfg.ppo
    engine = engine_resources(gen, choose_engine(gen))  # vLLM or transformers, as the Generator will choose
    need = {"CPU": tc.num_workers * tc.cpus_per_worker + gen.num_engines * engine["CPU"] + pc.reference_cpus,
            "GPU": (tc.num_workers if tc.use_gpu else 0) + gen.num_engines * engine["GPU"] + pc.reference_gpus}
    if pc.reward_service:
        need["CPU"] += cfg.serve.min_replicas * cfg.serve.num_cpus
        need["GPU"] += cfg.serve.min_replicas * cfg.serve.num_gpus
    return need


def check_resources(cfg, tc, total: dict[str, float], *, local: bool) -> None:
    """A local Ray that cannot hold every PPO actor at once would wait forever (the Train workers take their
    CPUs first, the Generator / pi_ref actors never start): fail now, naming the knobs. A cluster may
    autoscale, so there a shortfall is only logged."""
    need = resources_needed(cfg, tc)
    short = {k: (v, float(total.get(k, 0.0))) for k, v in need.items() if v > float(total.get(k, 0.0)) + 1e-9}
    if not short:
        return
    what = ", ".join(f"{v:g} {k} (the cluster has {have:g})" for k, (v, have) in short.items())
    knobs = (f"train.num_workers x ppo.cpus_per_worker ({tc.num_workers} x {tc.cpus_per_worker:g}) + "
             f"generation.num_engines x ppo.generation_cpus ({cfg.generation.num_engines} x "
             f"{rollout_generation_config(cfg).cpus_per_engine:g}) + ppo.reference_cpus ({cfg.ppo.reference_cpus:g})"
             + (" + serve.min_replicas x serve.num_cpus" if cfg.ppo.reward_service else ""))
    if local:
        raise ConfigError(f"ppo needs {what} at once: {knobs}. Lower them (e.g. ppo.cpus_per_worker=1 "
                          f"ppo.generation_cpus=0.5 ppo.reference_cpus=0.5 on 2 cores) or raise ray.num_cpus")
    log.info(f"[train] ppo: needs {what} at once ({knobs}); waiting for the autoscaler to add nodes")


def sample_prompts(prompts: list[str], n: int, seed: int, iteration: int) -> list[str]:
    """``n`` train prompts for an iteration: a pure function of (seed, iteration), so a resumed run draws
    what an uninterrupted one would (without replacement within an iteration when possible)."""
    rng = np.random.default_rng([seed, 7, iteration])
    index = rng.choice(len(prompts), size=n, replace=n > len(prompts))
    return [prompts[i] for i in index]


# ----------------------------------------------------------------------------------------- helpers


def rollout_weights(policy) -> dict:
    """The policy's full weights in its Hugging Face names, for the rollout engines' in-place update: a LoRA
    policy is merged into a copy first (the engines run the plain architecture)."""
    with torch.no_grad():
        model = copy.deepcopy(policy).merge_and_unload() if hasattr(policy, "merge_and_unload") else policy
        return {name: tensor.detach().to("cpu") for name, tensor in model.state_dict().items()}


def policy_entries(state: dict) -> dict:
    """The policy's part of a policy + value head state dict, in the policy's own names."""
    return {k[len(POLICY_PREFIX):]: v for k, v in state.items() if k.startswith(POLICY_PREFIX)}


def full_tensors(state: dict) -> dict:
    """``state`` with every sharded tensor (FSDP's DTensor) gathered whole: a collective, every rank calls it."""
    return {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().cpu() for k, v in state.items()}


class _Rollouts:
    """Rank 0's role actors: Generator, ReferencePolicy and the reward (in-process or Ray Serve)."""

    def __init__(self, spec: "PPOHooks", weights: dict):
        # lazy: ray, alol_ray.models (transformers) (alol_ray.baselines.ppo imports without them)
        import ray

        from alol_ray.models import adapter_base

        cfg, pc = spec.cfg, spec.cfg.ppo
        self.gen_cfg = rollout_generation_config(cfg)
        # The engines load the starting policy's architecture and tokenizer from its folder (a path every node
        # reads, like the training workers), then take the current weights through Ray's object store: no
        # folder on this worker's disk, so the engines may run on any node.
        self.prompt_format = prompt_format(cfg)
        self.generator = Generator(adapter_base(spec.policy_path)[0], self.gen_cfg,
                                   max_prompt_tokens=cfg.model.max_prompt_tokens, prompt_format=self.prompt_format,
                                   show_progress=False)
        self.update_weights(weights)
        self.budget = int(self.generator.engine_info[0]["prompt_budget"])
        actor = ray.remote(ReferencePolicy).options(num_cpus=pc.reference_cpus, num_gpus=pc.reference_gpus)
        self.reference = actor.remote(
            spec.ref_path, max_prompt_tokens=cfg.model.max_prompt_tokens, max_response_tokens=pc.max_new_tokens + 1,
            model_cfg=cfg.model, use_gpu=pc.reference_gpus > 0, bf16=cfg.scoring.reference_pool.bf16,
            num_threads=max(1, int(pc.reference_cpus)), prompt_format=self.prompt_format)
        if pc.reward_service:
            # lazy: alol_ray.scoring.serve (ray, pandas) (alol_ray.baselines.ppo imports without them)
            from alol_ray.scoring.serve import RewardClient, start

            self.reward = RewardClient(start(cfg, stats=spec.reward_stats)).rewards
        else:
            self.reward = run_scorer(cfg.reward, stats=spec.reward_stats).rewards

    def collect(self, prompts: list[str], tokenizer, iteration: int = 0) -> dict:
        """Generate, score and reference-score one rollout: token ids, texts, reward columns, ref log-probs.
        Iteration ``i`` samples with the seeds of positions i * len(prompts) on, fresh every iteration."""
        # lazy: ray (alol_ray.baselines.ppo imports without it)
        import ray

        t0 = time.perf_counter()
        version = self.generator.engine_info[0]["weights_version"]  # in-place updates the engines have taken
        outs = self.generator.generate_with_ids(prompts, first_index=iteration * len(prompts))
        t_gen = time.perf_counter() - t0
        # the ids the engines conditioned on
        prompt_ids = encode_prompts(tokenizer, prompts, self.budget, self.prompt_format)
        # A reply cut to nothing (a stop string first) still needs one action to carry its reward: EOS (or the
        # chat template's end of turn).
        end = response_end_id(tokenizer, self.prompt_format)
        response_ids = [list(o.token_ids) or [end] for o in outs]
        pairs = list(zip(prompt_ids, response_ids))
        ref_future = self.reference.token_logps.remote(pairs)
        texts = [o.text for o in outs]
        scored = self.reward(prompts, texts)
        ref_logps = ray.get(ref_future)
        return {"pairs": pairs, "texts": texts, "scores": np.asarray(scored[C.REWARD], dtype=np.float64),
                "components": {k: np.asarray(v, dtype=np.float64) for k, v in scored.items()
                               if k.startswith(C.REWARD_PREFIX)},
                "ref_logps": ref_logps, "finish": [o.finish_reason for o in outs],
                "time/generate_s": t_gen, "time/rollout_s": time.perf_counter() - t0,
                "rollout/weights_version": version}

    def update_weights(self, weights: dict) -> None:
        """The policy after an update, into the running engines in place (no restart; see Generator)."""
        self.generator.update_weights(weights)

    def shutdown(self) -> None:
        # lazy: ray (alol_ray.baselines.ppo imports without it)
        import ray

        self.generator.shutdown()
        ray.kill(self.reference)


def _pad(rows: list[np.ndarray], width: int):
    out = torch.zeros(len(rows), width)
    for i, r in enumerate(rows):
        out[i, :len(r)] = torch.as_tensor(np.asarray(r, dtype=np.float32))
    return out


# ------------------------------------------------------------------------------------- the loop


@dataclass
class PPOHooks(Hooks):
    """PPO's part of the worker-loop skeleton (``alol_ray.train.worker_loop``): one step is one iteration
    (rollout, advantages, PPO epochs, KL controller, weights to the engines). Shipped to the workers with
    the run's ``LoopSpec`` (see ``loop_spec``)."""

    cfg: Any  # RunConfig (ppo, model, generation, reward, serve, scoring sections)
    train: Any  # TrainConfig of the update (``ppo_train_config``)
    policy_path: str  # starting weights
    ref_path: str  # frozen pi_ref (KL penalty)
    train_prompts: list[str]
    val_prompts: list[str] = field(default_factory=list)
    reward_stats: dict = field(default_factory=dict)  # standardised reward components' (mean, std)

    def build(self, w: Worker, model_dir):
        # lazy: safetensors, alol_ray.train.policy (transformers) (alol_ray.baselines.ppo imports without them)
        from safetensors.torch import load_file

        from alol_ray.train.policy import build_policy

        policy, tokenizer = build_policy(self.cfg.model, self.train, self.policy_path, model_dir, w.device)
        policy.config.use_cache = False
        head = None
        if model_dir:  # the value head is saved beside the checkpoint's model/ (save_extra)
            head = _value_head_module(policy.config.hidden_size)
            head.load_state_dict(load_file(os.path.join(os.path.dirname(model_dir), VALUE_HEAD_FILE)))
        return PolicyWithValueHead.build(policy, head), tokenizer

    def make_optimizer(self, w: Worker, trainable):
        # lazy: alol_ray.train.policy (transformers) (alol_ray.baselines.ppo imports without it)
        from alol_ray.train.policy import make_optimizer

        return make_optimizer(trainable, self.train, lr=self.cfg.ppo.lr)

    def restore(self, w: Worker, state: dict, folder: str) -> None:
        self.saved = state.get(PPO_STATE_KEY, {})  # the KL coefficient and the score moments

    def start(self, w: Worker) -> None:
        pc, saved = self.cfg.ppo, getattr(self, "saved", {})
        self.kl_ctl = (P.AdaptiveKLController(pc.init_kl_coef, pc.target_kl, pc.kl_horizon) if pc.adaptive_kl
                       else P.FixedKLController(pc.init_kl_coef))
        self.kl_ctl.value = saved.get("kl_coef", self.kl_ctl.value)
        self.moments = P.RunningMoments(**saved["score_moments"]) if saved.get("score_moments") else P.RunningMoments()
        self.inner = w.model.module if hasattr(w.model, "module") else w.model  # inside DDP
        self.reduce = all_reduce_sum(w.world)
        tok = w.tokenizer
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        self.mirror = None  # FSDP: rank 0's whole copy of the policy that the gathered weights are loaded into
        weights = self.current_weights(w)
        self.rollouts = _Rollouts(self, weights) if w.lead else None
        self.reward_fn = None
        if w.lead and pc.eval_every > 0 and self.val_prompts:
            self.reward_fn = run_scorer(self.cfg.reward, stats=self.reward_stats).rewards

    def current_weights(self, w: Worker) -> Optional[dict]:
        """The policy's weights for the rollout engines, on rank 0 (None elsewhere). Called on every rank: under
        FSDP (``train.strategy: fsdp``) every rank sends its shards and rank 0 loads the whole weights into a
        copy of the policy on its CPU (``self.mirror``, built once; with LoRA, merged from there as under DDP).
        That copy costs rank 0 one policy's weights in CPU memory, as the engines' own copy does."""
        if w.strategy.name != "fsdp":
            return rollout_weights(self.inner.policy) if w.lead else None
        # lazy: torch.distributed.checkpoint, alol_ray.train.policy (alol_ray.baselines.ppo imports without them)
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        from alol_ray.train.policy import build_policy

        full = get_model_state_dict(w.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if not w.lead:
            return None
        if self.mirror is None:
            self.mirror = build_policy(self.cfg.model, self.train, self.policy_path, None, torch.device("cpu"))[0]
        missing, unexpected = self.mirror.load_state_dict(policy_entries(full), strict=False)
        tied = {name for name, _ in self.mirror.named_parameters(remove_duplicate=False)} - \
            {name for name, _ in self.mirror.named_parameters()}  # a tied weight's second name may be left out
        if unexpected or set(missing) - tied:
            raise RuntimeError(f"ppo under fsdp: the gathered weights do not fit the policy: missing "
                               f"{sorted(set(missing) - tied)[:5]}, unexpected {sorted(unexpected)[:5]}")
        return rollout_weights(self.mirror)

    def evaluate(self, w: Worker, step: int):
        if self.reward_fn is None:
            return None
        cfg = self.cfg
        val, _ = evaluate_policy(self.inner.policy, w.tokenizer, self.val_prompts, self.reward_fn,
                                 max_prompt_tokens=cfg.model.max_prompt_tokens,
                                 max_new_tokens=cfg.generation.max_new_tokens, stop=list(cfg.generation.stop),
                                 batch_size=cfg.generation.batch_size, fmt=prompt_format(cfg))
        self.inner.policy.config.use_cache = False
        return val

    def state(self, w: Worker) -> dict:
        return {PPO_STATE_KEY: {"kl_coef": self.kl_ctl.value, "score_moments": self.moments.state_dict()}}

    def save_extra(self, w: Worker, folder: str) -> None:
        # lazy: safetensors (alol_ray.baselines.ppo imports without it)
        from safetensors.torch import save_file

        # Under FSDP every rank is here (writes_on_every_rank) and gathers the head's shards; rank 0 writes.
        head = full_tensors(self.inner.value_head.state_dict())
        if w.lead:
            save_file({k: v.contiguous() for k, v in head.items()}, os.path.join(folder, VALUE_HEAD_FILE))

    def train_step(self, w: Worker, it: int, lr: float) -> dict[str, float]:
        pc, tc, device, reduce, kl_ctl = self.cfg.ppo, self.train, w.device, self.reduce, self.kl_ctl

        # 1. Rollout (rank 0): sample prompts, generate, score, reference log-probs; shared with all workers.
        rollout = None
        if w.lead:
            prompts = sample_prompts(self.train_prompts, pc.rollout_size, tc.seed, it)
            rollout = self.rollouts.collect(prompts, w.tokenizer, iteration=it)
            raw = torch.as_tensor(rollout["scores"], dtype=torch.float32)
            rollout["scaled"] = P.scale_scores(raw, self.moments if pc.score_scaling else None, pc.score_norm).tolist()
        rollout = broadcast(rollout, w.rank, w.world)
        per_worker = pc.rollout_size // w.world
        mine = slice(w.rank * per_worker, (w.rank + 1) * per_worker)
        batch = collate(rollout["pairs"][mine], self.pad_id).to(device)
        mask = batch.response_mask
        ref_logps = _pad(rollout["ref_logps"][mine], mask.shape[1]).to(device)
        scores = torch.as_tensor(rollout["scaled"][mine], dtype=torch.float32, device=device)

        # 2. pi_old log-probs and values of this worker's shard; KL-penalised rewards; GAE; whitening.
        w.model.eval()
        with torch.no_grad(), w.strategy.autocast(device):
            old_logps, old_values, entropy = w.model(batch, with_entropy=True)
        w.model.train()
        rewards, kl = P.kl_penalty_rewards(old_logps, ref_logps, mask, scores, kl_ctl.value)
        advantages, returns = P.gae(rewards, old_values, mask, pc.gamma, pc.lam)
        if pc.whiten:
            advantages = P.masked_whiten(advantages, mask, all_reduce=reduce)

        # 3. PPO epochs over mini-batches of this shard (DDP averages the gradients over workers).
        stats = ppo_epochs(w.model, w.optimizer, w.trainable, batch, old_logps, old_values, advantages, returns, pc,
                           grad_clip=tc.grad_clip, mini_batch=pc.mini_batch_size // w.world,
                           seed=(tc.seed, it, w.rank), strategy=w.strategy)

        # 4. KL controller on the rollout's mean sequence KL (all workers); new weights to the Generator.
        seq_kl = torch.stack([kl.sum(), torch.tensor(float(kl.shape[0]), device=kl.device)])
        seq_kl = reduce(seq_kl) if reduce else seq_kl
        mean_kl = float(seq_kl[0] / seq_kl[1])
        kl_coef = kl_ctl.value
        kl_ctl.update(mean_kl, pc.rollout_size)
        stats.update({
            "objective/kl": mean_kl, "objective/kl_coef": kl_coef,
            "objective/entropy": float(P.masked_mean(entropy, mask, reduce)),
            "returns/mean": float(P.masked_mean(returns, mask, reduce)),
            "values/mean": float(P.masked_mean(old_values, mask, reduce)),
        })
        stats = mean_over_workers(stats, w.world, device)
        t_sync = time.perf_counter()
        weights = self.current_weights(w)  # every rank: under FSDP a collective
        if w.lead:
            self.rollouts.update_weights(weights)
            lengths = [len(r) for _, r in rollout["pairs"]]
            stats.update({
                "reward/mean": float(np.mean(rollout["scores"])),
                "reward/std": float(np.std(rollout["scores"])),
                "reward/scaled_mean": float(np.mean(rollout["scaled"])),
                **{k: float(np.mean(v)) for k, v in rollout["components"].items()},  # reward/<component>
                "response/tokens_mean": float(np.mean(lengths)),
                "response/eos_frac": float(np.mean([f == "eos" for f in rollout["finish"]])),
                "time/generate_s": rollout["time/generate_s"], "time/rollout_s": rollout["time/rollout_s"],
                "rollout/weights_version": rollout["rollout/weights_version"],
                "time/sync_s": time.perf_counter() - t_sync,
            })
        return stats

    def close(self, w: Worker) -> None:
        if getattr(self, "rollouts", None) is not None:
            self.rollouts.shutdown()


def loop_spec(cfg, tc, *, stop_at_step: int = 0, run_dir: Optional[str] = None, track=None) -> LoopSpec:
    """The skeleton's settings of a PPO run: ppo.* cadence and learning rate (constant), train.* resources
    (``tc``: ``ppo_train_config``)."""
    pc = cfg.ppo
    return LoopSpec(name=METHOD, total_steps=pc.iterations, schedule=LRSchedule(lr=pc.lr), parallel=tc,
                    eval_every=pc.eval_every, eval_at_start=pc.eval_at_start, checkpoint_every=pc.checkpoint_every,
                    log_every=tc.log_every, seed=tc.seed, cpus_per_worker=tc.cpus_per_worker,
                    load_in_4bit=cfg.model.lora.load_in_4bit, stop_at_step=stop_at_step, run_dir=run_dir,
                    tracking=track, unit="iteration")


def ppo_epochs(model, optimizer, trainable, batch, old_logps, old_values, advantages, returns, pc, *,
               grad_clip: float, mini_batch: int, seed: tuple, strategy) -> dict[str, float]:
    """``pc.ppo_epochs`` shuffled passes over one rollout shard in mini-batches of ``mini_batch`` rollouts, with
    one optimizer step per ``pc.grad_accum`` mini-batches (their gradients averaged, as TRL's gradient
    accumulation does); returns the mean of every mini-batch's metrics and ``ppo/optimizer_steps``. The
    parallel ``strategy`` (alol_ray.train.strategy) gives the gradient-sync and autocast contexts and clips."""
    n = len(batch)
    sums: dict[str, float] = {}
    minis = steps = 0
    max_norm = grad_clip if grad_clip > 0 else float("inf")
    for epoch in range(pc.ppo_epochs):
        order = np.random.default_rng([*seed, 11, epoch]).permutation(n)
        starts = list(range(0, n, mini_batch))
        for k, start in enumerate(starts):
            idx = torch.as_tensor(order[start:start + mini_batch], device=batch.input_ids.device)
            sub = _select(batch, idx)
            rows = (idx, slice(0, sub.response_mask.shape[1]))  # the mini-batch is trimmed to its longest response
            step_now = (k + 1) % pc.grad_accum == 0 or k == len(starts) - 1
            # Gradients are synchronised once per optimizer step, on its last mini-batch.
            with strategy.accumulate(model, step_now):
                with strategy.autocast(batch.input_ids.device):
                    logps, values, _ = model(sub)
                loss, metrics = P.ppo_loss(logps, old_logps[rows], values, old_values[rows], advantages[rows],
                                           returns[rows], sub.response_mask, cliprange=pc.cliprange,
                                           cliprange_value=pc.cliprange_value, vf_coef=pc.vf_coef)
                (loss / pc.grad_accum).backward()
            if step_now:
                metrics["train/grad_norm"] = float(strategy.clip_grad_norm(model, trainable, max_norm))
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                steps += 1
            for key, value in metrics.items():
                sums[key] = sums.get(key, 0.0) + value
            minis += 1
    out = {k: v / (steps if k == "train/grad_norm" else minis) for k, v in sums.items()}
    out["ppo/optimizer_steps"] = float(steps)
    return out


def _select(batch, idx):
    """Rows ``idx`` of a PolicyBatch, trimmed to the longest selected sequence and response."""
    seq = int((batch.prompt_lengths[idx] + batch.response_lengths[idx]).max())
    resp = int(batch.response_lengths[idx].max())
    return PolicyBatch(input_ids=batch.input_ids[idx, :seq], attention_mask=batch.attention_mask[idx, :seq],
                       response_index=batch.response_index[idx, :resp], response_mask=batch.response_mask[idx, :resp],
                       prompt_lengths=batch.prompt_lengths[idx], response_lengths=batch.response_lengths[idx])


# ------------------------------------------------------------------------------------------ driver


def check_config(cfg, tc) -> None:
    pc = cfg.ppo
    world = max(1, tc.num_workers)
    if pc.rollout_size % world or pc.mini_batch_size % world:
        raise ConfigError(f"ppo.rollout_size ({pc.rollout_size}) and ppo.mini_batch_size ({pc.mini_batch_size}) "
                          f"must be divisible by train.num_workers ({world})")
    if cfg.model.lora.load_in_4bit:
        raise ConfigError("ppo does not support model.lora.load_in_4bit: the Generator needs merged weights each "
                          "iteration; use LoRA without 4-bit or full fine-tuning")


def fit_ppo(cfg, *, train_cfg, rows: str, policy_path: str, ref_path: str, work_dir: str, stop_at_step: int = 0,
            reward_stats: Optional[dict] = None):
    """PPO's training stage (the ``fit_online`` of the registered method): prompts from the canonical
    ``rows`` (train split to roll out on, val split to select by), one Ray Train job in ``work_dir`` (the
    layout of the offline trainer's), the best checkpoint (val reward) exported to ``work_dir``/best.

    Returns the offline trainer's ``TrainOutcome`` (or ``Unfinished`` after ``stop_at_step``).
    """
    # lazy: pandas, alol_ray.train.trainer (transformers) (alol_ray.baselines.ppo imports without them)
    import pandas as pd

    from alol_ray.train.trainer import (
        TrainOutcome, build_trainer, export_best, fetch_logs, finish, run_folder, val_prompts)

    tc, pc = ppo_train_config(cfg, train_cfg), cfg.ppo
    check_config(cfg, tc)
    frame = pd.read_parquet(rows, columns=[C.PROMPT, C.SPLIT])
    prompts, val = train_prompts_of(frame), val_prompts(frame, tc.eval_prompts)
    if not prompts:
        raise UserError(f"{rows}: ppo needs train prompts (rows with split 'train'), and there are none")
    if pc.eval_every > 0 and not val:
        raise UserError(f"{rows}: ppo.eval_every > 0 needs val prompts (rows with split 'val'), and there are none")
    log.info(f"[train] ppo: {pc.iterations} iterations x {pc.rollout_size} rollouts ({pc.ppo_epochs} epochs of "
             f"mini-batch {pc.mini_batch_size}) on {tc.num_workers} worker(s), {len(prompts)} train prompts")
    ray = init_ray(cfg.ray)
    check_resources(cfg, tc, ray.cluster_resources(), local=is_local_ray(cfg.ray))
    # Paths every node can open (a bucket run's folders by their URIs; see alol_ray.storage).
    track = tracking.prepare(cfg, tracking.job_name(work_dir), work_dir=work_dir, train_cfg=tc)
    loop = loop_spec(cfg, tc, stop_at_step=stop_at_step, run_dir=run_folder(work_dir), track=track)
    hooks = PPOHooks(cfg=cfg, train=tc, policy_path=storage.shared(policy_path), ref_path=storage.shared(ref_path),
                     train_prompts=prompts, val_prompts=val, reward_stats=dict(reward_stats or {}))
    result = ray_compat.fit(build_trainer(loop, hooks, tc, work_dir))
    fetch_logs(work_dir)
    state, metrics, path = export_best(result, work_dir, policy_path, cfg.model)
    outcome = TrainOutcome(run_dir=work_dir, export_dir=os.path.join(work_dir, "best"), total_steps=pc.iterations,
                           best_step=state["step"], best_val_reward=metrics.get("val/reward"), positive_fraction=None,
                           checkpoint_path=path, last_metrics=dict(result.metrics or {}))
    return finish(outcome, work_dir, stop_at_step)


def train_prompts_of(rows) -> list[str]:
    """Distinct train prompts, in table order."""
    return rows.loc[rows[C.SPLIT] == "train", C.PROMPT].drop_duplicates().tolist()


register(Method(name=METHOD, online=True, fit_online=fit_ppo))
