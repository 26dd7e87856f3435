"""SmolLM2-135M-Instruct on vLLM's CPU build (marker ``vllm``; ``bash .ci/vllm-tier``): the vLLM half of
``tests/test_smollm2.py``. With its chat template, vLLM's greedy replies to 16 prompts (the France question and
held-out HH dialogues) are transformers' token for token (up to fp32 near-ties) and stop at ``<|im_end|>``; the
France reply says Paris, and still does after a LoRA a_lol step merged into the running engine in place (the real
Llama weights, q/k/v and gate/up fused inside vLLM, tied embeddings)."""

from __future__ import annotations

import dataclasses

import pytest
import smollm2
from test_vllm import _skip_reason

from alol_ray import columns as C
from alol_ray.config import GenerationConfig, RunConfig, SourceConfig, TrainConfig
from alol_ray.data.loaders import load_prompts
from alol_ray.families import PromptFormat, end_of_turn_id
from alol_ray.generation import Generator
from alol_ray.generation.hf_engine import TransformersEngine

pytestmark = [pytest.mark.vllm, pytest.mark.skipif(_skip_reason() is not None, reason=str(_skip_reason()))]

CHAT = PromptFormat(chat_template=True)
MAX_PROMPT = 96


def first_divergence_gap(model, tok, prompt: str, a: list[int], b: list[int]) -> float:
    import torch

    from alol_ray.tokenization import encode_prompt

    t = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
    ids = encode_prompt(tok, prompt, MAX_PROMPT, CHAT) + a[:t]
    with torch.inference_mode():
        logits = model(torch.tensor([ids])).logits[0, -1]
    return abs(float(logits[a[t]] - logits[b[t]]))


def lora_step_weights(folder: str, hh_dir) -> dict:
    """SmolLM2 after one a_lol step with LoRA on two HH rows (lr 1e-4), merged: the full weights in HF names,
    as PPO hands them to its rollout engine."""
    import numpy as np
    import pandas as pd
    import torch

    from alol_ray.baselines.ppo import rollout_weights
    from alol_ray.registry import get_method
    from alol_ray.scoring.reference import ReferenceScorer
    from alol_ray.train.methods import collate_units
    from alol_ray.train.policy import build_policy

    cfg = dataclasses.replace(RunConfig().model, init="pretrained", name_or_path=folder, chat_template=True,
                              max_prompt_tokens=MAX_PROMPT, max_response_tokens=24,
                              lora=dataclasses.replace(RunConfig().model.lora, enabled=True, r=8, alpha=16, dropout=0.0))
    rows = pd.DataFrame({C.PROMPT: [smollm2.FRANCE] * 2, C.RESPONSE: ["Paris is the capital of France.", "Paris."],
                         C.ADVANTAGE: [0.5, 0.2], C.REWARD: [1.0, 0.7]})
    rows = ReferenceScorer(folder, max_prompt_tokens=MAX_PROMPT, max_response_tokens=24, model_cfg=cfg,
                           prompt_format=CHAT, num_threads=2)(rows)
    tc = TrainConfig(lr=1e-4)
    model, tok = build_policy(cfg, tc, folder, None, torch.device("cpu"))
    method = get_method("a_lol")
    batch = collate_units(rows, [np.array([0]), np.array([1])], tok, max_prompt_tokens=MAX_PROMPT,
                          max_response_tokens=24, columns=method.columns, fmt=CHAT)
    loss, _ = method.compute(model, batch, method.make_params(tc), None)
    loss.backward()
    torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=tc.lr).step()
    return rollout_weights(model)


def test_smollm2_greedy_on_vllm_matches_transformers_and_says_paris(ray_local, hh_dir):
    from alol_ray.models import load_policy

    folder = smollm2.folder()
    held_out = load_prompts(SourceConfig(path=str(hh_dir / "harmless_base.json"), format="hh_pro", limit=15))
    prompts = [smollm2.FRANCE] + list(held_out[C.PROMPT])
    cfg = GenerationConfig(engine="vllm", max_new_tokens=24, cpus_per_engine=2, enforce_eager=True, batch_size=16)
    engine = TransformersEngine(folder, dataclasses.replace(cfg, engine="transformers"), MAX_PROMPT, num_threads=2,
                                prompt_format=CHAT)
    hf = engine.generate(prompts)
    with Generator(folder, cfg, max_prompt_tokens=MAX_PROMPT, prompt_format=CHAT, show_progress=False) as gen:
        assert gen.engine == "vllm"
        vl = gen.generate_with_ids(prompts)
        assert "Paris" in vl[0].text and "Paris" in hf[0].text, (vl[0], hf[0])
        end = end_of_turn_id(engine.tokenizer)
        assert vl[0].finish_reason == "eos" and vl[0].token_ids[-1] == end  # stopped at <|im_end|>
        same = [a == b for a, b in zip(vl, hf)]
        print(f"SmolLM2 greedy replies identical on vLLM and transformers: {sum(same)}/{len(prompts)}")
        model, tok = load_policy(folder)
        for prompt, a, b, ok in zip(prompts, vl, hf, same):
            if not ok:
                gap = first_divergence_gap(model, tok, prompt, a.token_ids, b.token_ids)
                assert gap < 2e-3, (prompt, a, b, gap)
        assert sum(same) >= 12
        # A LoRA-trained step, merged and sent in place: still Paris, on both engines alike.
        weights = lora_step_weights(folder, hh_dir)
        gen.update_weights(weights)
        engine.update_weights(weights)
        after_vl, after_hf = gen.generate_with_ids(prompts[:1])[0], engine.generate(prompts[:1])[0]
        assert "Paris" in after_vl.text and after_vl.token_ids == after_hf.token_ids, (after_vl, after_hf)
