"""Bytes that one training checkpoint of the demo's policy sends to a bucket (``storage=s3://...``).

Builds the demo's base policy (``alol demo``'s model.tiny sizes on the built-in task), takes one AdamW step
(so the optimizer state has its moment buffers, as in every checkpoint after step 0), writes the checkpoint
exactly as a Train worker does (``alol_ray.train.checkpoint.save_checkpoint``), and pushes it to a real
S3-compatible server (moto's, started here on 127.0.0.1) through ``alol_ray.storage.push``, the code path
that pyarrow's S3 filesystem takes for Ray Train's own upload too. Prints the bytes per file and in all.

    python bench/checkpoint_bytes.py [--config configs/builtin.yaml] [override ...]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    import torch

    from alol_ray import storage
    from alol_ray.commands.demo import DEMO_OVERRIDES
    from alol_ray.config import load_config
    from alol_ray.models import load_policy, tiny_policy_from_rows
    from alol_ray.tasks import builtin
    from alol_ray.train.checkpoint import save_checkpoint
    from alol_ray.train.policy import make_optimizer

    cfg = load_config(args.config, [*DEMO_OVERRIDES, *args.overrides])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                      AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}")
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        import boto3

        boto3.client("s3").create_bucket(Bucket="bench")
        with tempfile.TemporaryDirectory() as tmp:
            rows = builtin.build_rows(seed=cfg.data.builtin_seed, n_train=cfg.data.builtin_train_prompts,
                                      n_val=cfg.data.builtin_eval_prompts, n_test=cfg.data.builtin_eval_prompts)
            rows_path = os.path.join(tmp, "rows.parquet")
            rows.to_parquet(rows_path)
            policy_dir = tiny_policy_from_rows(os.path.join(tmp, "policy"), rows_path, cfg.model.tiny)
            model, tokenizer = load_policy(policy_dir)
            optimizer = make_optimizer(list(model.parameters()), cfg.train)
            batch = tokenizer(["hello there"], return_tensors="pt")
            model(**batch, labels=batch["input_ids"]).loss.backward()
            optimizer.step()
            checkpoint = save_checkpoint(os.path.join(tmp, "checkpoint-0000001"), model, tokenizer, optimizer,
                                         {"step": 1})
            sizes = {os.path.relpath(os.path.join(root, f), checkpoint): os.path.getsize(os.path.join(root, f))
                     for root, _, files in os.walk(checkpoint) for f in files}
            start = time.perf_counter()
            pushed = storage.push(checkpoint, "s3://bench/runs/checkpoint-0000001")
            seconds = time.perf_counter() - start
        params = sum(p.numel() for p in model.parameters())
        for rel in sorted(sizes, key=sizes.get, reverse=True):
            print(f"{sizes[rel]:>12,d}  {rel}")
        total = sum(sizes.values())
        print(f"policy: {params:,d} parameters (model.tiny {cfg.model.tiny.n_layer} layers x {cfg.model.tiny.n_embd}, "
              f"vocab {cfg.model.tiny.vocab_size}); optimizer {cfg.train.optimizer}")
        print(f"one checkpoint: {len(pushed)} files, {total:,d} bytes ({total / 2**20:.2f} MiB), "
              f"pushed to a local S3 server in {seconds:.2f} s; torch {torch.__version__}")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
