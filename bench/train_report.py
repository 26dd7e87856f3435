"""What does one ``ray.train.report`` cost, with Ray Train's default controller poll and with ours?

Ray Train v2 (2.60) hands each report to the controller through a queue of size 1 that the controller
empties when it polls its workers, every ``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S`` (default 2 s). So a
report blocks until the next poll. alol-ray sets the interval from ``ray.train_poll_s`` (default 0.1 s)
in ``init_ray``. This bench runs the same tiny TorchTrainer (``--workers`` workers, ``--reports``
metrics-only reports, nothing else) once per poll interval, in one Ray instance, and prints the mean
cost of a report and the whole ``fit()`` wall time for each, and their ratios.

    python bench/train_report.py [--workers 2] [--reports 20] [--polls 2.0,0.1]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def loop(config: dict) -> None:
    import time

    import ray.train

    t0 = time.perf_counter()
    for i in range(config["reports"]):
        ray.train.report({"i": i})
    if ray.train.get_context().get_world_rank() == 0:
        with open(config["out"], "w", encoding="utf-8") as fh:
            fh.write(str((time.perf_counter() - t0) / config["reports"]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--reports", type=int, default=20)
    p.add_argument("--polls", default="2.0,0.1", help="poll intervals (s) to compare; the first is the baseline")
    args = p.parse_args(argv)

    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from alol_ray.ray_compat import TRAIN_POLL_ENV

    ray.init(address="local", num_cpus=max(2, args.workers), include_dashboard=False, log_to_driver=False)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for poll in [float(x) for x in args.polls.split(",")]:
            os.environ[TRAIN_POLL_ENV] = str(poll)  # what init_ray does with ray.train_poll_s
            out = os.path.join(tmp, f"report-{poll}")
            t0 = time.perf_counter()
            TorchTrainer(loop, train_loop_config={"reports": args.reports, "out": out},
                         scaling_config=ScalingConfig(num_workers=args.workers, resources_per_worker={"CPU": 1}),
                         run_config=RunConfig(storage_path=tmp, name=f"poll-{poll}")).fit()
            wall = time.perf_counter() - t0
            with open(out, encoding="utf-8") as fh:
                rows.append((poll, float(fh.read()), wall))
    ray.shutdown()
    base = rows[0]
    print(f"{args.workers} workers, {args.reports} metrics-only reports per fit")
    print(f"{'poll_s':>7} {'report_s':>9} {'fit_s':>7} {'report/base':>12} {'fit/base':>9}")
    for poll, per_report, wall in rows:
        print(f"{poll:7.2f} {per_report:9.3f} {wall:7.1f} {per_report / base[1]:12.3f} {wall / base[2]:9.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
