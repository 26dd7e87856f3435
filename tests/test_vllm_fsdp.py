"""``best/`` of an FSDP run in the vLLM engine (marker ``vllm``; deselected by default; skipped without vllm).

    bash .ci/vllm-venv && bash .ci/vllm-tier          # CPU: vLLM's CPU build in .venv-vllm

The FSDP run is tests/test_fsdp.py's setup (``alol train`` with train.strategy=fsdp on two Ray Train workers,
run straight through: its stops, resumes and killed worker are tested there): its ``best/`` is the folder rank 0
consolidated from every rank's shards. vLLM must load it as it loads any checkpoint, and generate what the
transformers engine generates from it.
"""

from __future__ import annotations

import os

import pytest
from test_fsdp import _alol_train, train_setup  # noqa: F401  (a fixture: the FSDP run's inputs)
from test_train import MAX_PROMPT
from test_vllm import _skip_reason

from alol_ray import columns as C
from alol_ray.config import GenerationConfig
from alol_ray.generation import Generator
from alol_ray.generation.hf_engine import TransformersEngine

pytestmark = [pytest.mark.vllm, pytest.mark.skipif(_skip_reason() is not None, reason=str(_skip_reason()))]


@pytest.fixture(scope="module")
def fsdp_best(train_setup):  # noqa: F811
    """best/ of one straight FSDP run (a_lol, 2 workers x 4 steps)."""
    assert _alol_train(train_setup, "name=fsdp", "train.strategy=fsdp") == 0
    return os.path.join(train_setup["root"], "runs", "fsdp", "train", "a_lol-s0", "best")


def test_fsdp_best_loads_in_vllm_and_generates_what_transformers_does(fsdp_best, builtin_rows):
    best = fsdp_best
    prompts = list(builtin_rows[builtin_rows[C.SPLIT] == "test"].drop_duplicates(C.PROMPT_ID)[C.PROMPT])[:16]
    # Greedy, no stop strings: token ids compare exactly. enforce_eager: no torch.compile warm-up.
    gen_cfg = GenerationConfig(engine="vllm", cpus_per_engine=0.5, max_new_tokens=16, batch_size=8, stop=[],
                               enforce_eager=True)
    with Generator(best, gen_cfg, max_prompt_tokens=MAX_PROMPT, show_progress=False) as gen:
        assert gen.engine == "vllm"
        on_vllm = gen.generate_with_ids(prompts)
    engine = TransformersEngine(best, gen_cfg, MAX_PROMPT, num_threads=1)
    reference = [o for start in range(0, len(prompts), 8) for o in engine.generate(prompts[start:start + 8], start)]
    assert all(o.num_tokens > 0 for o in on_vllm)
    # Float kernels differ between the engines: allow one reply that departs at a near tie.
    assert sum(a.token_ids == b.token_ids for a, b in zip(on_vllm, reference)) >= len(prompts) - 1
