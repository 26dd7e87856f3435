"""Where a training step's CPU time goes: alol-ray's ``nll`` and ``a_lol`` step next to TRL's ``SFTTrainer`` step,
on the same model, token ids, batches and optimizer as ``bench/vs_trl.py``, all in THIS process, without Ray.

    python bench/step_profile.py                          # GPT-2 on the built-in task, 1 thread
    python bench/step_profile.py --configs gpt2/builtin,llama/hh --hh DIR --cprofile   # + the regions of a step
    python bench/step_profile.py --kinds "" --processes nll,trl_sft,nll@nice15        # vs_trl.py's runs instead

alol-ray's side is the step the Ray Train worker runs: ``OfflineHooks.train_step`` (collation, the method's
``compute``, backward, clip, AdamW, the metrics) and the skeleton's logging of a step (``record_step``: the
metrics.jsonl line); left out is Ray's own share (``ray.train.report`` every ``log_every`` steps and Ray's
processes). TRL's side is ``SFTTrainer.train()`` with the bench's settings, timed from the end of one step to
the end of the next (its data loading, step and callbacks). Runs alternate (alol-ray's nll, a_lol, TRL's SFT;
reversed every round); every figure is CPU time of this process (``time.process_time``), which moves far less
than wall time with the machine's other load. Prints the median CPU ms per step of each run kind and, with
``--cprofile`` (the first round), the CPU ms per step of each region (``REGIONS``; cProfile's own overhead
inflates the Python-heavy regions of both sides alike).

``--processes`` runs bench/vs_trl.py's own runs of the kinds named (``alol train`` under Ray, TRL in its own
process; ``KIND@niceN``: Ray's workers at niceness N), alternated, with the bench's CPU time per step of all
the run's processes; ``--ray`` splits one ``alol train`` run's CPU time per step by Ray process.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import sys
import tempfile
import time
from dataclasses import replace

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import vs_trl  # noqa: E402  (this folder: the bench's models, data, TRL settings and examples)

# region -> the functions (file name ending, function name) whose inclusive CPU time it is, alol-ray's and TRL's;
# a region of several functions is the largest of them. "loss + metrics" is the method's compute (alol-ray) or
# compute_loss (TRL) less its forward; "other" is the rest of the profiled steps (Python around the step, TRL's
# data loader and callbacks).
REGIONS = {
    "collate": [("methods.py", "collate_units"), ("sft_trainer.py", "torch_call"), ("sft_trainer.py", "__call__")],
    "forward + log-probs": [("tokenization.py", "response_token_logps"), ("utils.py", "_fused_forward")],
    "loss + metrics": [("methods.py", "compute"), ("sft_trainer.py", "compute_loss")],
    "backward": [("_tensor.py", "backward")],
    "clip grad norm": [("strategy.py", "clip_grad_norm"), ("trainer.py", "_clip_grad_norm")],
    "optimizer step": [("adam.py", "step"), ("adamw.py", "step")],
    "zero_grad": [("optimizer.py", "zero_grad"), ("module.py", "zero_grad")],
    "log a step": [("worker.py", "record_step"), ("trainer.py", "_maybe_log_save_evaluate")],
}


def region_ms(stats: pstats.Stats, steps: int) -> dict[str, float]:
    """CPU ms per step of each region (see REGIONS) and of the profiled steps in all ("total")."""
    found: dict[str, float] = {}
    for (path, _line, func), (_cc, _nc, _tt, ct, _callers) in stats.stats.items():
        for region, keys in REGIONS.items():
            if any(path.endswith(file) and func == name for file, name in keys):
                found[region] = max(found.get(region, 0.0), ct)
    if "loss + metrics" in found:
        found["loss + metrics"] -= found.get("forward + log-probs", 0.0)
    found["other"] = stats.total_tt - sum(found.values())
    found["total"] = stats.total_tt
    return {k: 1e3 * v / steps for k, v in found.items()}


def alol_steps(config, method_name: str, sizes, steps: int, warmup: int, profile: bool):
    """alol-ray's step as its Ray Train worker runs it (``OfflineHooks.train_step`` + ``record_step``)."""
    import pandas as pd
    import torch

    from alol_ray import tracking
    from alol_ray.config import PolicyConfig
    from alol_ray.registry import get_method
    from alol_ray.train.loop import OfflineHooks, loop_spec
    from alol_ray.train.policy import build_policy, make_optimizer
    from alol_ray.train.strategy import make_strategy
    from alol_ray.train.trainer import prepare_data
    from alol_ray.train.worker import record_step, step_seed
    from alol_ray.train.worker_loop import Worker, learning_rate

    method = get_method(method_name)
    tc = vs_trl.train_config(method_name, sizes, steps)
    pc = PolicyConfig(max_prompt_tokens=sizes.max_prompt, max_response_tokens=sizes.max_response)
    data = prepare_data(pd.read_parquet(config.table), method, tc)
    hooks = OfflineHooks(method=method, train=tc, model=pc, generation=None, reward=None, reward_stats={},
                         policy_path=config.model_dir, data_ref=None)
    hooks.frame, hooks.units, hooks.sampler = data.frame, data.units, data.sampler
    hooks.params = method.make_params(tc)
    device = torch.device("cpu")
    spec = loop_spec(method, tc, pc, total_steps=steps, eval_every=0)
    w = Worker(spec, 0, 1, device, make_strategy(tc, 1))
    model, w.tokenizer = build_policy(pc, tc, config.model_dir, None, device)
    w.model = w.strategy.wrap(model, device)
    w.trainable = [p for p in w.model.parameters() if p.requires_grad]
    w.optimizer = make_optimizer(w.trainable, tc)
    hooks.start(w)
    w.model.train()
    tracker = tracking.start(None)
    profiler = cProfile.Profile(time.process_time) if profile else None
    times, losses = [], []
    with tempfile.TemporaryDirectory() as logs:
        metrics_path = os.path.join(logs, "metrics.jsonl")
        for step in range(steps):
            if profiler and step == warmup:
                profiler.enable()
            t0 = time.process_time()
            lr = learning_rate(step, spec.schedule, steps)
            for group in w.optimizer.param_groups:
                group["lr"] = lr
            torch.manual_seed(step_seed(spec.seed, step, w.rank))
            metrics = hooks.train_step(w, step, lr)
            metrics.update({"train/step": step + 1, "train/lr": lr, "time/step_s": 0.0, "time/wall": time.time()})
            record_step(metrics, step + 1, metrics_path, tracker, report=False)
            times.append(time.process_time() - t0)
            losses.append(metrics["loss/policy"])
        if profiler:
            profiler.disable()
    return times[warmup:], losses, profiler


