"""Mutation-testing bench: how many deliberately wrong versions of the pure modules do their unit tests catch?

    pip install -e '.[dev,bench]'
    python bench/mutation.py                    # every module (one mutmut run per group below)
    python bench/mutation.py --group losses     # one group
    python bench/mutation.py --keep             # keep the temporary folders (mutmut results/show work there)
    python bench/mutation.py --group metrics --functions 'alol_ray.evaluation.metrics.x_win_outcomes*'   # one function

mutmut (>= 3.8) rewrites each function of a module into many mutants (an operator, a constant, a
comparison or an argument changed) and runs the tests that reach that function against each one; a mutant
is *killed* when a test fails. Each group below is mutated in a temporary folder holding a copy of the
three packages and of the group's own test files only (no Ray, no other test reaches the module), so the
repository is never touched. The project is imported from that copy, never from the installed one:
mutmut's forced-fail check (every test must fail when the mutant under test is "fail") proves it.

mutmut runs each mutant in a child forked from a server that has imported torch, numpy, transformers and
pytest only, so every child imports the project afresh with its mutant active: a mutant in code that runs
at import time (the loss registry's decorator) is tested too. One child at a time (``--max-children 1``).

Killed share = (killed + timeout) / (mutants - excluded equivalents). A mutant counts as killed only when
mutmut reports it killed (a test failed) or timed out. Equivalent mutants (no input can tell them from the
original) are excluded one by one in EQUIVALENT below, each with its reason; a mutant listed there that a
test does kill is reported as a stale exclusion. Goals: >= 90% for losses.py and the baselines' losses,
>= 80% for the other modules.

The last line printed is the killed share per module, e.g. ``killed: losses.py 93.1% (135/145), ...``.

Measured (2026-12-02, mutmut 3.8.1, torch CPU, one child; 2 CPU cores shared with other heavy jobs), one
run of ``python bench/mutation.py``: wall time 1540 s (losses 194 s, baselines 775 s, samplers 155 s,
metrics 163 s, tokenization 253 s).

    module                       killed/total  excluded  share    goal
    alol_ray/losses.py              226/226       11     100.0%   90%
    alol_ray/baselines/dpo.py        73/73         0     100.0%   90%
    alol_ray/baselines/pro.py       120/124        7      96.8%   90%
    alol_ray/baselines/gold.py      151/151        7     100.0%   90%
    alol_ray/baselines/ppo_loss.py  421/421        6     100.0%   90%
    alol_ray/train/samplers.py      220/220        6     100.0%   80%
    alol_ray/evaluation/metrics.py  218/218        6     100.0%   80%
    alol_ray/tokenization.py        274/274       16     100.0%   80%

The 4 survivors (pro.py) build ``rank_loss`` and ``log_eps`` without ``device=lp.device``: on a CPU-only
machine every tensor is on the CPU anyway, so only a run on a second device (CUDA) can tell them apart.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import fnmatch
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import dataclasses
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("alol_ray",)  # its baselines/ and evaluation/ are symlinks: copied as the folders they point at
# Imported once by mutmut's fork server, before it forks a child per mutant; the project is NOT in this list.
# torch.testing.assert_close imports torch.distributed.tensor (and sympy) on first use: seconds per child.
PRELOAD = ("numpy", "torch", "torch.testing", "torch.distributed.tensor", "transformers",
           "transformers.models.gpt2.modeling_gpt2", "transformers.tokenization_utils_fast", "tokenizers",
           "tokenizers.processors", "pytest", "pytest_timeout")


@dataclass(frozen=True)
class Group:
    """Modules mutated together and the unit tests run against them. ``functions``: mutmut's mutant-name globs
    (``alol_ray.evaluation.report.x_hierarchical_ci*``) when only some functions of the modules are this group's
    subject (empty: every function); ``preload``: modules the group's tests import, for the fork server."""

    name: str
    modules: tuple[str, ...]
    tests: tuple[str, ...]
    functions: tuple[str, ...] = ()
    preload: tuple[str, ...] = ()
    # mutmut's per-mutant limit is (test time + this) x 30 x 2 CPU seconds: generous where the tests load torch
    # models, while a mutant that spins (a read loop whose end marker changed) burns all of it.
    timeout_constant: float = 10.0


def _functions(module: str, *names: str) -> tuple[str, ...]:
    """mutmut's mutant-name globs for top-level functions (``name``) and methods (``Class.method``) of a module."""
    dotted = module[:-3].replace("/", ".")
    return tuple(f"{dotted}.x{'ǁ' + n.replace('.', 'ǁ') if '.' in n else '_' + n}__mutmut_*" for n in names)


_TABLES = ("pandas", "pyarrow", "pyarrow.parquet", "pyarrow.fs")
GROUPS = (
    Group("losses", ("alol_ray/losses.py",), ("tests/test_losses.py",)),
    Group("baselines", ("alol_ray/baselines/dpo.py", "alol_ray/baselines/pro.py", "alol_ray/baselines/gold.py",
                        "alol_ray/baselines/ppo_loss.py"),
          ("tests/test_baseline_losses.py", "tests/test_ppo_loss.py")),
    Group("samplers", ("alol_ray/train/samplers.py",), ("tests/test_samplers.py",)),
    Group("metrics", ("alol_ray/evaluation/metrics.py",), ("tests/test_metrics.py",)),
    Group("tokenization", ("alol_ray/tokenization.py",), ("tests/test_tokenization.py",)),
    # Stage publishing, recovery and manifests; bucket sync; the run lock; content fingerprints. Of storage.py, the
    # bucket sync (the rest of it, reaching a bucket and placing folders on Ray nodes, is tested against a real S3
    # server and Ray cluster in test_bucket_storage.py / test_cluster_storage.py, too slow to run per mutant).
    Group("integrity", ("alol_ray/stage.py", "alol_ray/storage.py", "alol_ray/runlock.py", "alol_ray/hashing.py"),
          ("tests/test_integrity_guards.py",), preload=_TABLES + ("huggingface_hub",), timeout_constant=2.0,
          functions=("alol_ray.stage.*", "alol_ray.runlock.*", "alol_ray.hashing.*")
          + _functions("alol_ray/storage.py", "join", "local_cache_dir", "_listing", "_stale", "_push_order",
                       "_in_checkpoints", "sync_dir", "_align_mtime", "pull", "push")),
    # Paired and hierarchical intervals, the pairing by prompt, win rates, the evaluation caches' keys.
    Group("statistics", ("alol_ray/evaluation/report.py", "alol_ray/evaluation/metrics.py",
                         "alol_ray/evaluation/eval_job.py"),
          ("tests/test_statistics_guards.py", "tests/test_report.py", "tests/test_metrics.py"),
          functions=_functions("alol_ray/evaluation/report.py", "hierarchical_ci", "paired_hierarchical_ci", "verdict",
                               "_per_prompt", "by_method", "paired_rows", "with_paired_columns")
          + _functions("alol_ray/evaluation/metrics.py", "win_outcomes", "bootstrap_ci")
          + _functions("alol_ray/evaluation/eval_job.py", "_marker_path", "read_cache", "extend_cache",
                       "reference_fingerprint", "reference_replies", "rewards_cache_path", "reference_rewards"),
          preload=_TABLES + ("matplotlib", "matplotlib.pyplot", "yaml", "omegaconf")),
)
GOALS = {"alol_ray/losses.py": 0.90, "alol_ray/baselines/dpo.py": 0.90, "alol_ray/baselines/pro.py": 0.90,
         "alol_ray/baselines/gold.py": 0.90, "alol_ray/baselines/ppo_loss.py": 0.90, "alol_ray/train/samplers.py": 0.80,
         "alol_ray/evaluation/metrics.py": 0.80,
         "alol_ray/tokenization.py": 0.80, "alol_ray/stage.py": 0.80, "alol_ray/storage.py": 0.80,
         "alol_ray/runlock.py": 0.80, "alol_ray/hashing.py": 0.80, "alol_ray/evaluation/report.py": 0.80,
         "alol_ray/evaluation/eval_job.py": 0.80}


