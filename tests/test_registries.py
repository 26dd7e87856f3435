"""The engine and reward-kind tables (alol_ray/engines.py, alol_ray/reward_kinds.py): the config, preflight, the
Generator and the scorer read them, so a toy engine or reward kind registered in-process is accepted and used; the
cache identities of the built-in ones are what they were before the tables (no user's run rebuilds)."""

from __future__ import annotations

import hashlib
import json
import os
import sys

import numpy as np
import pytest

from alol_ray.config import ActorPoolConfig, GenerationConfig, RewardComponentConfig
from alol_ray.errors import ConfigError
from alol_ray.hashing import model_identity, module_identity


def _key(prefix: str, identity: dict) -> str:
    """scoring.table's key, written out: a change to how keys are built must show here."""
    blob = json.dumps(identity, sort_keys=True, default=str)
    return f"{prefix}-{hashlib.sha256(blob.encode()).hexdigest()[:20]}"


def test_reward_cache_keys_of_the_builtin_kinds_are_unchanged(tmp_path):
    """The per-row score cache key of each built-in kind is composed as before the reward-kind table: the same
    fields, the same source hashes (so cached scores of existing runs stay valid)."""
    from alol_ray.scoring.table import reward_scorer_key

    pool, gpu_pool = ActorPoolConfig(), ActorPoolConfig(num_gpus=1, bf16=True)
    model = tmp_path / "rm"
    model.mkdir()
    (model / "config.json").write_text("{}")
    hf = RewardComponentConfig(name="rm", kind="hf_classifier", model=str(model), label="pos", max_length=64)
    assert reward_scorer_key(hf, gpu_pool) == _key("hf_classifier", {
        "v": "v1", "kind": "hf_classifier", "params": {}, "model": model_identity(str(model), None), "label": "pos",
        "template": "{prompt} {response}", "max_length": 64, "truncation_side": "left", "precision": "bfloat16"})
    assert reward_scorer_key(hf, pool) != reward_scorer_key(hf, gpu_pool)
    py = RewardComponentConfig(name="f", kind="python", function="alol_ray.tasks.builtin:score", params={"a": 1})
    assert reward_scorer_key(py, pool) == _key("python", {
        "v": "v1", "kind": "python", "params": {"a": 1}, "function": "alol_ray.tasks.builtin:score",
        "source": module_identity("alol_ray.tasks.builtin")})
    scorers = module_identity("alol_ray.scoring.scorers")
    length = RewardComponentConfig(name="n", kind="length", params={"min_words": 3, "mean": 0.0, "std": 1.0})
    assert reward_scorer_key(length, pool) == _key("length", {
        "v": "v1", "kind": "length", "params": {"min_words": 3}, "source": scorers})
    for kind in ("distinct", "tfidf"):
        comp = RewardComponentConfig(name="d", kind=kind)
        assert reward_scorer_key(comp, gpu_pool) == _key(kind, {"v": "v1", "kind": kind, "params": {},
                                                                "source": scorers})
    task = RewardComponentConfig(name="t", kind="builtin_task")
    assert reward_scorer_key(task, pool) == _key("builtin_task", {
        "v": "v1", "kind": "builtin_task", "params": {}, "source": scorers,
        "task": module_identity("alol_ray.tasks.builtin")})


# ------------------------------------------------------------------------------ a toy engine, end to end

class EchoEngine:
    """A toy engine: replies "echo <global index> <device>", remembers how many calls it served."""

    def __init__(self, model_path, gen_cfg, max_prompt_tokens, num_threads, device, prompt_format):
        self.model_path, self.device, self.calls = model_path, device, 0

    def generate(self, prompts, start_index=0):
        from alol_ray.generation.postprocess import GenerationOutput

        self.calls += 1
        return [GenerationOutput(text=f"echo {start_index + i} {self.device}") for i in range(len(prompts))]

    def info(self):
        return {"engine": "echo", "calls": self.calls, "pid": os.getpid()}


@pytest.fixture
def echo_engine():
    from alol_ray.engines import ENGINES, Engine, register_engine

    engine = register_engine(Engine("echo", EchoEngine, batching="continuous",
                                    resources=lambda gen_cfg, device: {"CPU": 0.5, "GPU": 0.0}))
    missing = register_engine(Engine("echo_missing", EchoEngine, requires="alol_ray_no_such_module",
                                     install_hint="pip install echo"))
    yield engine
    ENGINES.pop(engine.name)
    ENGINES.pop(missing.name)


@pytest.fixture
def own_ray():
    """A local Ray whose workers can import this test module (the engine class is pickled by reference)."""
    import ray

    ray.shutdown()
    here = os.path.dirname(os.path.abspath(__file__))
    ray.init(address="local", num_cpus=2, include_dashboard=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1",
                                       "PYTHONPATH": os.pathsep.join([os.path.dirname(here), here])}})
    yield ray
    ray.shutdown()