def trl_steps(config, sizes, steps: int, warmup: int, profile: bool):
    """TRL's SFTTrainer on the nll run's replies in alol-ray's draw order; CPU time from one step end to the next."""
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, TrainerCallback

    from alol_ray.models import load_tokenizer

    frame, drawn, _ = vs_trl.drawn_units(config.table, "nll", sizes, steps)
    tokenizer = load_tokenizer(config.model_dir)
    examples = vs_trl.trl_examples(frame, drawn, tokenizer, sizes, "sft")
    model = AutoModelForCausalLM.from_pretrained(config.model_dir, dtype=torch.float32)
    profiler = cProfile.Profile(time.process_time) if profile else None

    class Clock(TrainerCallback):
        def __init__(self):
            self.ends: list[float] = []

        def on_step_end(self, args, state, control, **kwargs):
            self.ends.append(time.process_time())
            if profiler and len(self.ends) == warmup:
                profiler.enable()

    clock = Clock()
    _, sft_cls = vs_trl.trl_trainers()
    with tempfile.TemporaryDirectory() as out:
        args = vs_trl.trl_args("trl_sft", out, sizes, steps, sequential=True)
        trainer = sft_cls(model=model, args=args, train_dataset=datasets.Dataset.from_list(examples),
                          processing_class=tokenizer, callbacks=[clock])
        trainer.step_losses = []
        trainer.train()
    if profiler:
        profiler.disable()
    return [b - a for a, b in zip(clock.ends[warmup - 1:], clock.ends[warmup:])], trainer.step_losses, profiler


def role(proc) -> str:
    """What a process of an `alol train` run is: Ray titles its workers ``ray::<actor or task>`` (``ray::IDLE``
    for a started worker that has no task yet), its daemons keep their program names."""
    cmd = proc.cmdline()
    text = " ".join(cmd)
    if "ray::" in text:
        return "ray::" + text.split("ray::", 1)[1].split()[0].split(".")[0]
    program = os.path.basename(cmd[0]) if cmd else proc.name()
    if program in ("gcs_server", "raylet"):
        return program
    for key in ("log_monitor", "dashboard/agent", "runtime_env/agent", "monitor.py"):
        if key in text:
            return key
    if "alol" in text and "train" in cmd:
        return "driver (alol train)"
    return text[:60]


