"""GPU reservations that reach Ray, on a CPU machine: a local Ray that declares two (fake) GPUs.

A tensor-parallel vLLM engine reserves a placement group of one-GPU bundles on one node and runs in it, so that
vLLM's Ray executor (which reads ``ray.util.get_current_placement_group()`` inside the engine actor) puts one
shard worker in each bundle; a scoring actor of ``num_gpus: 2`` holds two GPUs of one node. No CUDA and no vLLM
here: the actors below only report what Ray gave them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from alol_ray.config import ActorPoolConfig, GenerationConfig
from alol_ray.errors import ConfigError
from alol_ray.generation.generator import (
    EngineChoice,
    choose_engine,
    engine_actor_options,
    engine_placement,
    engine_resources,
    reserve_engine,
)

VLLM_ON_GPU = EngineChoice("vllm", "cuda", "test: vLLM on GPUs")
GPU_BUILD = ("gpu", "0.32.0")
TESTS = Path(__file__).resolve().parent


def tp_cfg(tp: int, **kw) -> GenerationConfig:
    return GenerationConfig(engine="vllm", tensor_parallel_size=tp, cpus_per_engine=0.5, **kw)


@pytest.fixture(scope="module")
def ray_two_gpus():
    import ray

    # address="local": a fresh in-process cluster; GPUs declared, so Ray schedules by them without CUDA.
    ray.init(address="local", num_cpus=2, num_gpus=2, include_dashboard=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
                 (str(TESTS), str(TESTS.parent)))}})  # the probes below are imported by the workers
    yield ray
    ray.shutdown()


def test_tensor_parallel_request_and_config_checks():
    placement = engine_placement(tp_cfg(2), VLLM_ON_GPU)
    # vLLM's Ray executor takes each bundle with a GPU for one shard and refuses bundles of more than one GPU.
    assert placement.bundles == ({"CPU": 0.5, "GPU": 1.0}, {"CPU": 0.5, "GPU": 1.0})
    assert placement.strategy == "STRICT_PACK"
    assert engine_resources(tp_cfg(2), VLLM_ON_GPU) == {"CPU": 1.0, "GPU": 2.0}
    # One shard: the actor's own request, no group.
    assert engine_placement(tp_cfg(1), VLLM_ON_GPU) is None
    assert engine_actor_options(tp_cfg(1), VLLM_ON_GPU) == {"num_cpus": 0.5, "num_gpus": 1.0}
    assert engine_actor_options(tp_cfg(1), EngineChoice("vllm", "cpu", "")) == {"num_cpus": 0.5, "num_gpus": 0.0}
    # Config: transformers cannot shard; a fractional GPU per shard is not vLLM's way; each one line.
    with pytest.raises(ConfigError, match="tensor_parallel_size=2 needs generation.engine vllm"):
        GenerationConfig(engine="transformers", tensor_parallel_size=2)
    with pytest.raises(ConfigError, match="one whole GPU per shard"):
        tp_cfg(2, gpus_per_engine=1)
    # The engine resolved against the cluster: TP needs vLLM on GPUs, whatever `auto` would fall back to.
    assert choose_engine(tp_cfg(2), gpus=2, build=GPU_BUILD) == EngineChoice(
        "vllm", "cuda", "generation.engine=vllm: vLLM 0.32.0 on 2 GPU(s)")
    for engine, gpus, build in (("vllm", 0, ("cpu", "0.32.0")), ("auto", 0, GPU_BUILD), ("auto", 2, None)):
        cfg = GenerationConfig(engine=engine, tensor_parallel_size=2)
        with pytest.raises(ConfigError, match="tensor_parallel_size=2 needs vLLM on GPUs"):
            choose_engine(cfg, gpus=gpus, build=build)
    # A runtime field: it moves no fingerprint (a rerun with more shards resumes).
    from alol_ray.hashing import fingerprint

    assert fingerprint(tp_cfg(1)) == fingerprint(tp_cfg(2))
    # A scoring actor past one GPU takes whole GPUs (Ray's rule), said before any actor starts.
    with pytest.raises(ConfigError, match="num_gpus=1.5"):
        ActorPoolConfig(num_gpus=1.5)


class ShardProbe:
    """Stands in for the vLLM engine actor: reports its placement group, and starts one child per bundle with
    one GPU each, as vLLM's Ray executor starts its shard workers (without naming the group: it is captured)."""

    def placement(self) -> dict:
        import ray

        group = ray.util.get_current_placement_group()
        return {"group": group.id.hex() if group else None, "gpus": ray.get_gpu_ids()}

    def shard_gpus(self, n: int) -> list:
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        group = ray.util.get_current_placement_group()

        @ray.remote(num_cpus=0, num_gpus=1)
        def shard():
            return ray.get_gpu_ids()

        return ray.get([shard.options(scheduling_strategy=PlacementGroupSchedulingStrategy(
            placement_group=group, placement_group_bundle_index=i)).remote() for i in range(n)])


def test_tensor_parallel_engine_runs_in_its_placement_group(ray_two_gpus):
    ray = ray_two_gpus
    from ray.util.placement_group import placement_group_table, remove_placement_group

    group, options = reserve_engine(tp_cfg(2), VLLM_ON_GPU)
    try:
        table = placement_group_table(group)
        assert table["state"] == "CREATED" and table["strategy"] == "STRICT_PACK"
        assert list(table["bundles"].values()) == [{"CPU": 0.5, "GPU": 1.0}, {"CPU": 0.5, "GPU": 1.0}]
        assert ray.available_resources().get("GPU", 0) == 0  # both GPUs are the group's now
        probe = ray.remote(ShardProbe).options(**options).remote()
        where = ray.get(probe.placement.remote())
        assert where == {"group": group.id.hex(), "gpus": []}  # in the group, holding no GPU of its own
        # Each shard worker lands in its own bundle with its own GPU: the two GPUs, once each.
        assert sorted(g for ids in ray.get(probe.shard_gpus.remote(2)) for g in ids) == [0, 1]
        ray.kill(probe)
    finally:
        remove_placement_group(group)


class GpuIds:
    """A pooled callable class that reports the GPUs Ray gave its actor."""

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        import ray

        return batch.assign(gpus=",".join(str(g) for g in sorted(ray.get_gpu_ids())))


def test_scoring_actor_holds_its_gpus(ray_two_gpus):
    from alol_ray.actor_pool import pool_pass

    pool = ActorPoolConfig(min_actors=1, max_actors=1, batch_size=2, num_cpus=0.5, num_gpus=2)
    out = []
    pool_pass(pd.DataFrame({"x": range(4)}), GpuIds, {}, pool, on_output=out.append, desc="gpus",
              sort_by_length=False)
    assert set(pd.concat(out)["gpus"]) == {"0,1"}