def test_a_registered_engine_is_a_config_choice_and_the_generator_runs_it(echo_engine, own_ray, tiny_policy_dir):
    from alol_ray.config import RunConfig
    from alol_ray.generation import Generator, choose_engine, engine_resources
    from alol_ray.preflight import check_engine

    gen_cfg = GenerationConfig(engine="echo", num_engines=2, batch_size=1)  # the config accepts it
    with pytest.raises(ConfigError, match="generation.engine must be auto, vllm, transformers, echo or echo_missing"):
        GenerationConfig(engine="ech")
    assert choose_engine(gen_cfg, gpus=0).engine == "echo"
    assert engine_resources(gen_cfg, choose_engine(gen_cfg, gpus=0)) == {"CPU": 0.5, "GPU": 0.0}
    cfg = RunConfig()
    cfg.generation = gen_cfg
    check_engine(cfg)
    cfg.generation = GenerationConfig(engine="echo_missing")
    with pytest.raises(ConfigError, match="echo_missing but alol_ray_no_such_module is not installed: pip install echo"):
        check_engine(cfg)
    lines = []
    with Generator(tiny_policy_dir, gen_cfg, max_prompt_tokens=64, log=lines.append) as gen:
        assert gen.generate(["a", "b", "c", "d", "e"]) == [f"echo {i} cpu" for i in range(5)]
        # continuous batching: one slice per actor (not one call per batch_size=1 prompt)
        assert sorted(info["calls"] for info in own_ray.get([a.info.remote() for a in gen.actors])) == [1, 1]
    assert lines == ["[generation] engine: echo on cpu, 2 actor(s) (generation.engine=echo)"]


# ------------------------------------------------------------------------------ a toy reward kind

def shout_score(prompts, responses, *, bonus: float = 0.0) -> np.ndarray:
    """A toy reward: the count of '!' in the reply, plus ``bonus``."""
    return np.array([r.count("!") + bonus for r in responses], dtype=np.float64)


@pytest.fixture
def shout_kind():
    from alol_ray.reward_kinds import REWARD_KINDS, RewardKind, register_reward_kind

    kind = register_reward_kind(RewardKind("shout", function=shout_score))
    yield kind
    REWARD_KINDS.pop(kind.name)


def test_a_registered_reward_kind_is_a_config_choice_and_scores(shout_kind):
    from alol_ray.scoring.reward import RewardScorer, check_components
    from alol_ray.scoring.table import reward_scorer_key

    comp = RewardComponentConfig(name="loud", kind="shout", params={"bonus": 0.5})  # the config accepts it
    with pytest.raises(ConfigError, match=r"kind 'shoutt' is not one of \[.*'shout'"):
        RewardComponentConfig(name="x", kind="shoutt")
    with pytest.raises(ConfigError, match=r"shout scorer: unknown params \['volume'\]; it takes \['bonus'\]"):
        check_components([RewardComponentConfig(name="x", kind="shout", params={"volume": 1})])
    scorer = RewardScorer([comp])
    assert scorer.score(["p", "p"], ["hi!", "hey!!!"])["loud"].tolist() == [1.5, 3.5]
    # the cache key: kind, params and the function's module source
    assert reward_scorer_key(comp, ActorPoolConfig()) == _key("shout", {
        "v": "v1", "kind": "shout", "params": {"bonus": 0.5}, "source": module_identity(__name__)})


def test_the_registries_module_is_light():
    """The config reads both tables: importing them (and the config) pulls in neither torch, ray nor vllm."""
    import subprocess

    code = ("import sys, alol_ray.config, alol_ray.engines, alol_ray.reward_kinds; "
            "print(sorted(m for m in ('torch', 'ray', 'vllm', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_an_engines_identity_enters_the_generation_fingerprints(echo_engine):
    """What an engine adds to the identity of its replies reaches the fingerprints of the stages that generate
    (eval, pi_ref's cached replies, value, train); the built-in engines and auto add nothing, so the fingerprints
    of existing runs stay what they were (the section itself, as before the table)."""
    import dataclasses

    from alol_ray.config import RunConfig
    from alol_ray.engines import ENGINES, generation_identity
    from alol_ray.hashing import fingerprint
    from alol_ray.evaluation.eval_job import reference_fingerprint

    for name in ("auto", "vllm", "transformers", "echo"):
        gen_cfg = GenerationConfig(engine=name)
        assert generation_identity(gen_cfg) is gen_cfg
    cfg = RunConfig()
    cfg.generation = GenerationConfig(engine="echo")
    before = reference_fingerprint(cfg, "ref")
    assert before == fingerprint("ref-replies-v1", model_identity("ref"), cfg.generation, cfg.model.max_prompt_tokens)
    ENGINES["echo"] = dataclasses.replace(echo_engine, identity=lambda gen_cfg: {"echo_version": 2})
    assert generation_identity(cfg.generation) == {"generation": cfg.generation, "engine": {"echo_version": 2}}
    assert reference_fingerprint(cfg, "ref") != before