def ray_run_cpu(config, kind: str, sizes, steps: int, warmup: int, work: str) -> dict[str, float]:
    """`alol train` as bench/vs_trl.py runs it, with every process's CPU seconds sampled every 0.2 s: CPU ms per
    timed step of each kind of process (the Train worker, the controller, raylet, GCS, the driver, ...)."""
    import json
    import shutil
    import threading

    import numpy as np
    import psutil

    folder = os.path.join(work, "runs-profile", f"{config.name}-{kind}")
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    vs_trl.write_alol_config(os.path.join(folder, "config.yaml"), config, sizes, steps)
    alol = shutil.which("alol", path=os.path.dirname(sys.executable)) or "alol"
    cmd = [alol, "train", "--config", "config.yaml", "--algo", kind, "--table", os.path.relpath(config.table, folder),
           "--init", os.path.relpath(config.model_dir, folder)]
    env = dict(os.environ, OMP_NUM_THREADS=str(sizes.threads), PYTHONPATH=os.pathsep.join(
        p for p in (vs_trl.REPO, os.environ.get("PYTHONPATH")) if p))
    samples: list[tuple[float, dict]] = []  # (time, {pid: (role, cpu s)})
    with open(os.path.join(folder, "log.txt"), "w") as log:
        root = psutil.Popen(cmd, cwd=folder, stdout=log, stderr=log, env=env)
        done = threading.Event()

        def sample():
            while not done.is_set():
                seen = {}
                try:
                    procs = [root] + root.children(recursive=True)
                except psutil.Error:
                    break
                for p in procs:
                    try:
                        t = p.cpu_times()
                        seen[p.pid] = (role(p), t.user + t.system)
                    except psutil.Error:
                        pass
                samples.append((time.time(), seen))
                done.wait(0.2)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        rc = root.wait()
        done.set()
        thread.join()
    if rc:
        raise SystemExit(f"alol train failed (exit {rc}): see {folder}/log.txt")
    with open(os.path.join(folder, "runs", "vs_trl", "train", f"{kind}-s0", "metrics.jsonl")) as fh:
        ends = [json.loads(line)["time/wall"] for line in fh if line.strip()]
    begin, end = ends[warmup - 1], ends[-1]
    per_role: dict[str, float] = {}
    for pid in {pid for _, seen in samples for pid in seen}:
        points = [(t, seen[pid][1]) for t, seen in samples if pid in seen]
        name = next(seen[pid][0] for _, seen in samples if pid in seen)
        t, cpu = np.array(points).T
        used = float(np.interp(end, t, cpu) - np.interp(begin, t, cpu)) if len(t) > 1 else 0.0
        per_role[name] = per_role.get(name, 0.0) + 1e3 * used / (len(ends) - warmup)
    per_role["(wall ms per step)"] = 1e3 * (end - begin) / (len(ends) - warmup)
    return per_role


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="gpt2/builtin", help="FAMILY/DATA list as bench/vs_trl.py's")
    parser.add_argument("--hh", default="data/hh", metavar="DIR", help="the HH data folder (helpful_base.json)")
    parser.add_argument("--work", default="runs/bench_vs_trl", help="models and tables (shared with vs_trl.py)")
    parser.add_argument("--steps", type=int, default=12, help="steps per run, warm-up included (default 12)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--kinds", default="nll,a_lol,trl_sft")
    parser.add_argument("--smoke", action="store_true", help="bench/vs_trl.py's toy sizes: every path runs, no figure")
    parser.add_argument("--cprofile", action="store_true", help="also each region's CPU ms per step (cProfile)")
    parser.add_argument("--ray", action="store_true",
                        help="also one `alol train` per alol-ray kind: CPU ms per step of each Ray process")
    parser.add_argument("--processes", metavar="KINDS",
                        help="also the runs of bench/vs_trl.py (one process each, alternated, --rounds rounds) of "
                             "these kinds, e.g. nll,trl_sft,nll@nice15 (@nice15: Ray workers at niceness 15)")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    sizes = replace(vs_trl.SMOKE if args.smoke else vs_trl.Sizes(), threads=args.threads, steps=args.steps,
                    warmup=args.warmup)
    configs = vs_trl.parse_configs(args.configs)
    work = os.path.abspath(args.work)
    vs_trl.prepare(work, configs, sizes, args.hh)
    kinds = [k for k in args.kinds.split(",") if k]
    print(f"step_profile: {args.rounds} round(s) x {kinds}, {args.steps} steps ({args.warmup} warm-up), batch "
          f"{sizes.batch}, {args.threads} thread(s); load average {os.getloadavg()[0]:.1f}", flush=True)
    for config in configs:
        cpu = {k: [] for k in kinds}
        regions = {k: [] for k in kinds}
        for r in range(args.rounds):
            for kind in kinds if r % 2 == 0 else kinds[::-1]:
                profile = args.cprofile and r == 0
                if kind == "trl_sft":
                    times, losses, prof = trl_steps(config, sizes, args.steps, args.warmup, profile)
                else:
                    times, losses, prof = alol_steps(config, kind, sizes, args.steps, args.warmup, profile)
                if prof:
                    stats = pstats.Stats(prof)
                    regions[kind] = region_ms(stats, args.steps - args.warmup)
                    stats.sort_stats("cumulative").dump_stats(os.path.join(work, f"{config.name}-{kind}.prof"))
                else:
                    cpu[kind] += times
                print(f"  {config.name} round {r} {kind}{' (cProfile)' if prof else ''}: "
                      f"{1e3 * statistics.median(times):.0f} CPU ms/step (load {os.getloadavg()[0]:.1f})", flush=True)
        print(f"\n{config.name}: median CPU ms per step over the runs without cProfile")
        for kind in kinds:
            if cpu[kind]:
                print(f"  {kind:<8} {1e3 * statistics.median(cpu[kind]):8.1f}")
        if "trl_sft" in kinds and cpu["trl_sft"]:
            base = statistics.median(cpu["trl_sft"])
            print("  alol-ray / TRL: " + ", ".join(f"{k} {statistics.median(cpu[k]) / base:.3f}" for k in kinds
                                                   if k != "trl_sft" and cpu[k]))
        if any(regions.values()):
            print(f"\n{config.name}: CPU ms per step by region (cProfile, inclusive)")
            print(f"  {'region':<24}" + "".join(f"{k:>10}" for k in kinds))
            for region in [*REGIONS, "other", "total"]:
                print(f"  {region:<24}" + "".join(f"{regions[k].get(region, float('nan')):>10.1f}" for k in kinds))
        if args.ray:
            for kind in kinds:
                if kind == "trl_sft":
                    continue
                split = ray_run_cpu(config, kind, sizes, args.steps, args.warmup, work)
                total = sum(v for k, v in split.items() if not k.startswith("("))
                print(f"\n{config.name}: `alol train --algo {kind}` (Ray, 1 worker), CPU ms per timed step by process "
                      f"(load {os.getloadavg()[0]:.1f}): total {total:.0f}")
                for name, value in sorted(split.items(), key=lambda kv: -kv[1]):
                    print(f"  {name:<32}{value:8.1f}")
        if args.processes:
            process_runs(config, args.processes.split(","), sizes, args.rounds, work)
    return 0


