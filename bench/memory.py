"""Per-worker memory of the training strategies, side by side in one run: DDP vs FSDP (train.strategy) and
gradient checkpointing off vs on (train.gradient_checkpointing), with the step time each costs.

1. Sharding: 2 processes (gloo, CPU), a Llama of --width/--layers/--vocab (default 33.6 M parameters), one AdamW
   step under DDP (what ``Replicated`` wraps with) and under ``Sharded`` (FSDP2, fp32). Counted on each rank after
   the step: the bytes of the parameters, gradients and optimizer state that rank holds (its shards under
   FSDP; DDP's gradient buckets, a second gradient-sized buffer, are not counted). Goal: FSDP <= 0.6x DDP.
2. Activations: one process, the same model, a batch of --batch sequences of --seq tokens (default 512),
   forward + backward with and without gradient checkpointing. Measured: the peak growth of the process's
   resident memory during the forward + backward (sampled every millisecond), minus the gradients it
   allocates. Goal: checkpointing <= 0.5x.

    PYTHONPATH=. python bench/memory.py                    # the issue's sizes (a few minutes on 2 busy cores)

The figures in README.md ("Memory") came from this script; the memory model (docs/memory.md) is the
arithmetic these numbers check.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import threading
import time

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path[:0] = [REPO]

import torch  # noqa: E402


def build_model(args):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=args.vocab, hidden_size=args.width, intermediate_size=args.width * 8 // 3 // 16 * 16,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.heads,
        max_position_embeddings=max(args.seq, 64), attn_implementation="eager"))


def tensor_bytes(tensors) -> int:
    total, seen = 0, set()
    for t in tensors:
        if t is None:
            continue
        t = t.to_local() if hasattr(t, "to_local") else t  # a DTensor: this rank's shard
        key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
    return total


def held_bytes(model, optimizer) -> dict[str, int]:
    params = list(model.parameters())
    state = [v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v) and v.dim() > 0]
    return {"params": tensor_bytes(params), "grads": tensor_bytes(p.grad for p in params),
            "optimizer": tensor_bytes(state)}


def _sharding_rank(rank: int, world: int, port: int, args, out: str) -> None:
    import torch.distributed as dist

    from alol_ray.train.fsdp import Sharded
    from alol_ray.train.memory import precision_policy

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(args.threads)
    results = {}
    for strategy in ("ddp", "fsdp"):
        model = build_model(args)
        n_params = sum(p.numel() for p in model.parameters())
        if strategy == "ddp":
            model = torch.nn.parallel.DistributedDataParallel(model)
        else:
            model = Sharded(world, precision_policy("fp32", on_gpu=False)).wrap(model, torch.device("cpu"))
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        ids = torch.randint(0, args.vocab, (args.batch, args.step_seq), generator=torch.Generator().manual_seed(rank))
        times = []
        for _ in range(args.steps):
            t0 = time.perf_counter()
            model(input_ids=ids, labels=ids).loss.backward()
            optimizer.step()
            times.append(time.perf_counter() - t0)
            held = held_bytes(model, optimizer)  # after the step, before the gradients are freed
            optimizer.zero_grad(set_to_none=True)
        results[strategy] = {"held": held, "step_s": min(times), "n_params": n_params}
        del model, optimizer
    gathered = [None] * world
    dist.all_gather_object(gathered, results)
    if rank == 0:
        torch.save(gathered, out)
    dist.destroy_process_group()


def sharding(args) -> list[dict]:
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "sharding.pt")
        mp.spawn(_sharding_rank, args=(2, port, args, out), nprocs=2)
        return torch.load(out)


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_growth(fn) -> tuple[int, float]:
    """(peak resident-memory growth while ``fn`` runs, sampled every ms; its wall time)."""
    base, peak, done = rss_bytes(), [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss_bytes() - base)
            time.sleep(0.001)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    fn()
    elapsed = time.perf_counter() - t0
    done.set()
    sampler.join()
    return max(peak[0], rss_bytes() - base), elapsed


def activations(args) -> dict[str, dict]:
    from alol_ray.train.memory import checkpoint_activations

    torch.set_num_threads(args.threads)
    results = {}
    for checkpointing in (False, True, False):  # off twice: the first run warms the allocator up
        model = build_model(args)
        model.config.use_cache = False
        if checkpointing:
            checkpoint_activations(model)
        model.train()
        ids = torch.randint(0, args.vocab, (args.batch, args.seq), generator=torch.Generator().manual_seed(0))
        grads = sum(p.numel() * p.element_size() for p in model.parameters())
        growth, elapsed = peak_growth(lambda: model(input_ids=ids, labels=ids).loss.backward())
        results["on" if checkpointing else "off"] = {"activations": max(growth - grads, 0), "step_s": elapsed}
        del model
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--seq", type=int, default=512, help="tokens per sequence for the activation figures")
    parser.add_argument("--step-seq", type=int, default=64, help="tokens per sequence for the sharding steps")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    mib = 1 / 2**20

    ranks = sharding(args)
    n = ranks[0]["ddp"]["n_params"]
    print(f"model: Llama, {n / 1e6:.1f} M parameters, 2 workers (gloo, CPU), AdamW, fp32")
    print(f"{'strategy':<9}{'rank':>5}{'params MiB':>12}{'grads MiB':>11}{'optimizer MiB':>15}{'total MiB':>11}"
          f"{'step s':>9}")
    totals = {}
    for strategy in ("ddp", "fsdp"):
        for rank, result in enumerate(ranks):
            held = result[strategy]["held"]
            total = sum(held.values())
            totals[strategy] = max(totals.get(strategy, 0), total)
            print(f"{strategy:<9}{rank:>5}{held['params'] * mib:>12.1f}{held['grads'] * mib:>11.1f}"
                  f"{held['optimizer'] * mib:>15.1f}{total * mib:>11.1f}{result[strategy]['step_s']:>9.3f}")
    shard_ratio = totals["fsdp"] / totals["ddp"]
    step_ratio = max(r["fsdp"]["step_s"] for r in ranks) / max(r["ddp"]["step_s"] for r in ranks)
    print(f"params+grads+optimizer per worker: fsdp / ddp = {shard_ratio:.2f} (goal <= 0.6); "
          f"step time fsdp / ddp = {step_ratio:.2f}")

    act = activations(args)
    print(f"activations, batch {args.batch} x {args.seq} tokens: checkpointing off {act['off']['activations'] * mib:.1f}"
          f" MiB in {act['off']['step_s']:.2f} s, on {act['on']['activations'] * mib:.1f} MiB in "
          f"{act['on']['step_s']:.2f} s")
    act_ratio = act["on"]["activations"] / max(act["off"]["activations"], 1)
    print(f"activation memory: checkpointing on / off = {act_ratio:.2f} (goal <= 0.5); "
          f"forward+backward time on / off = {act['on']['step_s'] / act['off']['step_s']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