@dataclass(frozen=True)
class Equivalent:
    """A mutant that cannot change behaviour: where it is, the line it changes (before -> after, stripped of
    indentation, as ``mutmut show`` prints it) and why no input can tell it apart."""

    module: str
    function: str
    before: str
    after: str
    reason: str


_L = "alol_ray/losses.py"
_PPO = "alol_ray/baselines/ppo_loss.py"
_PRO = "alol_ray/baselines/pro.py"
_GOLD = "alol_ray/baselines/gold.py"
_T = "alol_ray/tokenization.py"
_S = "alol_ray/train/samplers.py"
_M = "alol_ray/evaluation/metrics.py"
_REP = "alol_ray/evaluation/report.py"
_PH_AS = "a, b = np.atleast_2d(np.asarray(a, dtype=np.float64)), np.atleast_2d(np.asarray(b, dtype=np.float64))"
_PH_NAN = 'return float("nan"), float("nan"), float("nan")'
_PH_POINT = "point = float((a.mean(axis=0) - b.mean(axis=0)).mean())"
_PH_TAKE = ("stats.append(np.take_along_axis(diff, rng.integers(0, n_prompts, size=(n, n_prompts)), axis=1)"
            ".mean(axis=1))")
_PP = "frames = [pd.read_parquet(r.eval_path, columns=[C.PROMPT_ID, column]).drop_duplicates(C.PROMPT_ID)"
_HC_DRAW = ("stats[i] = np.mean([groups[k][rng.integers(0, len(groups[k]), size=len(groups[k]))].mean() "
            "for k in picked])")
_HC_AS = "groups = [np.asarray(g, dtype=np.float64) for g in groups if len(g)]"
_RF = ('return fingerprint("ref-replies-v1", model_identity(ref_path), cfg.generation, '
       'cfg.model.max_prompt_tokens)')
_EC = ("cached = pd.concat([cached, fresh], ignore_index=True) if len(cached) else "
       "fresh.reset_index(drop=True)")
_EVAL = "alol_ray/evaluation/eval_job.py"
_RR_FP = 'fp = fingerprint("ref-rewards-v1", cfg.reward, stats or {})'
_RF_FP = 'return fingerprint("ref-replies-v1", model_identity(ref_path), generation_identity(cfg.generation),'
_RR_EMPTY = ('cached = pd.DataFrame({**{k: pd.Series(dtype=want[k].dtype) for k in key}, '
             'C.REWARD: pd.Series(dtype=float)})')
