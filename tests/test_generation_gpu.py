"""vLLM engine vs transformers engine on one GPU (marker gpu; needs CUDA and `pip install -e '.[vllm]'`).

    python -m pytest -q -m gpu tests/test_generation_gpu.py

The policy is the session's tiny GPT-2, first fine-tuned for a few hundred NLL steps on the built-in
task's rank-0 replies (seconds on a GPU) so that greedy replies are varied text, not one repeated
token: agreement on degenerate output would prove nothing. Both engines run in float32 by default
(ALOL_GPU_DTYPE overrides) so that the only differences left are kernel rounding.
"""

from __future__ import annotations

import importlib.util
import os
import shutil

import pytest

from alol_ray import columns as C
from alol_ray.config import GenerationConfig
from alol_ray.generation import Generator

pytestmark = pytest.mark.gpu

DTYPE = os.environ.get("ALOL_GPU_DTYPE", "float32")
MAX_PROMPT_TOKENS = 96
MAX_NEW_TOKENS = 32


def needs_vllm():
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vllm is not installed (pip install -e '.[vllm]')")


def cfg(engine: str, **kw) -> GenerationConfig:
    base = dict(engine=engine, gpus_per_engine=1.0, cpus_per_engine=1.0, batch_size=64,
                max_new_tokens=MAX_NEW_TOKENS, dtype=DTYPE, gpu_memory_utilization=0.3)
    base.update(kw)
    return GenerationConfig(**base)


def finetune(src: str, dst: str, rows, steps: int = 300, seed: int = 0, device: str = "cuda") -> str:
    """A copy of the policy at ``src`` trained by NLL on the rank-0 training replies."""
    import torch

    from alol_ray.models import load_policy
    from alol_ray.tokenization import collate, encode_pair, response_token_logps

    torch.manual_seed(seed)
    model, tok = load_policy(src, dtype="float32", device=device)
    model.train()
    best = rows[(rows[C.SPLIT] == "train") & (rows[C.RANK] == 0)]
    pairs = [encode_pair(tok, p, r, MAX_PROMPT_TOKENS, 48) for p, r in zip(best[C.PROMPT], best[C.RESPONSE])]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(len(pairs), (32,), generator=gen).tolist()
        batch = collate([pairs[i] for i in idx], tok.pad_token_id).to(device)
        logps = response_token_logps(model, batch)
        loss = -(logps * batch.response_mask).sum() / batch.response_mask.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.save_pretrained(dst)
    tok.save_pretrained(dst)
    return dst


@pytest.fixture(scope="module")
def trained_policy(tiny_policy_dir, builtin_rows, tmp_path_factory):
    return finetune(tiny_policy_dir, str(tmp_path_factory.mktemp("trained")), builtin_rows)


@pytest.fixture(scope="module")
def test_prompts(builtin_rows):
    from alol_ray.tasks import builtin

    rows = builtin.build_rows(seed=1, n_train=0, n_val=0, n_test=200)
    return list(rows.drop_duplicates(C.PROMPT_ID)[C.PROMPT])


def greedy(engine: str, model: str, prompts: list[str], **kw):
    with Generator(model, cfg(engine, **kw), max_prompt_tokens=MAX_PROMPT_TOKENS, show_progress=False) as gen:
        assert gen.engine == engine
        return gen.generate_with_ids(prompts)


def test_vllm_and_transformers_agree_on_greedy_text(ray_local, trained_policy, test_prompts):
    needs_vllm()
    hf = greedy("transformers", trained_policy, test_prompts)
    vl = greedy("vllm", trained_policy, test_prompts)
    distinct = len({o.text for o in hf})
    assert distinct >= 10, f"only {distinct} distinct greedy replies: the fine-tune did not take"
    same = sum(a.text == b.text for a, b in zip(hf, vl)) / len(test_prompts)
    print(f"identical greedy replies: {same:.3f} of {len(test_prompts)}")
    assert same >= 0.95
    # Same post-processing: where texts agree, so do the response token ids.
    for a, b in zip(hf, vl):
        if a.text == b.text and a.finish_reason == b.finish_reason:
            assert a.token_ids == b.token_ids


def test_vllm_sampling_is_seeded_and_weights_reload(ray_local, trained_policy, tiny_policy_dir, test_prompts,
                                                    tmp_path):
    needs_vllm()
    prompts = test_prompts[:64]
    sampling = cfg("vllm", temperature=1.0, top_p=0.9, seed=5, num_engines=1)
    with Generator(trained_policy, sampling, max_prompt_tokens=MAX_PROMPT_TOKENS, show_progress=False) as gen:
        first = gen.generate_with_ids(prompts)
        assert gen.generate_with_ids(prompts) == first
        # PPO-style reload: the untrained weights (same tokenizer) into the running engine.
        untrained = str(tmp_path / "untrained")
        shutil.copytree(tiny_policy_dir, untrained)
        gen.load_weights(untrained)
        reloaded = gen.generate_with_ids(prompts)
    assert reloaded != first
    with Generator(untrained, sampling, max_prompt_tokens=MAX_PROMPT_TOKENS, show_progress=False) as fresh:
        assert fresh.generate_with_ids(prompts) == reloaded
