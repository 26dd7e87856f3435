"""Cost of one optimizer step per method, side by side on the same batches and model.

    python bench/step_cost.py                       # tiny GPT-2 on the built-in task, CPU
    python bench/step_cost.py --model runs/x/ref --device cuda --batch 16
    python bench/step_cost.py --model models/smollm2-135m-instruct --lora --chat-template --batch 4 \
        --max-prompt 64 --max-response 24 --rounds 3 --steps 1     # a pretrained instruct model with LoRA

Claim checked: A-LoL reads pi_ref's log-probs from the scored table, so a step costs what an NLL step
costs (goal: a_lol / nll <= 1.10). The reference implementation runs pi_ref forward every step
(``a_lol+ref_fwd`` here), which is what the precomputed column saves.

Each method trains its own copy of the same starting model with AdamW through the training loop's
code path (``Method.compute`` -> backward -> clip -> step). Methods are timed in interleaved rounds
and the median per-step time is reported, so load changes on a shared machine hit every method alike.
``--lora`` trains LoRA adapters (on the family's targets, ``families.lora_target_modules``) on a frozen base, as
``model.lora.enabled`` does; ``--chat-template`` encodes the prompts with the model's chat template
(``model.chat_template``), the responses closed by its end-of-turn token.

Measured 2026-12-06 on SmolLM2-135M-Instruct (from PyPI, ``alol model import``), LoRA r 16 on its 7 linear layers
per decoder layer (4.9 M of 139 M parameters trained), batch 4 (~250 tokens), ``--threads 1 --rounds 5 --steps 1``,
2 CPU cores shared with other jobs (load 7-8):

    nll 8.97 s/step, a_lol 9.62 (1.07 x nll), a_lol_seq 7.22 (0.80), a_lol+ref_fwd 13.67 (1.52)

a_lol and a_lol_seq do the same work, so their gap (0.80 vs 1.07) is the noise of a shared machine at 5 rounds;
a pi_ref forward every step (the reference code) is the one clear extra cost.
"""

from __future__ import annotations

import argparse
import atexit
import copy
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

METHODS = ("nll", "a_lol", "a_lol_seq", "a_lol+ref_fwd")