_RR_MERGE = 'rewards = want.merge(cached, on=key, how="left")[C.REWARD].to_numpy(dtype=float, copy=True)'
_RR_FRESH = 'fresh = np.full(len(todo), np.nan) if known is None else np.asarray(known, dtype=float)[missing]'
_LOCK = "alol_ray/runlock.py"
_STAGE = "alol_ray/stage.py"
_BEAT = 'self._beat = threading.Thread(target=self._heartbeat, name="alol-run-lock", daemon=True)'
_H = "alol_ray/hashing.py"
_KW = 'if kind and value and value not in f.metadata.get("keywords", ()):'
_SORT = 'return {str(k): plain(v) for k, v in sorted(x.items(), key=lambda kv: str(kv[0]))}'
_BLOB = 'blob = json.dumps([plain(p) for p in parts], sort_keys=True, default=str)'
_NAN = 'float("NAN") is nan too (float() reads "nan" in any case)'
_INT = "torch infers int64 from python ints, the dtype asked for"
_GOLD_W = "weight = torch.exp(token_logps.clamp(max=0.0)).clamp(min=u, max=1.0)"
EQUIVALENT: tuple[Equivalent, ...] = (
    Equivalent(_L, "_finish", 'metrics = {"loss/policy": loss.item(), "nll/seq_mean": (-lp.sum(-1)).mean().item()}',
               'metrics = {"loss/policy": loss.item(), "nll/seq_mean": (-lp.sum(+1)).mean().item()}',
               "lp is [B, T] (_check refuses anything else), so dim +1 is dim -1"),
    Equivalent(_L, "_finish", 'metrics["kl/mean"] = (lp.sum(-1) - ref.sum(-1)).mean().item()',
               'metrics["kl/mean"] = (lp.sum(+1) - ref.sum(-1)).mean().item()',
               "lp is [B, T] (_check refuses anything else), so dim +1 is dim -1"),
    Equivalent(_L, "_finish", 'metrics["kl/mean"] = (lp.sum(-1) - ref.sum(-1)).mean().item()',
               'metrics["kl/mean"] = (lp.sum(-1) - ref.sum(+1)).mean().item()',
               "ref has lp's [B, T] shape (_check), so dim +1 is dim -1"),
    Equivalent(_L, "sequence_logps", "return masked_logps(logps, mask).sum(-1)",
               "return masked_logps(logps, mask).sum(+1)",
               "its input is [B, T] (docstring; DPO's only caller passes [B, T]), where dim +1 is dim -1"),
    Equivalent(_L, "get_loss", "close = difflib.get_close_matches(str(name), LOSSES, n=1)",
               "close = difflib.get_close_matches(str(name), LOSSES, )",
               "get_close_matches lists the best match first for any n and only close[0] is used"),
    Equivalent(_L, "get_loss", "close = difflib.get_close_matches(str(name), LOSSES, n=1)",
               "close = difflib.get_close_matches(str(name), LOSSES, n=2)",
               "get_close_matches lists the best match first for any n and only close[0] is used"),
    Equivalent(_L, "gold_token_weight", "token_logps = torch.where(mask > 0, token_logps, torch.zeros_like(token_logps))",
               "token_logps = torch.where(mask >= 0, token_logps, torch.zeros_like(token_logps))",
               "the second where sets every masked weight to 0 anyway, and the weight is detached (no NaN grad)"),
    Equivalent(_L, "gold_token_weight", _GOLD_W, "weight = torch.exp(token_logps.clamp(max=0.0)).clamp(min=u, max=None)",
               "exp(min(lp, 0)) <= 1 and, for u <= 1 (LossParams checks gold_u; gold_loss's u is unchecked), so is the floor"),
    Equivalent(_L, "gold_token_weight", _GOLD_W, "weight = torch.exp(token_logps.clamp(max=0.0)).clamp(min=u, )",
               "exp(min(lp, 0)) <= 1 and, for u <= 1 (LossParams checks gold_u; gold_loss's u is unchecked), so is the floor"),
    Equivalent(_L, "gold_token_weight", _GOLD_W, "weight = torch.exp(token_logps.clamp(max=1.0)).clamp(min=u, max=1.0)",
               "a log-prob in (0, 1] gives exp > 1, which the outer clamp(max=1) brings back to 1, as with max=0.0"),
    Equivalent(_L, "gold_token_weight", _GOLD_W, "weight = torch.exp(token_logps.clamp(max=0.0)).clamp(min=u, max=2.0)",
               "exp(min(lp, 0)) <= 1 and, for u <= 1, so is the floor: a cap at 2 never binds, as the cap at 1"),
    Equivalent(_PPO, "gae", "real = (mask > 0).to(values.dtype)", "real = (mask > 0).to(None)",
               "to(None) keeps the bool mask, and multiplying values/rewards by a bool mask gives the same float"),
    Equivalent(_PPO, "masked_moments", "real = (mask > 0).to(x.dtype)", "real = (mask > 0).to(None)",
               "the bool mask's count is promoted to x's dtype by torch.stack, as .to(x.dtype) would make it"),
    Equivalent(_PPO, "kl_penalty_rewards", "lengths = (mask > 0).sum(-1)", "lengths = (mask > 0).sum(+1)",
               "mask is [B, T] (scatter_add along dim 1 needs it), so dim +1 is dim -1"),    Equivalent(_T, 'collate', 'input_ids = torch.full((batch, seq_len), pad_id, dtype=torch.long)',
               'input_ids = torch.full((batch, seq_len), pad_id, dtype=None)',
               "the pad id is a python int: " + _INT),
    Equivalent(_T, 'collate', 'input_ids = torch.full((batch, seq_len), pad_id, dtype=torch.long)',
               'input_ids = torch.full((batch, seq_len), pad_id, )',
               "the pad id is a python int: " + _INT),
    Equivalent(_T, 'collate', 'input_ids[b, : n_p + n_r] = torch.tensor(list(prompt_ids) + list(response_ids), dtype=torch.long)',
               'input_ids[b, : n_p + n_r] = torch.tensor(list(prompt_ids) + list(response_ids), dtype=None)',
               "token ids are python ints: " + _INT),
    Equivalent(_T, 'collate', 'input_ids[b, : n_p + n_r] = torch.tensor(list(prompt_ids) + list(response_ids), dtype=torch.long)',
               'input_ids[b, : n_p + n_r] = torch.tensor(list(prompt_ids) + list(response_ids), )',
               "token ids are python ints: " + _INT),
    Equivalent(_T, 'collate', 'prompt_lengths=torch.tensor([len(p) for p, _ in pairs], dtype=torch.long),',
               'prompt_lengths=torch.tensor([len(p) for p, _ in pairs], dtype=None),',
               "lengths are python ints: " + _INT),
    Equivalent(_T, 'collate', 'prompt_lengths=torch.tensor([len(p) for p, _ in pairs], dtype=torch.long),',
               'prompt_lengths=torch.tensor([len(p) for p, _ in pairs], ),',
               "lengths are python ints: " + _INT),
    Equivalent(_T, 'collate', 'response_lengths=torch.tensor([len(r) for _, r in pairs], dtype=torch.long),',
               'response_lengths=torch.tensor([len(r) for _, r in pairs], dtype=None),',
               "lengths are python ints: " + _INT),
    Equivalent(_T, 'collate', 'response_lengths=torch.tensor([len(r) for _, r in pairs], dtype=torch.long),',
               'response_lengths=torch.tensor([len(r) for _, r in pairs], ),',
               "lengths are python ints: " + _INT),
    Equivalent(_T, 'prompt_batch', 'input_ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)',
               'input_ids = torch.full((len(encoded), width), pad_id, dtype=None)',
               "the pad id is a python int: " + _INT),
    Equivalent(_T, 'prompt_batch', 'input_ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)',
               'input_ids = torch.full((len(encoded), width), pad_id, )',
               "the pad id is a python int: " + _INT),
    Equivalent(_T, 'prompt_batch', 'input_ids[b, : len(ids)] = torch.tensor(ids, dtype=torch.long)',
               'input_ids[b, : len(ids)] = torch.tensor(ids, dtype=None)',
               "token ids are python ints: " + _INT),
    Equivalent(_T, 'prompt_batch', 'input_ids[b, : len(ids)] = torch.tensor(ids, dtype=torch.long)',
               'input_ids[b, : len(ids)] = torch.tensor(ids, )',
               "token ids are python ints: " + _INT),
    Equivalent(_T, 'response_token_logps', 'logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits  # [B, L, V]',
               'logits = model(input_ids=batch.input_ids, attention_mask=None).logits  # [B, L, V]',
               "collate right-pads: under causal attention no real token sees a pad, and only real positions are read"),
    Equivalent(_T, 'response_token_logps', 'logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits  # [B, L, V]',
               'logits = model(input_ids=batch.input_ids, ).logits  # [B, L, V]',
               "collate right-pads: under causal attention no real token sees a pad, and only real positions are read"),
    Equivalent(_T, 'special_prefix', 'for start in range(len(full) - len(plain) + 1):',
               'for start in range(len(full) + len(plain) + 1):',
               "the extra starts leave windows shorter than plain, which never match"),
    Equivalent(_T, 'special_prefix', 'for start in range(len(full) - len(plain) + 1):',
               'for start in range(len(full) - len(plain) + 2):',
               "the extra starts leave windows shorter than plain, which never match"),
    Equivalent(_S, 'make_sampler', 'return np.asarray(column, dtype=np.float64)',
               'return np.asarray(column, dtype=None)',
               'every column goes through np.clip or > 0 (same values for ints) and Sampler stores its weights as float64'),
    Equivalent(_S, 'make_sampler', 'return np.asarray(column, dtype=np.float64)',
               'return np.asarray(column, )',
               'every column goes through np.clip or > 0 (same values for ints) and Sampler stores its weights as float64'),
    Equivalent(_S, 'make_sampler', 'weights = (need(advantage, "advantage") > 0).astype(np.float64)',
               'weights = (need(advantage, "advantage") > 0).astype(None)',
               'astype(None) is astype(float64)'),
    Equivalent(_S, 'positive_fraction', 'advantage = np.asarray(advantage, dtype=np.float64)',
               'advantage = np.asarray(advantage, dtype=None)',
               '> 0 and mean() give the same fraction for int, bool and float inputs'),
    Equivalent(_S, 'positive_fraction', 'advantage = np.asarray(advantage, dtype=np.float64)',
               'advantage = np.asarray(advantage, )',
               '> 0 and mean() give the same fraction for int, bool and float inputs'),
    Equivalent(_S, 'Sampler.global_batch', 'return rng.choice(self.n_units, size=self.batch_size, replace=True, p=self._probs)',
               'return rng.choice(self.n_units, size=self.batch_size, p=self._probs)',
               "replace=True is Generator.choice's default"),
    Equivalent(_M, 'bootstrap_ci', 'return float("nan"), float("nan")',
               'return float("NAN"), float("nan")',
               _NAN),
    Equivalent(_M, 'bootstrap_ci', 'return float("nan"), float("nan")',
               'return float("nan"), float("NAN")',
               _NAN),
    Equivalent(_M, 'bootstrap_ci', 'means = x[rng.integers(0, x.size, size=(n_samples, x.size))].mean(axis=1)',
               'means = x[rng.integers(x.size, size=(n_samples, x.size))].mean(axis=1)',
               "Generator.integers(high) is integers(0, high): the same draws"),
    Equivalent(_M, 'summarize', 'metrics[key] = float(values.mean()) if values.size else float("nan")',
               'metrics[key] = float(values.mean()) if values.size else float("NAN")',
               _NAN),
    Equivalent(_M, 'summarize', 'metrics["length/words"] = float(word_counts(responses).mean()) if len(responses) else float("nan")',
               'metrics["length/words"] = float(word_counts(responses).mean()) if len(responses) else float("NAN")',
               _NAN),
    Equivalent(_M, 'summarize', 'metrics["length/tokens"] = float(np.mean(response_tokens)) if len(response_tokens) else float("nan")',
               'metrics["length/tokens"] = float(np.mean(response_tokens)) if len(response_tokens) else float("NAN")',
               _NAN),
    Equivalent(_PPO, 'masked_mean', 'real = (mask > 0).to(x.dtype)',
               'real = (mask > 0).to(None)',
               "the bool mask's count is promoted to x's dtype by torch.stack, as .to(x.dtype) would make it"),
    Equivalent(_PPO, 'policy_loss', '"ppo/clip_frac": float(masked_mean((clipped > unclipped).to(logps.dtype), mask, all_reduce)),',
               '"ppo/clip_frac": float(masked_mean((clipped > unclipped).to(None), mask, all_reduce)),',
               "masked_mean counts the bool flags as ints and divides truly: the same fraction"),
    Equivalent(_PPO, 'value_loss', '"ppo/value_clip_frac": float(masked_mean((clipped_loss > unclipped_loss).to(values.dtype), mask, all_reduce)),',
               '"ppo/value_clip_frac": float(masked_mean((clipped_loss > unclipped_loss).to(None), mask, all_reduce)),',
               "masked_mean counts the bool flags as ints and divides truly: the same fraction"),
    Equivalent(_PRO, 'pro_loss', 'rank_loss = rank_loss + torch.logsumexp(all_logits, dim=-1) - positive_logit.squeeze(-1)',
               'rank_loss = rank_loss + torch.logsumexp(all_logits, dim=-1) - positive_logit.squeeze(+1)',
               "the tensor is 2-D ([B, n - k] or [B, 1]), so dim +1 is dim -1"),
    Equivalent(_PRO, 'pro_loss', 'rank_loss = rank_loss + torch.logsumexp(all_logits, dim=-1) - positive_logit.squeeze(-1)',
               'rank_loss = rank_loss + torch.logsumexp(all_logits, dim=-1) - positive_logit.squeeze(-2)',
               "rank_loss is only ever averaged: the [B, B] broadcast a_i - p_j it makes (B > 1) has the mean of a_i - p_i"),
    Equivalent(_PRO, 'pro_loss', 'rank_loss = rank_loss + torch.logsumexp(all_logits, dim=-1) - positive_logit.squeeze(-1)',
               'rank_loss = rank_loss + torch.logsumexp(all_logits, dim=+1) - positive_logit.squeeze(-1)',
               "the tensor is 2-D ([B, n - k] or [B, 1]), so dim +1 is dim -1"),
    Equivalent(_PRO, 'pro_loss', '"rank/top1_accuracy": (scores.argmax(dim=-1) == 0).float().mean().item(),',
               '"rank/top1_accuracy": (scores.argmax(dim=+1) == 0).float().mean().item(),',
               "scores are [B, n]: dim +1 is dim -1"),
    Equivalent(_PRO, 'pro_loss', 'top_temperature = temperatures.max(dim=-1, keepdim=True).values  # T_k+',
               'top_temperature = temperatures.max(dim=+1, keepdim=True).values  # T_k+',
               "the tensor is 2-D ([B, n - k] or [B, 1]), so dim +1 is dim -1"),
    Equivalent(_PRO, 'pro_loss', 'all_logits = torch.cat([log_eps, positive_logit, negative_logits], dim=-1)',
               'all_logits = torch.cat([log_eps, positive_logit, negative_logits], dim=+1)',
               "the tensor is 2-D ([B, n - k] or [B, 1]), so dim +1 is dim -1"),
    Equivalent(_PRO, 'pro_loss', 'scores = seq_logps / lengths.to(lp.dtype)  # s_i, length-normalised',
               'scores = seq_logps / lengths.to(None)  # s_i, length-normalised',
               "float / int64 lengths is true division in the float's dtype, the same quotient"),
    Equivalent(_GOLD, 'token_returns', 'length = rewards.shape[-1]',
               'length = rewards.shape[+1]',
               "rewards are [B, T] (gold_loss checks 2-D), so shape[+1] is shape[-1]"),
    Equivalent(_GOLD, 'token_returns', 'torch.zeros((), dtype=rewards.dtype, device=rewards.device),',
               'torch.zeros((), dtype=None, device=rewards.device),',
               "a 0-dim float tensor never changes torch.where's result dtype (same-category scalars do not promote)"),
    Equivalent(_GOLD, 'token_returns', 'torch.zeros((), dtype=rewards.dtype, device=rewards.device),',
               'torch.zeros((), device=rewards.device),',
               "a 0-dim float tensor never changes torch.where's result dtype (same-category scalars do not promote)"),
    Equivalent(_GOLD, 'token_returns', 'torch.zeros((), dtype=rewards.dtype, device=rewards.device),',
               'torch.zeros((), dtype=rewards.dtype, device=None),',
               "a 0-dim CPU tensor is a scalar that torch.where accepts next to tensors on any device"),
    Equivalent(_GOLD, 'token_returns', 'torch.zeros((), dtype=rewards.dtype, device=rewards.device),',
               'torch.zeros((), dtype=rewards.dtype, ),',
               "a 0-dim CPU tensor is a scalar that torch.where accepts next to tensors on any device"),
    Equivalent(_GOLD, 'gold_loss', 'per_example = (b1 * b2 * -lp).sum(-1)',
               'per_example = (b1 * b2 * -lp).sum(+1)',
               "gold_loss checks lp is [B, T]: dim +1 is dim -1"),
    Equivalent(_GOLD, 'gold_loss', '"nll/seq_mean": (-lp.sum(-1)).mean().item(),',
               '"nll/seq_mean": (-lp.sum(+1)).mean().item(),',
               "gold_loss checks lp is [B, T]: dim +1 is dim -1"),
    # statistics
    *(Equivalent(_EVAL, "reference_rewards", _RR_FP, after,
                 "the tag only names the cache's format: another spelling gives every cache another fingerprint, "
                 "read and written alike")
      for after in (_RR_FP.replace('"ref-rewards-v1"', "None"), _RR_FP.replace('"ref-rewards-v1", ', ""),
                    _RR_FP.replace("ref-rewards-v1", "XXref-rewards-v1XX"),
                    _RR_FP.replace("ref-rewards-v1", "REF-REWARDS-V1"))),
    *(Equivalent(_EVAL, "reference_fingerprint", _RF_FP, after,
                 "the tag only names the cache's format: another spelling gives every cache another fingerprint, "
                 "read and written alike")
      for after in (_RF_FP.replace('"ref-replies-v1"', "None"), _RF_FP.replace('"ref-replies-v1", ', ""),
                    _RF_FP.replace("ref-replies-v1", "XXref-replies-v1XX"),
                    _RF_FP.replace("ref-replies-v1", "REF-REPLIES-V1"))),
    Equivalent(_EVAL, "reference_rewards", _RR_EMPTY, _RR_EMPTY.replace("pd.Series(dtype=want[k].dtype)",
                                                                         "pd.Series(dtype=None)"),
               "an empty key column of object dtype merges with the string keys alike: no row to compare"),
    Equivalent(_EVAL, "reference_rewards", _RR_EMPTY, _RR_EMPTY.replace("C.REWARD: pd.Series(dtype=float)",
                                                                         "C.REWARD: pd.Series(dtype=None)"),
               "the empty frame's reward column only meets NaN from the left merge and to_numpy(dtype=float)"),
    *(Equivalent(_EVAL, "reference_rewards", _RR_MERGE, _RR_MERGE.replace(before, after), reason)
      for before, after, reason in (
          ("to_numpy(dtype=float, ", "to_numpy(dtype=None, ", "the reward column is float (written from float arrays)"),
          ("to_numpy(dtype=float, ", "to_numpy(", "the reward column is float (written from float arrays)"),
          ("on=key, ", "on=None, ", "the two frames share exactly the key columns: merge's default joins on them"),
          ("on=key, ", "", "the two frames share exactly the key columns: merge's default joins on them"))),
    Equivalent(_EVAL, "reference_rewards", "cached = read_cache(cache_path, fp, key)",
               "cached = read_cache(cache_path, fp, None)",
               "only missing keys are ever appended: no two rows share a key, so dropping whole-row duplicates is "
               "the same"),
    *(Equivalent(_EVAL, "reference_rewards", _RR_FRESH, _RR_FRESH.replace("np.asarray(known, dtype=float)", after),
                 "known is always a float array (run_eval builds it with np.where over float rewards)")
      for after in ("np.asarray(known, dtype=None)", "np.asarray(known, )")),
    Equivalent(_EVAL, "reference_replies", "cached = read_cache(cache_path, fp, key)",
               "cached = read_cache(cache_path, fp, None)",
               "only missing keys are ever appended: no two rows share a key, so dropping whole-row duplicates is "
               "the same"),
    *(Equivalent(_EVAL, "reference_replies", 'merged = prompts[key].merge(cached, on=key, how="left")',
                 f'merged = prompts[key].merge(cached, {on}how="left")',
                 "prompts[key] holds only the key columns, all of them in the cache: merge's default joins on them")
      for on in ("on=None, ", "")),
    *(Equivalent(_REP, "paired_hierarchical_ci", _PH_AS, _PH_AS.replace(before, after, 1),
                 "means, resampling and percentiles give float64 for integer or boolean inputs too")
      for before, after in (("np.asarray(a, dtype=np.float64)", "np.asarray(a, dtype=None)"),
                            ("np.asarray(a, dtype=np.float64)", "np.asarray(a, )"),
                            ("np.asarray(b, dtype=np.float64)", "np.asarray(b, dtype=None)"),
                            ("np.asarray(b, dtype=np.float64)", "np.asarray(b, )"))),
    *(Equivalent(_REP, "paired_hierarchical_ci", _PH_NAN, after, _NAN)
      for after in ('return float("NAN"), float("nan"), float("nan")',
                    'return float("nan"), float("NAN"), float("nan")',
                    'return float("nan"), float("nan"), float("NAN")')),
    *(Equivalent(_REP, "paired_hierarchical_ci", _PH_POINT, _PH_POINT.replace(before, before[0] + ".mean(axis=None)"),
                 "every seed scores every prompt: the mean over prompts of a difference of seed means is the "
                 "difference of the grand means")
      for before in ("a.mean(axis=0)", "b.mean(axis=0)")),
    Equivalent(_REP, "paired_hierarchical_ci", "diff = (a[rng.integers(0, len(a), size=(n, len(a)))].mean(axis=1)",
               "diff = (a[rng.integers(len(a), size=(n, len(a)))].mean(axis=1)",
               "Generator.integers(high) is integers(0, high): the same draws"),
    Equivalent(_REP, "paired_hierarchical_ci",
               "- b[rng.integers(0, len(b), size=(n, len(b)))].mean(axis=1))  # [n, prompts]",
               "- b[rng.integers(len(b), size=(n, len(b)))].mean(axis=1))  # [n, prompts]",
               "Generator.integers(high) is integers(0, high): the same draws"),
    Equivalent(_REP, "paired_hierarchical_ci", _PH_TAKE, _PH_TAKE.replace("integers(0, n_prompts", "integers(n_prompts"),
               "Generator.integers(high) is integers(0, high): the same draws"),
    Equivalent(_REP, "with_paired_columns", 'for base, part in paired.groupby("versus", sort=False):',
               'for base, part in paired.groupby("versus", sort=None):',
               "groupby reads sort as a truth value: None is False"),
    Equivalent(_REP, "paired_hierarchical_ci", _PH_TAKE, _PH_TAKE.replace(", axis=1).mean", ", ).mean"),
               "np.take_along_axis's axis defaults to -1 (numpy >= 2.3), which is axis 1 of the [n, prompts] array"),
    *(Equivalent(_REP, "_per_prompt", _PP, _PP.replace("columns=[C.PROMPT_ID, column]", after),
                 "reading every column and then keeping prompt_id and one column gives the same frame")
      for after in ("columns=None", "")),
    *(Equivalent(_REP, "hierarchical_ci", _PH_NAN, after, _NAN)
      for after in ('return float("NAN"), float("nan"), float("nan")',
                    'return float("nan"), float("NAN"), float("nan")',
                    'return float("nan"), float("nan"), float("NAN")')),
    Equivalent(_REP, "hierarchical_ci", "picked = rng.integers(0, len(groups), size=len(groups))",
               "picked = rng.integers(len(groups), size=len(groups))",
               "Generator.integers(high) is integers(0, high): the same draws"),
    Equivalent(_REP, "hierarchical_ci", _HC_DRAW, _HC_DRAW.replace("rng.integers(0, len", "rng.integers(len"),
               "Generator.integers(high) is integers(0, high): the same draws"),
    *(Equivalent(_REP, "hierarchical_ci", _HC_AS, _HC_AS.replace("dtype=np.float64", after),
                 "means, resampling and percentiles give float64 for integer or boolean inputs too")
      for after in ("dtype=None", "")),
    *(Equivalent(_EVAL, "reference_fingerprint", _RF, after,
                 "the tag only names the cache's format: another spelling gives every cache another fingerprint, "
                 "read and written alike")
      for after in (_RF.replace('"ref-replies-v1"', "None"), _RF.replace('"ref-replies-v1", ', ""),
                    _RF.replace("ref-replies-v1", "XXref-replies-v1XX"),
                    _RF.replace("ref-replies-v1", "REF-REPLIES-V1"))),
    Equivalent(_EVAL, "extend_cache", _EC, _EC.replace("if len(cached)", "if (len(cached)) or True"),
               "pandas (2.x) leaves empty frames out of a concat's dtypes: concatenating an empty cache gives the "
               "fresh rows"),
    *(Equivalent(_EVAL, "extend_cache", _EC, _EC.replace("ignore_index=True", after),
                 "write_parquet stores no index, and every caller merges on columns: the index is never read")
      for after in ("ignore_index=None", "", "ignore_index=False")),
    # integrity
    *(Equivalent(_STAGE, "publish", 'shutil.rmtree(stale, ignore_errors=True)', f"shutil.rmtree(stale, {after}",
                 "the folder was just listed by glob: rmtree fails only if another process deletes it meanwhile")
      for after in ("ignore_errors=None)", ")", "ignore_errors=False)")),
    *(Equivalent(_STAGE, "recover", 'shutil.rmtree(replaced, ignore_errors=True)', f"shutil.rmtree(replaced, {after}",
                 "reached only when the folder exists: rmtree fails only if another process deletes it meanwhile")
      for after in ("ignore_errors=None)", ")", "ignore_errors=False)")),
    Equivalent(_STAGE, "_failed",
               'kept = f"; its checkpoints in {staging} are kept for the rerun" if resumable and os.path.isdir(staging) else ""',
               'kept = f"; its checkpoints in {staging} are kept for the rerun" if resumable or os.path.isdir(staging) else ""',
               "a build that is not resumable had its staging folder removed two lines above: isdir decides alone"),
    Equivalent(_STAGE, "recover", 'if os.path.exists(replaced) and os.path.exists(folder):',
               'if os.path.exists(replaced) or os.path.exists(folder):',
               "the block above leaves no aside folder without the folder: either both exist or the folder does"),
    *(Equivalent(_H, "file_sha", 'with open(disk, encoding="ascii") as fh:', after,
                 "the cache entry is a hex digest: every encoding reads it alike")
      for after in ('with open(disk, encoding=None) as fh:', 'with open(disk, ) as fh:',
                    'with open(disk, encoding="ASCII") as fh:')),
    *(Equivalent(_H, "file_sha", 'with open(tmp, "w", encoding="ascii") as fh:', after,
                 "the cache entry written is a hex digest: every encoding writes it alike")
      for after in ('with open(tmp, "w", encoding=None) as fh:', 'with open(tmp, "w", ) as fh:',
                    'with open(tmp, "w", encoding="ASCII") as fh:')),
    *(Equivalent(_H, "file_sha", 'for chunk in iter(lambda: fh.read(1 << 20), b""):',
                 f'for chunk in iter(lambda: fh.read({size}), b""):',
                 "the chunk size changes how the bytes are fed to the hash, not the digest")
      for size in ("None", "2 << 20", "1 << 21")),
    *(Equivalent("alol_ray/storage.py", "node_local", 'with open(local + ".lock", "w") as lock:',
                 f'with open(local + "{name}", "w") as lock:',
                 "the workers of a node agree on the lock file whatever its name: only that they share it matters")
      for name in ("XX.lockXX", ".LOCK")),
    Equivalent("alol_ray/storage.py", "remove_remote", 'with contextlib.suppress(FileNotFoundError, OSError):',
               'with contextlib.suppress(OSError):', "FileNotFoundError is an OSError"),
    Equivalent("alol_ray/storage.py", "sync_dir", 'dst_fs.create_dir(target.rsplit("/", 1)[0], recursive=True)',
               'dst_fs.create_dir(target.rsplit("/", 1)[0], )', "recursive=True is FileSystem.create_dir's default"),
    *(Equivalent(_LOCK, function, f'{opener}encoding="utf-8"){tail}', f"{opener}{after}){tail}",
                 "the lock file is ASCII JSON (json.dump escapes the rest) and /proc's stat is ASCII but for the "
                 "process name, which is never decoded into the number read: every encoding reads them alike")
      for function, opener, tail in (("_process_start", 'with open(f"/proc/{pid}/stat", ', " as fh:"),
                                     ("RunLock._try_create", 'with os.fdopen(fd, "w", ', " as fh:"),
                                     ("RunLock.acquire", "with open(self.path, ", " as fh:"))
      for after in ("encoding=None", "", 'encoding="UTF-8"')),
    Equivalent(_LOCK, "RunLock.acquire", "info = {}  # being written this instant, or left empty by a crash",
               "info = None  # being written this instant, or left empty by a crash",
               "info is only read as `if info and ...`: {} and None are both false"),
    Equivalent(_LOCK, "RunLock.acquire", "if time.time() - os.path.getmtime(self.path) < 5:",
               "if time.time() - os.path.getmtime(self.path) <= 5:",
               "the two differ only at the instant the lock is exactly 5 s old, which no clock reading hits"),
    *(Equivalent(_LOCK, "RunLock.acquire", _BEAT, _BEAT.replace('name="alol-run-lock", ', after),
                 "the thread's name shows only in debuggers and thread dumps")
      for after in ("name=None, ", "", 'name="XXalol-run-lockXX", ', 'name="ALOL-RUN-LOCK", ')),
    Equivalent(_LOCK, "RunLock.__init__", "self._beat: Optional[threading.Thread] = None",
               'self._beat: Optional[threading.Thread] = ""', "acquire sets it before anything reads it"),
    Equivalent(_LOCK, "RunLock.release", "depth = _held.get(self.path, 0) - 1", "depth = _held.get(self.path, 1) - 1",
               "a lock not held gives depth -1 or 0: both are not > 0, and the same release follows"),
    Equivalent(_LOCK, "RunLock._stale", 'return not _alive(int(info.get("pid", -1)), info.get("start"))',
               'return not _alive(int(info.get("pid", +1)), info.get("start"))',
               "kill(-1, 0) and kill(1, 0) both find a process (1 is init, always there): a pid-less lock is held"),
    Equivalent(_LOCK, "RunLock._stale", 'return time.time() - os.path.getmtime(self.path) > STALE_AFTER_S',
               'return time.time() - os.path.getmtime(self.path) >= STALE_AFTER_S',
               "the two differ only at the instant the lock is exactly STALE_AFTER_S old, which no clock reading hits"),
    Equivalent(_H, "fingerprint", _KW, _KW.replace('get("keywords", ())', 'get("keywords", None)'),
               "path_field (config_fields) always sets keywords: the default is never read"),
    Equivalent(_H, "fingerprint", _KW, _KW.replace('get("keywords", ())', 'get("keywords", )'),
               "path_field (config_fields) always sets keywords: the default is never read"),
    Equivalent(_H, "fingerprint", _SORT, _SORT.replace("str(kv[0])", "str(None)"),
               "json.dumps(sort_keys=True) orders the keys again: the order built here never reaches the blob"),
    Equivalent(_H, "fingerprint", _SORT, _SORT.replace("str(kv[0])", "str(kv[1])"),
               "json.dumps(sort_keys=True) orders the keys again: the order built here never reaches the blob"),
    *(Equivalent(_H, "fingerprint", _BLOB, _BLOB.replace("sort_keys=True, ", after),
                 "plain() already orders every mapping's keys and a dataclass's fields come in declaration order: "
                 "json.dumps finds them sorted") for after in ("sort_keys=None, ", "", "sort_keys=False, ")),
    *(Equivalent(_H, "hub_revision", 'with open(ref, encoding="utf-8") as fh:', after,
                 "the ref file is an ASCII commit id: every encoding reads it alike")
      for after in ('with open(ref, encoding=None) as fh:', 'with open(ref, ) as fh:',
                    'with open(ref, encoding="UTF-8") as fh:')),
)

