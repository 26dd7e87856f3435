"""Generation throughput: vLLM engine vs transformers engine, same model, prompts and settings.

Both engines run behind the same ``Generator`` (Ray actors, the resources below) on the built-in task's
test prompts; each is warmed up on a few prompts, then timed on all of them. Start-up (model load, CUDA
graph capture) is reported apart and not counted. Prints generated tokens/s of each engine and
vLLM tokens/s divided by transformers tokens/s (the goal on one GPU: >= 5). Without CUDA or without
the vllm package (``pip install -e '.[vllm]'``) only the transformers engine runs, and the script says so.

    python bench/generation.py                       # tiny GPT-2 built from the task, 512 prompts
    python bench/generation.py --model runs/builtin/ref --prompts 1024 --max-new-tokens 64
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="HF policy folder; default: a tiny GPT-2 built from the built-in task")
    p.add_argument("--prompts", type=int, default=512, help="test prompts to generate for")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--max-prompt-tokens", type=int, default=96)
    p.add_argument("--batch-size", type=int, default=32, help="transformers engine batch (vLLM batches itself)")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--dtype", default="auto", help="auto | float32 | bfloat16 | float16 (both engines)")
    p.add_argument("--cpus-per-engine", type=float, default=1.0)
    p.add_argument("--engines", default="auto", help="auto (vllm if available) | transformers | both")
    p.add_argument("--tiny-layers", type=int, default=4)
    p.add_argument("--tiny-width", type=int, default=256)
    p.add_argument("--num-cpus", type=int, help="CPUs of the local Ray (default: all; RAY_ADDRESS joins a cluster)")
    p.add_argument("--out", help="also write the figures as JSON here")
    return p.parse_args()


def tiny_policy(out_dir: str, rows, n_layer: int, n_embd: int) -> str:
    from alol_ray import columns as C
    from alol_ray.models import init_tiny_policy

    train = rows[rows[C.SPLIT] == "train"]
    texts = list(train[C.PROMPT].unique()) + list(train[C.RESPONSE])
    return init_tiny_policy(out_dir, texts, vocab_size=4096, n_layer=n_layer, n_embd=n_embd, n_head=4,
                            n_positions=256, seed=0)


def run_engine(engine: str, model: str, prompts: list[str], args) -> dict:
    import torch

    from alol_ray.config import GenerationConfig
    from alol_ray.generation import Generator

    on_gpu = engine == "vllm" or torch.cuda.is_available()
    cfg = GenerationConfig(engine=engine, num_engines=1, cpus_per_engine=args.cpus_per_engine,
                           gpus_per_engine=1.0 if on_gpu else 0.0, batch_size=args.batch_size,
                           max_new_tokens=args.max_new_tokens, temperature=args.temperature, dtype=args.dtype,
                           gpu_memory_utilization=0.8)
    start = time.perf_counter()
    gen = Generator(model, cfg, max_prompt_tokens=args.max_prompt_tokens, show_progress=False)
    try:
        startup = time.perf_counter() - start
        gen.generate_with_ids(prompts[: min(len(prompts), args.batch_size)])  # warm-up (kernels, caches)
        start = time.perf_counter()
        outputs = gen.generate_with_ids(prompts)
        seconds = time.perf_counter() - start
    finally:
        gen.shutdown()
    tokens = sum(o.num_tokens for o in outputs)
    return {"engine": engine, "device": gen.engine_info[0]["device"], "dtype": gen.engine_info[0]["dtype"],
            "startup_s": round(startup, 2), "seconds": round(seconds, 3), "tokens": tokens,
            "tokens_per_s": tokens / seconds, "texts": [o.text for o in outputs]}


def main() -> int:
    args = parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import ray
    import torch

    from alol_ray import columns as C
    from alol_ray.generation import vllm_installed
    from alol_ray.tasks import builtin

    rows = builtin.build_rows(seed=0, n_train=1200, n_val=0, n_test=max(args.prompts, 1))
    prompts = list(rows[rows[C.SPLIT] == "test"].drop_duplicates(C.PROMPT_ID)[C.PROMPT])[: args.prompts]
    tmp = tempfile.TemporaryDirectory(prefix="alol-bench-gen-")
    model = args.model or tiny_policy(tmp.name, rows, args.tiny_layers, args.tiny_width)

    from alol_ray.ray_utils import init_ray

    init_ray(num_cpus=args.num_cpus)
    cuda, has_vllm = torch.cuda.is_available(), vllm_installed()
    vllm_ok = cuda and has_vllm and args.engines != "transformers"
    engines = ["transformers"] + (["vllm"] if vllm_ok else [])
    print(f"model: {model}\nprompts: {len(prompts)}, max_new_tokens: {args.max_new_tokens}, "
          f"temperature: {args.temperature}, dtype: {args.dtype}, transformers batch: {args.batch_size}")
    results = {}
    for engine in engines:
        results[engine] = run_engine(engine, model, prompts, args)
        r = results[engine]
        print(f"{engine:>12}: {r['tokens_per_s']:10.1f} tokens/s  ({r['tokens']} tokens in {r['seconds']:.2f} s "
              f"on {r['device']} {r['dtype']}; start-up {r['startup_s']:.1f} s)")
    figures = {k: {kk: vv for kk, vv in v.items() if kk != "texts"} for k, v in results.items()}
    if "vllm" in results:
        ratio = results["vllm"]["tokens_per_s"] / results["transformers"]["tokens_per_s"]
        same = sum(a == b for a, b in zip(results["vllm"]["texts"], results["transformers"]["texts"]))
        figures["ratio_vllm_over_transformers"] = ratio
        figures["same_text_fraction"] = same / len(prompts)
        print(f"vLLM / transformers tokens/s: {ratio:.2f}  (goal >= 5 on one GPU)")
        print(f"identical replies: {same}/{len(prompts)}")
    else:
        why = "no CUDA device" if not cuda else ("vllm is not installed (pip install -e '.[vllm]')"
                                                 if not has_vllm else "--engines transformers")
        figures["vllm_unavailable"] = why
        print(f"vLLM unavailable ({why}): ran the transformers engine only; no ratio")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            json.dump(figures, fh, indent=2)
    ray.shutdown()
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
