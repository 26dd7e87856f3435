"""What every Ray Train worker loop here shares: per-step seeds, metric reduction over workers, one-line
console output, and the checkpoint report (the offline loop, PPO and the reward model use them)."""

from __future__ import annotations

import math
import sys
import tempfile
from typing import Any, Callable, Optional

from alol_ray.atomic import append_jsonl

# Score recorded for checkpoints taken at steps without an evaluation: finite (Ray's checkpoint
# snapshot is JSON) and below any reward, so Ray's top-k retention always keeps the evaluated ones.
NOT_EVALUATED = -1e30
SELECTION_METRIC = "selection/val_reward"


def step_seed(seed: int, step: int, rank: int) -> int:
    """The torch seed of one worker at one step: resuming needs no saved RNG state."""
    return (seed * 1_000_003 + step * 1_009 + rank) % (2**63 - 1)


def mean_over_workers(metrics: dict[str, float], world: int, device, summed: tuple[str, ...] = ()) -> dict[str, float]:
    """Metrics of the whole step: means over workers (every worker has the same keys; equal shards make the
    mean of worker means the global mean), totals for the ``summed`` keys."""
    if world == 1:
        return metrics
    # lazy: torch (alol_ray.train.worker imports without it)
    import torch
    import torch.distributed as dist

    keys = sorted(metrics)
    values = torch.tensor([metrics[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(values)
    return {k: v if k in summed else v / world for k, v in zip(keys, values.tolist())}


def all_reduce_sum(world: int) -> Optional[Callable]:
    """A function that sums a tensor over workers (None with one worker)."""
    if world == 1:
        return None
    # lazy: torch (alol_ray.train.worker imports without it)
    import torch.distributed as dist

    def reduce(t):
        t = t.clone()
        dist.all_reduce(t)
        return t

    return reduce


def broadcast(obj: Any, rank: int, world: int) -> Any:
    """Rank 0's ``obj`` on every worker."""
    if world == 1:
        return obj
    # lazy: torch (alol_ray.train.worker imports without it)
    import torch.distributed as dist

    box = [obj if rank == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def record_step(metrics: dict[str, float], step: int, metrics_path: Optional[str], tracker, report: bool) -> None:
    """A step's metrics, after the loop's own keys are set: refuse non-finite values, append one JSON line
    to metrics.jsonl, send them to the tracker, and hand them to Ray Train when ``report``."""
    # lazy: ray (alol_ray.train.worker imports without it)
    import ray.train

    if not all(math.isfinite(v) for v in metrics.values()):
        raise FloatingPointError(f"non-finite metrics at step {step}: {metrics}")
    if metrics_path:
        append_jsonl(metrics_path, metrics)
    tracker.log(metrics, step=step)
    if report:
        ray.train.report(metrics)


def say(line: str) -> None:
    """One line to the worker's stdout (Ray forwards it to the driver). Not print(): Ray Train patches print
    in its workers to also log through the root logger, which shows every line twice."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def report_checkpoint(metrics: dict, name: str, save: Optional[Callable[[str], None]]) -> None:
    """``ray.train.report`` with a checkpoint that ``save(folder)`` writes (rank 0 passes ``save``, the
    other workers None: one copy of the weights, but every worker reports, as Ray Train requires)."""
    # lazy: ray (alol_ray.train.worker imports without it)
    import ray.train

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if save is not None:
            save(tmp)
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=name)
