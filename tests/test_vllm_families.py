"""The family matrix on vLLM's CPU build (marker ``vllm``; ``bash .ci/vllm-tier``): for Llama, Qwen2, Mistral,
GPT-NeoX and Gemma (``tests/family_models.py``), greedy token ids from vLLM equal the transformers engine's, and
PPO's in-place weight update (``Generator.update_weights`` with the policy's Hugging Face names, which vLLM maps
onto its fused q/k/v and gate/up weights) equals a fresh engine on the new weights. An architecture vLLM cannot
run falls back to transformers under ``engine: auto`` and is one line under ``engine: vllm``.

One engine per family (start-up dominates): it starts fresh on the new weights, takes the old ones in place, then
the new ones again, which must give exactly the fresh engine's replies.

The vllm tier (CI) runs Llama, GPT-NeoX and Gemma: three distinct model classes in vLLM, with three ways of mapping
Hugging Face names onto vLLM's weights. Mistral and Qwen2 load through the same stacked q/k/v and gate/up mapping
as Llama in vLLM, so they are in the slow tier (``pytest -m "vllm and slow"``) to keep CI's time down.
"""

from __future__ import annotations

import pytest
from family_models import FAMILIES, build_family, build_gpt_neo
from test_vllm import _skip_reason

from alol_ray.config import GenerationConfig
from alol_ray.errors import UserError
from alol_ray.families import TEXT, PromptFormat, has_chat_template, response_end_id
from alol_ray.generation import Generator
from alol_ray.generation.hf_engine import TransformersEngine

pytestmark = [pytest.mark.vllm, pytest.mark.skipif(_skip_reason() is not None, reason=str(_skip_reason()))]

MAX_PROMPT, MAX_NEW = 160, 24
PROMPTS = [
    "### Human: What is the capital of France? ### Assistant:",
    "### Human: Any tips for gardening? ### Assistant: Pull the weeds. ### Human: And on a small budget? "
    "### Assistant:",
    "How should I practice chess late at night?",
    "### Human: Hello there ### Assistant:",
    "### Human: Could you tell me more about it? ### Assistant:",
    "### Human: Thanks for asking! ### Assistant:",
]
TRAIN = [(PROMPTS[0], "The capital of France is Paris."), (PROMPTS[1], "Sure, happy to help!"),
         (PROMPTS[2], "Play short games every day."), (PROMPTS[3], "Hi! How can I help you today?")]


def cfg(**kw) -> GenerationConfig:
    base = dict(engine="vllm", cpus_per_engine=1, max_new_tokens=MAX_NEW, enforce_eager=True, batch_size=8, stop=[])
    base.update(kw)
    return GenerationConfig(**base)


def trained(src: str, dst, pairs, steps: int, fmt: PromptFormat) -> str:
    """A copy of ``src`` trained by NLL on ``pairs``: replies that depend on the prompt, with clear margins
    (a random toy model's near-tied logits would make fp32 rounding pick tokens)."""
    import torch

    from alol_ray.models import load_policy
    from alol_ray.tokenization import collate, encode_pair, response_token_logps

    torch.manual_seed(0)
    model, tok = load_policy(src)
    batch = collate([encode_pair(tok, p, r, MAX_PROMPT, 32, fmt) for p, r in pairs], tok.pad_token_id)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = -response_token_logps(model, batch).sum() / batch.response_mask.sum()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(dst)
    tok.save_pretrained(dst)
    return str(dst)


def transformers_replies(folder: str, fmt: PromptFormat):
    engine = TransformersEngine(folder, cfg(engine="transformers"), MAX_PROMPT, num_threads=1, prompt_format=fmt)
    return engine.generate(PROMPTS)


def state_of(folder: str) -> dict:
    from alol_ray.models import load_policy

    return load_policy(folder, dtype="float32")[0].state_dict()


