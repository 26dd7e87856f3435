"""Per-worker memory of the training strategies, side by side in one run: DDP vs FSDP (train.strategy) and
gradient checkpointing off vs on (train.gradient_checkpointing), with the step time each costs.

1. Sharding: 2 processes (gloo, CPU), a Llama of --width/--layers/--vocab (default 33.6 M parameters), one AdamW
   step under DDP (what ``Replicated`` wraps with) and under ``Sharded`` (FSDP2, fp32). Counted on each rank after
   the step: the bytes of the parameters, gradients and optimizer state that rank holds (its shards under
   FSDP; DDP's gradient buckets, a second gradient-sized buffer, are not counted). Goal: FSDP <= 0.6x DDP.
2. Activations: one process, the same model, a batch of --batch sequences of --seq tokens (default 512),
   forward + backward with and without gradient checkpointing. Counted: the bytes the forward pass keeps for
   backward (every saved tensor's storage once, weights excluded, plus each decoder layer's input), which is
   the activation memory at its peak, at the end of the forward pass. Goal: checkpointing <= 0.5x.

    PYTHONPATH=. python bench/memory.py                    # the issue's sizes (a few minutes on 2 busy cores)

The figures in README.md ("Bigger models") came from this script; the memory model (docs/memory.md) is the
arithmetic these numbers check. Measured 2026-12-06 on 2 CPU cores at load 31-39 (four other sessions):

    params+grads+optimizer per worker: fsdp / ddp = 0.50 (goal <= 0.6); step time fsdp / ddp = 2.46
    activations, batch 2 x 512 tokens: checkpointing off 496.3 MiB in 20.34 s, on 54.0 MiB in 23.14 s
    activation memory: checkpointing on / off = 0.11 (goal <= 0.5); forward+backward time on / off = 1.14
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
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


def saved_for_backward(model, ids) -> tuple[int, float]:
    """(bytes the forward pass keeps for backward, excluding the weights; forward + backward seconds).

    Counted exactly, storage by storage: every tensor autograd saves outside a checkpointed region (inside one,
    torch.utils.checkpoint saves nothing and recomputes), plus each decoder layer's input, which a checkpointed
    layer keeps to recompute from."""
    from alol_ray.families import decoder_layers

    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept: dict[int, int] = {}

    def keep(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:
            kept[storage.data_ptr()] = storage.nbytes()

    def pack(t):
        keep(t)
        return t

    hooks = [layer.register_forward_pre_hook(lambda _m, args, kwargs: keep(args[0] if args else kwargs["hidden_states"]),
                                             with_kwargs=True) for layer in decoder_layers(model)]
    t0 = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(input_ids=ids, labels=ids).loss
    for hook in hooks:
        hook.remove()
    loss.backward()
    return sum(kept.values()), time.perf_counter() - t0


def activations(args) -> dict[str, dict]:
    from alol_ray.train.memory import checkpoint_activations

    torch.set_num_threads(args.threads)
    results = {}
    for checkpointing in (False, True):
        model = build_model(args)
        model.config.use_cache = False
        if checkpointing:
            checkpoint_activations(model)
        model.train()
        ids = torch.randint(0, args.vocab, (args.batch, args.seq), generator=torch.Generator().manual_seed(0))
        kept, elapsed = saved_for_backward(model, ids)
        results["on" if checkpointing else "off"] = {"activations": kept, "step_s": elapsed}
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
    parser.add_argument("--parts", default="sharding,activations", help="which measurements to run")
    args = parser.parse_args(argv)

    if "sharding" in args.parts:
        report_sharding(args, sharding(args))
    if "activations" in args.parts:
        report_activations(args, activations(args))
    return 0


def report_sharding(args, ranks) -> None:
    mib = 1 / 2**20
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


def report_activations(args, act) -> None:
    mib = 1 / 2**20
    print(f"activations, batch {args.batch} x {args.seq} tokens: checkpointing off {act['off']['activations'] * mib:.1f}"
          f" MiB in {act['off']['step_s']:.2f} s, on {act['on']['activations'] * mib:.1f} MiB in "
          f"{act['on']['step_s']:.2f} s")
    act_ratio = act["on"]["activations"] / max(act["off"]["activations"], 1)
    print(f"activation memory: checkpointing on / off = {act_ratio:.2f} (goal <= 0.5); "
          f"forward+backward time on / off = {act['on']['step_s'] / act['off']['step_s']:.2f}")


if __name__ == "__main__":
    sys.exit(main())