def process_runs(config, kinds: list[str], sizes, rounds: int, work: str) -> None:
    """bench/vs_trl.py's runs of ``kinds``, each in its own process(es), alternated: its CPU ms per step (all the
    run's processes) and median step time."""
    figures: dict[str, list[dict]] = {k: [] for k in kinds}
    for r in range(rounds):
        for kind in kinds if r % 2 == 0 else kinds[::-1]:
            base, _, nice = kind.partition("@nice")
            saved = os.environ.get("RAY_worker_niceness")
            if nice:
                os.environ["RAY_worker_niceness"] = nice
            try:
                run = vs_trl.run_kind(config, base, sizes, sizes.steps, work, f"p{r}{kind.replace('@', '-')}")
            finally:
                if nice:
                    os.environ.pop("RAY_worker_niceness") if saved is None else os.environ.update(
                        RAY_worker_niceness=saved)
            figures[kind].append(vs_trl.summarize(run, sizes.warmup))
            f = figures[kind][-1]
            print(f"  process run {r} {config.name} {kind}: {f['cpu_ms_step']:.0f} CPU ms/step, {f['ms_step']:.0f} "
                  f"ms/step (load {os.getloadavg()[0]:.1f})", flush=True)
    print(f"\n{config.name}: bench/vs_trl.py's runs, CPU ms per step of all the run's processes (means over rounds)")
    for kind in kinds:
        print(f"  {kind:<14}{statistics.mean(f['cpu_ms_step'] for f in figures[kind]):8.0f} CPU ms/step"
              f"{statistics.mean(f['ms_step'] for f in figures[kind]):8.0f} ms/step")
    if "trl_sft" in kinds:
        for kind in kinds:
            if kind != "trl_sft":
                ratios = [a["cpu_ms_step"] / b["cpu_ms_step"] for a, b in zip(figures[kind], figures["trl_sft"])]
                print(f"  {kind} / trl_sft CPU time per step by round: {', '.join(f'{x:.3f}' for x in ratios)}")


if __name__ == "__main__":
    sys.exit(main())