def assert_same_greedy(vllm_out, hf_out, folder: str, fmt: PromptFormat):
    """Token for token, except where the two engines' fp32 kernels may round a near tie differently: then the
    first divergence must sit where transformers' two candidate logits are within 1e-3."""
    import torch

    from alol_ray.models import load_policy
    from alol_ray.tokenization import encode_prompt

    model, tok = None, None
    for prompt, a, b in zip(PROMPTS, vllm_out, hf_out):
        if a == b:
            continue
        model, tok = model or load_policy(folder)[0], tok or load_policy(folder)[1]
        t = next(i for i, (x, y) in enumerate(zip(a.token_ids, b.token_ids)) if x != y)
        ids = encode_prompt(tok, prompt, MAX_PROMPT, fmt) + a.token_ids[:t]
        with torch.inference_mode():
            logits = model(torch.tensor([ids])).logits[0, -1]
        gap = abs(float(logits[a.token_ids[t]] - logits[b.token_ids[t]]))
        assert gap < 1e-3, (prompt, a, b, gap)
    assert sum(a == b for a, b in zip(vllm_out, hf_out)) >= len(PROMPTS) - 1


# Same weight mapping as Llama in vLLM (see the docstring): run with -m "vllm and slow".
LLAMA_LIKE = ("mistral", "qwen2")


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in LLAMA_LIKE else n for n in FAMILIES])
def test_greedy_ids_and_in_place_updates_match_on_vllm(ray_local, tmp_path, name):
    base = build_family(name, tmp_path / "base")
    fmt = PromptFormat(chat_template=True) if has_chat_template(
        __import__("transformers").AutoTokenizer.from_pretrained(base)) else TEXT
    old = trained(base, tmp_path / "old", TRAIN, 40, fmt)
    new = trained(old, tmp_path / "new", [(p, "I am sorry, I do not know.") for p, _ in TRAIN], 15, fmt)
    with Generator(new, cfg(), max_prompt_tokens=MAX_PROMPT, prompt_format=fmt, show_progress=False) as gen:
        assert gen.engine == "vllm"
        fresh = gen.generate_with_ids(PROMPTS)
        assert_same_greedy(fresh, transformers_replies(new, fmt), new, fmt)
        gen.update_weights(state_of(old))
        before = gen.generate_with_ids(PROMPTS)
        assert_same_greedy(before, transformers_replies(old, fmt), old, fmt)
        assert sum(a.token_ids != b.token_ids for a, b in zip(before, fresh)) >= len(PROMPTS) // 2
        gen.update_weights(state_of(new))
        assert gen.generate_with_ids(PROMPTS) == fresh  # in place == a fresh engine on the same weights
    # The trained France reply ends at the response's end token (the chat template's end of turn) on vLLM too.
    tok = __import__("transformers").AutoTokenizer.from_pretrained(old)
    assert before[0].text == "The capital of France is Paris." and before[0].finish_reason == "eos"
    assert before[0].token_ids[-1] == response_end_id(tok, fmt)


def test_an_architecture_vllm_cannot_run(ray_local, tmp_path):
    """GPT-Neo: engine auto falls back to transformers, saying so in one line; engine vllm is one line (exit 2
    through the CLI)."""
    folder = build_gpt_neo(tmp_path / "neo")
    lines: list[str] = []
    with Generator(folder, cfg(engine="auto"), max_prompt_tokens=MAX_PROMPT, show_progress=False,
                   log=lines.append) as gen:
        assert gen.engine == "transformers" and gen.engine_info[0]["engine"] == "transformers"
        assert len(gen.generate(PROMPTS[:2])) == 2
    fallback = [line for line in lines if "cannot run GPTNeoForCausalLM" in line]
    assert len(fallback) == 1 and fallback[0].startswith("[generation] engine: transformers"), lines
    with pytest.raises(UserError, match="generation.engine=vllm, but vLLM .* cannot run GPTNeoForCausalLM") as err:
        Generator(folder, cfg(engine="vllm"), max_prompt_tokens=MAX_PROMPT, show_progress=False)
    assert "\n" not in str(err.value)