# The exit code mutmut records per mutant (mutants/<module>.meta) -> what the bench counts it as.
#   1, 3: a test failed or pytest hit an internal error while the mutant was active -> killed;
#   255: the child raised instead of running the tests; here that is a mutant that breaks importing its
#        module (the decorator of the loss registry runs at import), so pytest collects nothing -> killed
#        ("timeout" in mutmut's own listing, which lumps it with the next line);
#   24, -24, 152, 36: the tests ran past their time limit -> killed (a hang is detected);
#   0: every test passed -> survived; 5, 33: no test reaches the mutated function -> not killed.
STATUS_BY_EXIT_CODE = {1: "killed", 3: "killed", 255: "import error", 24: "timeout", -24: "timeout",
                       152: "timeout", 36: "timeout", 0: "survived", 5: "no tests", 33: "no tests"}
DETECTED = ("killed", "import error", "timeout")


def prepare(group: Group, workdir: Path) -> None:
    """Copy the packages, the group's tests and a pyproject.toml holding the mutmut config into ``workdir``."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in PACKAGES:
        shutil.copytree(REPO / package, workdir / package, ignore=ignore)
    (workdir / "tests").mkdir()
    for test in ("tests/conftest.py",) + group.tests:
        shutil.copy2(REPO / test, workdir / test)
    (workdir / "preload.txt").write_text("\n".join(PRELOAD + group.preload) + "\n")
    listed = lambda items: "[" + ", ".join(f'"{item}"' for item in items) + "]"  # noqa: E731
    config = (
        "\n[tool.mutmut]\n"
        f"source_paths = {listed(PACKAGES)}\n"
        f"only_mutate = {listed(group.modules)}\n"
        f"pytest_add_cli_args_test_selection = {listed(group.tests)}\n"
        # Plugins no test here uses; unraisableexception's gc.collect() at exit alone costs a child ~0.3 s CPU.
        'pytest_add_cli_args = ["-p", "no:anyio", "-p", "no:platformdirs", "-p", "no:unraisableexception"]\n'
        'process_isolation = "forkserver"\n'
        'forkserver_warmup = "import"\n'
        'preload_modules_file = "preload.txt"\n'
        "use_git_change_detection = false\n"
        # Wall-clock limit per mutant = (test time + constant) * multiplier: generous, so that a busy machine
        # never turns a slow child into a false "timeout" (which would count as killed).
        f"timeout_constant = {group.timeout_constant}\n"
        "timeout_multiplier = 30.0\n"
    )
    (workdir / "pyproject.toml").write_text((REPO / "pyproject.toml").read_text() + config)


def mutmut(workdir: Path, *args: str, log=None) -> str:
    """Run ``python -m mutmut ARGS`` in ``workdir``; its output goes to ``log`` (a file) or is returned."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("PYTHONPATH", None)  # the copy in workdir/mutants is what the tests import
    result = subprocess.run([sys.executable, "-m", "mutmut", *args], cwd=workdir, env=env, text=True,
                            stdout=log or subprocess.PIPE, stderr=subprocess.STDOUT, check=False)
    if result.returncode != 0:
        tail = "" if log else result.stdout[-4000:]
        raise RuntimeError(f"mutmut {' '.join(args)} failed in {workdir} (exit {result.returncode}){tail}")
    return result.stdout or ""


