"""`alol demo`: the whole pipeline on the built-in task, on a laptop-sized budget, ending with a comparison.

build data -> tiny policy -> pi_ref (NLL SFT) -> reward + reference scoring -> value/advantages ->
A-LoL and baselines (one seed each) -> evaluation on the test prompts -> report.md + plots.
Each stage prints its progress; a second `alol demo` resumes or skips what is done.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Optional

from alol_ray.cli import add_config_arguments
from alol_ray.config import load_config

USES_RUN = True

# Sized for <= 10 minutes and <= 6 GiB on 2 CPU cores (measured by bench/demo_budget.py); any of these can
# be overridden on the command line (`alol demo train.steps=400`).
DEMO_OVERRIDES = [
    "name=demo",
    "compare.methods=[nll,a_lol,dpo]",  # A-LoL, its SFT baseline and a preference baseline
    "compare.seeds=1",
    # the built-in task's tiny policy (bench/builtin_learnability.py): 0.9M parameters, short prompts
    "model.tiny.vocab_size=1024",
    "model.tiny.n_positions=128",
    "model.max_prompt_tokens=32",
    "model.max_response_tokens=64",
    "generation.max_new_tokens=48",
    "reference.train.steps=300",
    "reference.train.batch_size=16",
    "reference.train.lr=3e-3",
    "reference.train.lr_schedule=cosine",
    "reference.train.warmup_steps=30",
    "reference.train.eval_every=0",
    "train.steps=150",
    "train.batch_size=16",
    "train.lr=1e-3",
    "train.eval_every=75",
    "train.eval_prompts=48",
    "eval.max_prompts=100",
]


def resource_overrides(cpus: int, n_methods: int) -> list[str]:
    """Use the machine: a tiny policy gains little beyond 2 torch threads, so each run gets up to 2 CPUs and
    the remaining cores run more (method, seed) runs at once. On 2 cores: one run at a time, 2 threads.

    PPO also holds a Generator engine and the pi_ref actor while its workers train, so its run is sized to
    fit alone: 2 + 1 + 1 CPUs from 4 cores up, 1 + 0.5 + 0.5 on 2 cores."""
    per_run = max(1, min(2, cpus))
    ppo_train = 2 if cpus >= 4 else max(cpus - 1, cpus / 2)
    ppo_side = (min(cpus, 4) - ppo_train) / 2  # each of the Generator engine and the pi_ref actor
    return [
        f"train.cpus_per_worker={per_run}",
        f"reference.train.cpus_per_worker={per_run}",
        f"compare.max_concurrent={max(1, min(n_methods, cpus // per_run))}",
        f"scoring.reference_pool.max_actors={per_run}",
        f"ppo.cpus_per_worker={ppo_train:g}",
        f"ppo.generation_cpus={ppo_side:g}",
        f"ppo.reference_cpus={ppo_side:g}",
    ]


def load_sized(config_path: Optional[str], defaults: list[str], user: list[str]):
    """load_config(config_path, defaults + user), with resource_overrides for the CPUs the local Ray will
    offer (``ray.num_cpus``, else the cores this process may use) between the two: the user's still win."""
    cfg = load_config(config_path, defaults + user)
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    sized = resource_overrides(cfg.ray.num_cpus or usable, len(cfg.compare.methods))
    return load_config(config_path, defaults + sized + user)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)


def load(args: argparse.Namespace):
    return load_sized(args.config, DEMO_OVERRIDES, list(args.overrides or []))


def run(args: argparse.Namespace, session) -> int:
    # lazy: alol_ray.evaluation.compare (torch, transformers) (alol_ray.commands.demo imports without them)
    from alol_ray.evaluation.compare import run_compare

    started = time.time()
    report, table = run_compare(session.pipeline, command=session.command)
    print()
    print(table)
    print(f"\nreport: {report}")
    print(f"demo finished in {time.time() - started:.0f}s")
    return 0
