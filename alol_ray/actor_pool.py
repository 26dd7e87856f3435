"""One pass of a callable class over a table's rows on an autoscaled Ray Data actor pool.

    pool_pass(frame, RewardScorer, {"components": [...]}, cfg.scoring.reward_pool, on_output=cache.write)

Rows go to ``ActorPoolStrategy(min_actors, max_actors)`` actors (Ray Data adds actors while work queues
up, up to the maximum) in batches of ``batch_size``; every finished output block is handed to
``on_output`` as it arrives, so a caller can cache it at once and an interrupted pass loses at most the
blocks in flight. Used by the scored table (rewards, reference log-probs) and the reward model (encoder
features, held-out scores).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd

from alol_ray import columns as C
from alol_ray.config import ActorPoolConfig
from alol_ray.ray_compat import no_data_progress_bars, quiet_data_errors
from alol_ray.ray_utils import init_ray


def pool_pass(frame: pd.DataFrame, fn_cls: type, ctor_kwargs: dict, pool: ActorPoolConfig, *,
              on_output: Callable[[pd.DataFrame], None], desc: str, sort_by_length: bool = True,
              batches_per_block: int = 4, ray_cfg=None) -> int:
    """Run ``fn_cls`` (a callable class taking and returning pandas batches) over every row of ``frame``;
    returns the number of rows that came out."""
    # lazy: ray, tqdm (alol_ray.actor_pool imports without them)
    import ray  # the pool's actors are Ray's
    from tqdm.auto import tqdm

    init_ray(ray_cfg)
    if sort_by_length and C.PROMPT in frame and C.RESPONSE in frame:
        # Neighbours in the order become batch mates: similar lengths waste little padding.
        length = frame[C.PROMPT].str.len() + frame[C.RESPONSE].str.len()
        frame = frame.iloc[np.argsort(length.to_numpy(), kind="stable")]
    block_rows = pool.batch_size * batches_per_block
    # Several blocks, so several actors have work and a finished block can be handed on at once.
    blocks = [frame.iloc[i:i + block_rows].reset_index(drop=True) for i in range(0, len(frame), block_rows)]
    with no_data_progress_bars():  # one tqdm bar below instead of Ray's per-operator lines
        ds = ray.data.from_pandas(blocks)
    ds = ds.map_batches(
        fn_cls,
        fn_constructor_kwargs=ctor_kwargs,
        batch_size=pool.batch_size,
        batch_format="pandas",
        compute=ray.data.ActorPoolStrategy(min_size=pool.min_actors, max_size=pool.max_actors),
        **pool_remote_args(pool),
        # Fault tolerance is Ray Data's default for actor pools (2.60): a dead actor is restarted
        # (max_restarts=-1) and its unfinished blocks retried (max_task_retries=-1).
    )
    done = 0
    with tqdm(total=len(frame), desc=desc, unit="row") as bar, quiet_data_errors():
        for out in ds.iter_batches(batch_size=None, batch_format="pandas"):
            on_output(out)
            done += len(out)
            bar.update(len(out))
    return done


def pool_remote_args(pool: ActorPoolConfig) -> dict:
    """The resources each pooled actor asks Ray for. One actor's request is reserved whole on one node (Ray
    places no actor across nodes), so a scorer of ``num_gpus: 2`` holds two GPUs of one machine, as a
    one-bundle placement group would; Ray starts it with only those GPUs visible (CUDA_VISIBLE_DEVICES)."""
    return {"num_cpus": pool.num_cpus, "num_gpus": pool.num_gpus}


def actor_kwargs(pool: ActorPoolConfig) -> dict:
    """Constructor arguments every pooled scorer takes from its pool's resources."""
    # bf16 only means something on a GPU (the scorers ignore it on CPU): read only then, as the fingerprints do
    return {"use_gpu": pool.num_gpus > 0, "bf16": pool.num_gpus > 0 and pool.bf16,
            "num_threads": max(1, int(pool.num_cpus))}