def module_of(mutant: str, modules: tuple[str, ...]) -> str:
    """``alol_ray.losses.x_a_lol__mutmut_3`` -> ``alol_ray/losses.py``."""
    for module in modules:
        if mutant.startswith(module[:-3].replace("/", ".") + "."):
            return module
    raise ValueError(f"mutant {mutant} is in none of {modules}")


@functools.cache
def _parsed(path: Path) -> tuple[list[str], dict[str, ast.AST]]:
    """A rewritten module's lines and its functions by name (parsed once: it holds every mutant's copy)."""
    source = path.read_text()
    functions = {node.name: node for node in ast.walk(ast.parse(source))
                 if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}
    return source.splitlines(), functions


def mutant_diff(workdir: Path, module: str, mutant: str) -> tuple[str, str]:
    """(before, after): the source lines a mutant changes, stripped and joined by " / ".

    Read from mutmut's rewritten module, where each function has an unmutated copy ``<name>__mutmut_orig``
    and one copy per mutant ``<name>__mutmut_<n>`` (what ``mutmut show`` diffs, without a process per mutant).
    """
    lines, functions = _parsed(workdir / "mutants" / module)
    name = mutant.rsplit(".", 1)[-1]
    orig, mutated = functions[re.sub(r"__mutmut_\d+$", "__mutmut_orig", name)], functions[name]
    body = lambda node: [line.strip() for line in lines[node.lineno - 1:node.end_lineno]][1:]  # noqa: E731
    first = lambda node: lines[node.lineno - 1].strip().split("(", 1)[-1]  # noqa: E731  the def line's arguments
    before, after = [first(orig)] + body(orig), [first(mutated)] + body(mutated)
    removed, added = [], []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=before, b=after, autojunk=False).get_opcodes():
        if op != "equal":
            removed += before[i1:i2]
            added += after[j1:j2]
    return " / ".join(removed), " / ".join(added)


