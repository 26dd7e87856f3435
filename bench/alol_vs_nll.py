"""A-LoL vs NLL on the built-in task at the size of the default-tier test, across task seeds.

For each seed: `alol compare` with methods [nll, a_lol] at the sizes of
``tests/test_alol_vs_nll.py::SIZES`` (a new task, pi_ref, scored table, value head and both runs per seed),
then the paired difference per test prompt (a_lol's reply reward minus nll's reply reward to the same prompt)
and its bootstrap 95% interval. The test asserts a threshold on the mean paired difference of seed 0;
this bench is how that threshold was chosen (the smallest mean over the seeds, with margin).

    PYTHONPATH=. python bench/alol_vs_nll.py --seeds 0 1 2 3

Measured 2026-12-02 on 2 CPU cores shared with another job the whole time (a default-tier test run or an HH
run: load 3-5, so the wall times are upper bounds; each seed builds its own task, pi_ref, scored table and
value head, then trains and evaluates both methods):

    | task seed | prompts | mean a_lol - nll | 95% CI           | wall s |
    |---|---|---|---|---|
    | 0         | 48      | +0.377           | +0.065 .. +0.699 | 468    |
    | 1         | 48      | +0.201           | -0.028 .. +0.465 | 516    |
    | 2         | 48      | +0.299           | +0.028 .. +0.566 | 535    |
    | 3         | 48      | +0.325           | +0.087 .. +0.578 | 455    |

Smallest mean: +0.201; the test's threshold is 0.1. At smaller sizes (a 2-layer, 64-wide model, 120
reference steps, 400 training prompts) pi_ref never learned the task and both policies babbled: seed 0 gave
+0.498 but seed 1 +0.007, so those sizes were not used.

``--same-rows``: the sizes of ``tests/test_alol_loss.py`` (the same, with nll given A-LoL's sampler,
``train.sampler=good_priority``, and both methods the same step budget): the two runs draw the same rows at
every step and differ only in the objective. Measured 2026-12-06 on 2 CPU cores shared with three other
sessions the whole time (load 8-30; wall times are upper bounds and include waiting for CPUs; seed 0's pi_ref,
table and value head were built by an earlier, interrupted invocation):

    | task seed | prompts | mean a_lol - nll | 95% CI           | a_lol - reference | nll - reference | wall s |
    |---|---|---|---|---|---|---|
    | 0         | 48      | -0.193           | -0.337 .. -0.024 | +0.644            | +0.837          | 264    |
    | 1         | 48      | -0.395           | -0.499 .. -0.281 | +0.396            | +0.791          | 1139   |
    | 2         | 48      | -0.246           | -0.376 .. -0.093 | +0.324            | +0.569          | 1305   |
    | 3         | 48      | -0.229           | -0.344 .. -0.125 | +0.684            | +0.913          | 643    |

On the same rows, A-LoL's weighted, clipped objective learns less than plain NLL on every seed: the gain of
A-LoL over NLL measured without ``--same-rows`` comes from the rows it trains on (the sampler), not from its
loss. The test asserts what held on every seed (the objective changes the result by at least half of 0.193,
and A-LoL beats pi_ref by at least half of 0.324), not the paper's direction.

    PYTHONPATH=. python bench/alol_vs_nll.py --same-rows --seeds 0 1 2 3
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import sys
import tempfile
import time

import numpy as np

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path[:0] = [REPO, os.path.join(REPO, "tests")]  # the tests' sizes (they import each other by module name)

from alol_ray.evaluation.metrics import bootstrap_ci  # noqa: E402
from test_alol_loss import SIZES as SAME_ROWS_SIZES  # noqa: E402
from test_alol_vs_nll import SIZES, paired_differences  # noqa: E402


# --smoke: every stage at toy size (seconds each), so CI runs the bench's code path (tests/test_benches.py).
SMOKE = ["data.builtin_train_prompts=60", "data.builtin_eval_prompts=8", "reference.train.steps=4", "train.steps=2",
         "eval.max_prompts=8", "eval.bootstrap_samples=50", "generation.max_new_tokens=8", "value.epochs=2"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    p.add_argument("--storage", default=None,
                   help="where the runs go, kept (default: a temporary folder, deleted at the end)")
    p.add_argument("--same-rows", action="store_true",
                   help="the sizes of tests/test_alol_loss.py: nll with A-LoL's sampler and step budget")
    p.add_argument("--smoke", action="store_true", help="toy sizes on top (the bench's code path, no figure)")
    args = p.parse_args(argv)
    sizes = (SAME_ROWS_SIZES if args.same_rows else SIZES) + (SMOKE if args.smoke else [])

    from alol_ray.cli import main as alol

    storage = args.storage
    if storage is None:  # the runs are only read for the table below; a named --storage keeps them
        storage = tempfile.mkdtemp(prefix="alol_vs_nll_")
        atexit.register(shutil.rmtree, storage, ignore_errors=True)
    rows = []
    for seed in args.seeds:
        start = time.time()
        argv = ["compare", f"storage={storage}", f"name=s{seed}", f"data.builtin_seed={seed}", "ray.num_cpus=2", *sizes]
        if alol(argv) != 0:
            print(f"seed {seed}: alol compare failed", file=sys.stderr)
            return 1
        run = os.path.join(storage, f"s{seed}")
        diff = paired_differences(run)
        mean = float(np.mean(diff))
        lo, hi = bootstrap_ci(diff, n_samples=2000, seed=seed)
        # What each method gained over pi_ref on the same prompts (both learn; which learns more is the question).
        gains = [float(np.mean(paired_differences(run, m, "reference"))) for m in ("a_lol", "nll")]
        rows.append((seed, len(diff), mean, lo, hi, *gains, time.time() - start))
        print(f"seed {seed}: a_lol - nll = {mean:+.3f} (95% CI {lo:+.3f} .. {hi:+.3f}) over {len(diff)} prompts; "
              f"a_lol - reference {gains[0]:+.3f}, nll - reference {gains[1]:+.3f}; {time.time() - start:.0f} s",
              flush=True)
    print("\n| task seed | prompts | mean a_lol - nll | 95% CI | a_lol - reference | nll - reference | wall s |\n"
          "|---|---|---|---|---|---|---|")
    for seed, n, mean, lo, hi, over_a, over_n, wall in rows:
        print(f"| {seed} | {n} | {mean:+.3f} | {lo:+.3f} .. {hi:+.3f} | {over_a:+.3f} | {over_n:+.3f} | {wall:.0f} |")
    means = [r[2] for r in rows]
    print(f"\nsmallest a_lol - reference over {len(rows)} seeds: {min(r[5] for r in rows):+.3f}; "
          f"smallest |a_lol - nll|: {min(abs(m) for m in means):.3f}")
    print(f"smallest mean paired difference over {len(rows)} seeds: {min(means):+.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
