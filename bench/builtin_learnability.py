"""Is the built-in task learnable by a tiny policy in a few CPU minutes? (plain torch, no Ray)

Builds the task, makes a tiny GPT-2 (tokenizer trained on the task's training text), fine-tunes it
with NLL on the rank-0 training replies and prints the mean built-in reward of greedy generations on
test prompts before and after, next to the reward of the data's rank-0 replies and of the best reply
per prompt (the "oracle"). The second arm (``--arms nll,positive``, the default) trains a copy on
only the rank-0 replies whose reward beats the mean rank-0 reward (advantage > 0 against a constant
value): a crude stand-in for what A-LoL's advantage filter can gain over plain NLL on this data.

    PYTHONPATH=. python bench/builtin_learnability.py --steps 400 --threads 2

Measured (seed 0, 400 steps of batch 32, 0.94M params, ~250 CPU-seconds per arm on one thread):
greedy test reward 0.84 at init -> nll 2.29 (3.00 on ordinary requests, 0.83 on sensitive ones)
vs positive 3.00; sampled nll 2.23 vs positive 2.93; data rank-0 2.26, oracle 2.95.
"""

from __future__ import annotations

import argparse
import math
import random
import tempfile
import time

import numpy as np
import torch
import transformers

from alol_ray import columns as C
from alol_ray.models import load_policy, init_tiny_policy
from alol_ray.tasks import builtin
from alol_ray.tokenization import collate, encode_pair, response_token_logps


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--n-eval", type=int, default=64)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--max-prompt-tokens", type=int, default=32)
    p.add_argument("--max-response-tokens", type=int, default=64)
    p.add_argument("--vocab-size", type=int, default=1024)
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--n-embd", type=int, default=128)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--eval-every", type=int, default=0, help="greedy test reward every N steps (0: only at the end)")
    p.add_argument("--arms", default="nll,positive", help="comma list of: nll, positive")
    p.add_argument("--sample", action="store_true", help="also report the reward of sampled (T=1) replies")
    return p.parse_args()


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], args, do_sample: bool = False) -> list[str]:
    """Replies to ``prompts``: left-padded batch, cut at the next-turn marker."""
    model.eval()
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"][-args.max_prompt_tokens:] for p in prompts]
    width = max(map(len, encoded))
    input_ids = torch.full((len(encoded), width), tokenizer.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for b, ids in enumerate(encoded):  # left padding: every prompt ends where generation starts
        input_ids[b, width - len(ids):] = torch.tensor(ids)
        attention_mask[b, width - len(ids):] = 1
    out = model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=args.max_new_tokens,
                         do_sample=do_sample, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    texts = tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
    return [t.split(builtin.NEXT_TURN_MARKER)[0].strip() for t in texts]


def mean_reward(prompts: list[str], replies: list[str]) -> float:
    return float(builtin.total_reward(builtin.score(prompts, replies)).mean())


def train(model, tokenizer, rows, args, label: str, evaluate=None) -> tuple[float, float]:
    """NLL (sum over response tokens incl. EOS, mean over the batch) on ``rows``.

    Returns (wall seconds, CPU seconds of this process): on a shared machine the CPU time is the
    honest cost; on dedicated cores wall ~= CPU / threads."""
    pairs = [encode_pair(tokenizer, p, r, args.max_prompt_tokens, args.max_response_tokens)
             for p, r in zip(rows[C.PROMPT], rows[C.RESPONSE])]
    rng = random.Random(args.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    order: list[int] = []
    model.train()
    start, cpu_start = time.perf_counter(), time.process_time()
    for step in range(args.steps):
        # warmup then cosine decay: a tiny model from scratch needs a high peak lr and a soft landing
        lr = args.lr * min(1.0, (step + 1) / args.warmup) * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        for group in optimizer.param_groups:
            group["lr"] = lr
        if len(order) < args.batch_size:
            order += rng.sample(range(len(pairs)), len(pairs))
        idx, order = order[: args.batch_size], order[args.batch_size:]
        batch = collate([pairs[i] for i in idx], tokenizer.pad_token_id)
        loss = -response_token_logps(model, batch).sum(-1).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if (step + 1) % args.log_every == 0 or step == 0:
            print(f"[{label}] step {step + 1:5d}/{args.steps}  nll/seq {loss.item():7.3f}  lr {lr:.2e}  "
                  f"{time.perf_counter() - start:6.1f}s wall  {time.process_time() - cpu_start:6.1f}s cpu",
                  flush=True)
        if evaluate is not None and args.eval_every and (step + 1) % args.eval_every == 0 and step + 1 < args.steps:
            print(f"[{label}] step {step + 1:5d}  greedy test reward {evaluate():.3f}", flush=True)
            model.train()
    return time.perf_counter() - start, time.process_time() - cpu_start


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    transformers.utils.logging.disable_progress_bar()
    torch.manual_seed(args.seed)
    rows = builtin.build_rows(seed=args.seed)
    train_rows = rows[rows[C.SPLIT] == "train"]
    rank0 = train_rows[train_rows[C.RANK] == 0]
    test = rows[rows[C.SPLIT] == "test"]
    test_prompts = list(test.drop_duplicates(C.PROMPT_ID)[C.PROMPT])[: args.n_eval]
    sensitive = np.array([builtin.is_sensitive(p) for p in test_prompts])

    best = train_rows.groupby(C.PROMPT_ID)[C.REWARD].max()
    is_best = rank0[C.REWARD].to_numpy() >= best.loc[rank0[C.PROMPT_ID]].to_numpy() - 1e-9
    print("== data (train split) ==")
    print(f"prompts {len(rank0)}  rows {len(train_rows)}  rank-0 is a best reply: {is_best.mean():.3f}")
    print(f"rank-0 reward mean {rank0[C.REWARD].mean():.3f}  oracle (best per prompt) mean {best.mean():.3f}  "
          f"all rows mean {train_rows[C.REWARD].mean():.3f}")
    print(f"rank-0 below {builtin.LOW_REWARD} (clearly bad): {(rank0[C.REWARD] < builtin.LOW_REWARD).mean():.3f}  "
          f"below the median of all rows ({train_rows[C.REWARD].median():.2f}): "
          f"{(rank0[C.REWARD] < train_rows[C.REWARD].median()).mean():.3f}  "
          f"below the rank-0 median ({rank0[C.REWARD].median():.2f}): "
          f"{(rank0[C.REWARD] < rank0[C.REWARD].median()).mean():.3f}")
    print("rank-0 component means: " + "  ".join(
        f"{name} {rank0[C.reward_column(name)].mean():.3f}" for name in builtin.COMPONENTS))

    texts = list(train_rows[C.PROMPT].unique()) + list(train_rows[C.RESPONSE])
    with tempfile.TemporaryDirectory() as tmp:
        init_tiny_policy(tmp, texts, vocab_size=args.vocab_size, n_layer=args.n_layer, n_embd=args.n_embd,
                         n_head=args.n_head, n_positions=args.max_prompt_tokens + args.max_response_tokens,
                         seed=args.seed)
        arms = [a.strip() for a in args.arms.split(",") if a.strip()]
        results = {}
        for arm in arms:
            model, tokenizer = load_policy(tmp)
            n_params = sum(p.numel() for p in model.parameters())
            if arm == "nll":
                data = rank0
            elif arm == "positive":
                data = rank0[rank0[C.REWARD] > rank0[C.REWARD].mean()]
            else:
                raise SystemExit(f"unknown arm {arm!r}")
            before = generate(model, tokenizer, test_prompts, args)
            r_before = mean_reward(test_prompts, before)
            print(f"\n== arm {arm}: {n_params / 1e6:.2f}M params, {len(data)} training replies ==")
            print(f"greedy reward before training: {r_before:.3f}   e.g. {before[0][:80]!r}")
            seconds, cpu_seconds = train(
                model, tokenizer, data, args, arm,
                evaluate=lambda: mean_reward(test_prompts, generate(model, tokenizer, test_prompts, args)))
            after = generate(model, tokenizer, test_prompts, args)
            r_after = mean_reward(test_prompts, after)
            comps = builtin.score(test_prompts, after)
            print(f"greedy reward after {args.steps} steps ({seconds:.0f}s wall, {cpu_seconds:.0f}s cpu): "
                  f"{r_after:.3f}  "
                  + "  ".join(f"{k} {v.mean():.2f}" for k, v in comps.items()))
            totals = builtin.total_reward(comps)
            print(f"  on sensitive requests {totals[sensitive].mean():.3f} ({sensitive.sum()} prompts), "
                  f"on the others {totals[~sensitive].mean():.3f}")
            for prompt, reply in list(zip(test_prompts, after))[:4]:
                print(f"   {prompt}\n     -> {reply}")
            results[arm] = (r_before, r_after, seconds, cpu_seconds)
            if args.sample:
                torch.manual_seed(args.seed)
                sampled = generate(model, tokenizer, test_prompts, args, do_sample=True)
                results[arm] += (mean_reward(test_prompts, sampled),)
                print(f"sampled (T=1) reward after: {results[arm][-1]:.3f}")

    print("\n== summary (mean built-in reward, max 3) ==")
    print(f"data rank-0 {rank0[C.REWARD].mean():.3f} | oracle {best.mean():.3f}")
    for arm, r in results.items():
        extra = f" | sampled {r[4]:.3f}" if len(r) > 4 else ""
        print(f"{arm:9s} greedy before {r[0]:.3f} -> after {r[1]:.3f} "
              f"({args.steps} steps, {r[2]:.0f}s wall, {r[3]:.0f}s cpu){extra}")


if __name__ == "__main__":
    main()