def build_batches(model_dir: str, n_batches: int, batch_size: int, max_prompt: int, max_response: int, device,
                  fmt=None):
    """Batches of rank-0 built-in rows with ref_token_logps computed by the starting model (pi_ref here), prompts
    encoded with ``fmt`` (text, or the chat template)."""
    import numpy as np
    import torch

    from alol_ray import columns as C
    from alol_ray.models import load_policy
    from alol_ray.tasks import builtin
    from alol_ray.tokenization import collate, encode_pair, response_token_logps
    from alol_ray.registry import get_method
    from alol_ray.train.methods import collate_units

    rows = builtin.build_rows(seed=0, n_train=n_batches * batch_size, n_val=8, n_test=8)
    frame = rows[(rows[C.SPLIT] == "train") & (rows[C.RANK] == 0)].reset_index(drop=True)
    ref, tok = load_policy(model_dir)
    ref.eval()
    logps = []
    with torch.no_grad():
        for start in range(0, len(frame), 64):
            chunk = frame.iloc[start:start + 64]
            pb = collate([encode_pair(tok, p, r, max_prompt, max_response, fmt)
                          for p, r in zip(chunk[C.PROMPT], chunk[C.RESPONSE])], tok.pad_token_id)
            lp = response_token_logps(ref, pb)
            logps += [lp[i, :n].tolist() for i, n in enumerate(pb.response_lengths.tolist())]
    frame[C.REF_TOKEN_LOGPS] = logps
    frame[C.ADVANTAGE] = frame[C.REWARD] - frame[C.REWARD].mean() + 0.5  # mostly positive: every row trains
    columns = tuple(sorted(set(get_method("a_lol").columns) | set(get_method("a_lol_seq").columns)))
    batches = [collate_units(frame, [np.array([i]) for i in range(b * batch_size, (b + 1) * batch_size)], tok,
                             max_prompt_tokens=max_prompt, max_response_tokens=max_response, columns=columns,
                             fmt=fmt).to(device)
               for b in range(n_batches)]
    return batches, tok


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="policy folder (default: a tiny GPT-2 built on the built-in task)")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--max-prompt", type=int, default=96)
    parser.add_argument("--max-response", type=int, default=48)
    parser.add_argument("--batches", type=int, default=4, help="distinct batches cycled through")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds")
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per method per round")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    parser.add_argument("--lora", action="store_true", help="train LoRA adapters (r 16, the family's targets)")
    parser.add_argument("--chat-template", action="store_true", help="prompts through the model's chat template")
    args = parser.parse_args(argv)

    import torch

    from alol_ray.config import TrainConfig
    from alol_ray.families import TEXT, PromptFormat, lora_target_modules
    from alol_ray.models import init_tiny_policy, load_policy
    from alol_ray.tokenization import response_token_logps
    from alol_ray.registry import get_method

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model_dir = args.model
    if model_dir is None:
        from alol_ray import columns as C
        from alol_ray.tasks import builtin

        rows = builtin.build_rows(seed=0, n_train=400, n_val=8, n_test=8)
        tmp = tempfile.mkdtemp(prefix="step_cost_")
        atexit.register(shutil.rmtree, tmp, ignore_errors=True)
        model_dir = init_tiny_policy(tmp,
                                     list(rows[C.PROMPT].unique()) + list(rows[C.RESPONSE]),
                                     vocab_size=args.vocab, n_layer=args.layers, n_embd=args.width, n_head=4,
                                     n_positions=256, seed=0)
    fmt = PromptFormat(chat_template=True) if args.chat_template else TEXT
    batches, _ = build_batches(model_dir, args.batches, args.batch, args.max_prompt, args.max_response, device, fmt)
    base, _ = load_policy(model_dir)
    for module in base.modules():  # as the training loop does (train.disable_dropout)
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    base.to(device).train()
    reference = copy.deepcopy(base).eval().requires_grad_(False)
    if args.lora:  # as train/policy.py builds a LoRA policy: adapters on the family's linear layers, base frozen
        import peft

        base = peft.get_peft_model(base, peft.LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, task_type="CAUSAL_LM",
                                                         target_modules=lora_target_modules(base)))
    tc = TrainConfig()

    runners = {}
    for name in METHODS:
        model = copy.deepcopy(base)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
        method = get_method(name.split("+")[0])
        runners[name] = (model, opt, method, method.make_params(tc), name.endswith("+ref_fwd"))

    def step(name: str, batch) -> None:
        model, opt, method, params, ref_forward = runners[name]
        if ref_forward:  # what the reference code does every step instead of reading the table
            with torch.no_grad():
                batch.ref_logps = response_token_logps(reference, batch.policy)
        loss, _ = method.compute(model, batch, params, None)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], tc.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    table_logps = [b.ref_logps.clone() for b in batches]
    for name in METHODS:  # warm-up: allocator, autograd graph caches
        step(name, batches[0])
        batches[0].ref_logps = table_logps[0].clone()
    per_step = {name: [] for name in METHODS}
    for r in range(args.rounds):
        order = METHODS if r % 2 == 0 else METHODS[::-1]  # alternate order: no method always runs first
        for name in order:
            sync()
            t0 = time.perf_counter()
            for s in range(args.steps):
                i = (r * args.steps + s) % len(batches)
                batches[i].ref_logps = table_logps[i]
                step(name, batches[i])
            sync()
            per_step[name].append((time.perf_counter() - t0) / args.steps)
    for b, lp in zip(batches, table_logps):
        b.ref_logps = lp

    n_params = sum(p.numel() for p in base.parameters())
    n_trained = sum(p.numel() for p in base.parameters() if p.requires_grad)
    tokens = sum(int(b.policy.attention_mask.sum()) for b in batches) / len(batches)
    median = {name: statistics.median(times) for name, times in per_step.items()}
    print(f"model {model_dir} ({n_params / 1e6:.1f} M parameters, {n_trained / 1e6:.2f} M trained"
          f"{', LoRA' if args.lora else ''}{', chat template' if args.chat_template else ''}) on {device}, "
          f"batch {args.batch} (~{tokens:.0f} tokens), {args.rounds} rounds x {args.steps} steps, median per step:")
    print(f"{'method':<16}{'ms/step':>10}{'vs nll':>9}")
    for name in METHODS:
        print(f"{name:<16}{1e3 * median[name]:>10.1f}{median[name] / median['nll']:>9.3f}")
    ratio = median["a_lol"] / median["nll"]
    print(f"a_lol / nll = {ratio:.3f} (goal <= 1.10: {'met' if ratio <= 1.10 else 'NOT met'}); "
          f"a reference forward per step would cost {median['a_lol+ref_fwd'] / median['nll']:.3f} x nll")
    print(json.dumps({"ms_per_step": {k: round(1e3 * v, 2) for k, v in median.items()},
                      "ratio_to_nll": {k: round(v / median["nll"], 4) for k, v in median.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