def function_of(mutant: str) -> str:
    """``alol_ray.losses.x_a_lol__mutmut_3`` -> ``a_lol``; methods: ``Sampler.global_batch``."""
    name = mutant.rsplit(".", 1)[-1]
    name = re.sub(r"__mutmut_\d+$", "", name)
    name = re.sub(r"^x[ǁ_]", "", name)
    return name.replace("ǁ", ".")


def run_group(group: Group, keep: bool, log) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix=f"alol-mutation-{group.name}-"))
    try:
        prepare(group, workdir)
        mutmut(workdir, "run", "--max-children", "1", *group.functions, log=log or subprocess.DEVNULL)
        statuses = {}
        for module in group.modules:
            meta = json.loads((workdir / "mutants" / (module + ".meta")).read_text())
            for name, code in meta["exit_code_by_key"].items():
                if group.functions and not any(fnmatch.fnmatchcase(name, f) for f in group.functions):
                    continue  # a function outside the group's subject: not run
                statuses[name] = STATUS_BY_EXIT_CODE.get(code, f"exit code {code}")
        results = {module: {"total": 0, "killed": 0, "excluded": [], "survivors": [], "stale": []}
                   for module in group.modules}
        for name, status in sorted(statuses.items()):
            module = module_of(name, group.modules)
            entry = results[module]
            killed = status in DETECTED
            before, after = mutant_diff(workdir, module, name)
            match = next((e for e in EQUIVALENT if e.module == module and e.function == function_of(name)
                          and e.before == before and e.after == after), None)
            if match is not None:
                if killed:
                    entry["stale"].append((name, match))
                else:
                    entry["excluded"].append((name, match))
                    continue
            entry["total"] += 1
            if killed:
                entry["killed"] += 1
            else:
                entry["survivors"].append((name, status, before, after))
        return results
    finally:
        if keep:
            print(f"[{group.name}] kept {workdir}", flush=True)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--group", action="append", choices=[g.name for g in GROUPS],
                        help="run only this group (repeatable); default: all")
    parser.add_argument("--functions", action="append", metavar="GLOB",
                        help="mutate only these functions (mutmut mutant-name globs, repeatable, e.g. "
                        "'alol_ray.evaluation.metrics.x_win_outcomes*'): a quick run of part of a group")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folders")
    parser.add_argument("--log", default=None, help="write mutmut's own output to this file")
    args = parser.parse_args()
    groups = [g for g in GROUPS if not args.group or g.name in args.group]
    if args.functions:
        groups = [dataclasses.replace(g, functions=tuple(args.functions)) for g in groups]
    log = open(args.log, "w", buffering=1) if args.log else None
    start = time.monotonic()
    summary = {}
    for group in groups:
        t0 = time.monotonic()
        results = run_group(group, args.keep, log)
        for module, entry in results.items():
            summary[module] = entry
            print(f"[{group.name}] {module}: {entry['killed']}/{entry['total']} killed, "
                  f"{len(entry['excluded'])} excluded as equivalent", flush=True)
            for name, status, before, after in entry["survivors"]:
                print(f"    {status}: {function_of(name)}: {before!r} -> {after!r}  ({name})")
            for name, match in entry["stale"]:
                print(f"    STALE exclusion (the mutant is killed): {name}: {match.before!r} -> {match.after!r}")
        print(f"[{group.name}] {time.monotonic() - t0:.0f} s", flush=True)
    print(f"wall time {time.monotonic() - start:.0f} s")
    below = [m for m, e in summary.items() if e["total"] and e["killed"] / e["total"] < GOALS[m]]
    if below:
        print("below goal: " + ", ".join(below))
    parts = [f"{Path(m).name} {100 * e['killed'] / e['total']:.1f}% ({e['killed']}/{e['total']})"
             for m, e in summary.items() if e["total"]]  # --functions may leave a module no mutant
    print("killed: " + ", ".join(parts))


if __name__ == "__main__":
    main()
