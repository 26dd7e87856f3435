"""The vLLM engine for real, in Ray actors (marker ``vllm``; deselected by default; skipped without vllm).

    bash .ci/vllm-venv && bash .ci/vllm-tier          # CPU: vLLM's CPU build in .venv-vllm
    python -m pytest -m vllm -rs tests/test_vllm.py   # inside any venv that has vllm (CPU or GPU build)

The policy is the session's tiny GPT-2 trained for a few hundred NLL steps on the built-in task's preferred
replies, so that greedy replies are text that depends on the prompt (agreement on one repeated token would
prove nothing); a second, further-trained copy plays the PPO update. The transformers engine runs in this
process as the reference: same prompt token ids (``generation.common``), same post-processing.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import pytest

from alol_ray import columns as C
from alol_ray.config import GenerationConfig
from alol_ray.errors import UserError
from alol_ray.generation import Generator, choose_engine, vllm_build
from alol_ray.generation.hf_engine import TransformersEngine


def _skip_reason():
    build = vllm_build()
    if build is None:
        return "vllm is not installed (CPU: bash .ci/vllm-venv, then run in .venv-vllm; README, vLLM)"
    if build[0] == "gpu":
        import torch

        if not torch.cuda.is_available():
            return f"the installed vLLM {build[1]} is a GPU build and there is no CUDA device"
    return None


pytestmark = [pytest.mark.vllm, pytest.mark.skipif(_skip_reason() is not None, reason=str(_skip_reason()))]

MAX_PROMPT_TOKENS = 96
MAX_NEW_TOKENS = 32
N_PROMPTS = 96


def cfg(**kw) -> GenerationConfig:
    # 0.5 CPU per actor (one torch thread): the greedy engine, a fresh one and 2 sampling engines fit the
    # 2-CPU test cluster. enforce_eager: no torch.compile warm-up (start-up ~40 s instead of ~90 s).
    base = dict(engine="vllm", cpus_per_engine=0.5, max_new_tokens=MAX_NEW_TOKENS, enforce_eager=True,
                batch_size=16)
    base.update(kw)
    return GenerationConfig(**base)


def train_nll(src: str, dst: str, rows, steps: int, seed: int) -> str:
    """A copy of the policy at ``src`` trained by NLL on the preferred training replies (batch 32)."""
    import torch

    from alol_ray.models import load_policy
    from alol_ray.tokenization import collate, encode_pair, response_token_logps

    torch.manual_seed(seed)
    model, tok = load_policy(src, dtype="float32")
    model.train()
    best = rows[(rows[C.SPLIT] == "train") & (rows[C.RANK] == 0)]
    pairs = [encode_pair(tok, p, r, MAX_PROMPT_TOKENS, 48) for p, r in zip(best[C.PROMPT], best[C.RESPONSE])]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(len(pairs), (32,), generator=gen).tolist()
        batch = collate([pairs[i] for i in idx], tok.pad_token_id)
        logps = response_token_logps(model, batch)
        loss = -(logps * batch.response_mask).sum() / batch.response_mask.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.save_pretrained(dst)
    tok.save_pretrained(dst)
    return dst


@pytest.fixture(scope="module")
def policies(tiny_policy_dir, builtin_rows, tmp_path_factory) -> tuple[str, str]:
    """(trained policy, the same trained further: what a PPO step hands the rollout engine)."""
    root = tmp_path_factory.mktemp("vllm_policies")
    old = train_nll(tiny_policy_dir, str(root / "old"), builtin_rows, steps=300, seed=0)
    new = train_nll(old, str(root / "new"), builtin_rows, steps=60, seed=1)
    return old, new


@pytest.fixture(scope="module")
def prompts() -> list[str]:
    from alol_ray.tasks import builtin

    rows = builtin.build_rows(seed=1, n_train=0, n_val=0, n_test=200)
    return list(rows.drop_duplicates(C.PROMPT_ID)[C.PROMPT])[:N_PROMPTS]


def in_process(model_dir: str, gen_cfg: GenerationConfig, prompts: list[str]):
    """The transformers engine's replies, computed in this process batch by batch (the reference)."""
    engine = TransformersEngine(model_dir, gen_cfg, MAX_PROMPT_TOKENS, num_threads=1)
    out = []
    for start in range(0, len(prompts), gen_cfg.batch_size):
        out += engine.generate(prompts[start:start + gen_cfg.batch_size], start)
    return out


@pytest.fixture(scope="module")
def stop(policies, prompts) -> str:
    """A word that some (not all) greedy replies of the trained policy contain: a stop string that cuts."""
    from collections import Counter

    texts = [o.text for o in in_process(policies[0], cfg(stop=[]), prompts)]
    assert len(set(texts)) >= 20, f"only {len(set(texts))} distinct greedy replies: the training did not take"
    counts = Counter(w for t in texts for w in set(t.split()[1:]) if w.isalpha() and len(w) >= 4)
    fitting = [w for w, n in counts.most_common() if 0.2 * len(texts) <= n <= 0.6 * len(texts)]
    assert fitting, counts.most_common(10)
    return " " + fitting[0]


@pytest.fixture(scope="module")
def greedy(ray_local, policies, stop):
    """One greedy engine, chosen by engine=auto, with the stop string; shared (start-up costs ~40 s)."""
    messages = []
    gen = Generator(policies[0], cfg(engine="auto", stop=[stop]), max_prompt_tokens=MAX_PROMPT_TOKENS,
                    show_progress=False, log=messages.append)
    gen.log_messages = messages
    yield gen
    gen.shutdown()


def first_divergence_gap(model_dir: str, prompt: str, a: list[int], b: list[int], budget: int) -> float:
    """|logit(a_t) - logit(b_t)| under transformers at the first position where the two replies differ."""
    import torch

    from alol_ray.models import load_policy

    model, tok = load_policy(model_dir, dtype="float32")
    t = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
    assert t is not None, f"same tokens, different replies: {a} vs {b}"
    ids = tok(prompt, add_special_tokens=False)["input_ids"][-budget:] + a[:t]
    with torch.inference_mode():
        logits = model(torch.tensor([ids])).logits[0, -1]
    return abs(float(logits[a[t]] - logits[b[t]]))


def test_auto_takes_vllm_here_and_says_so(greedy):
    choice = choose_engine(cfg(engine="auto"), gpus=0 if vllm_build()[0] == "cpu" else 1)
    assert choice.engine == "vllm"
    assert greedy.engine == "vllm" and greedy.engine_info[0]["engine"] == "vllm"
    assert greedy.log_messages and greedy.log_messages[0].startswith("[generation] engine: vllm on ")
    assert greedy.engine_info[0]["dtype"] == ("float32" if choice.device == "cpu" else "bfloat16")


def test_greedy_ids_match_the_transformers_engine(greedy, policies, prompts, stop):
    vl = greedy.generate_with_ids(prompts)
    hf = in_process(policies[0], greedy.cfg, prompts)
    same = [a == b for a, b in zip(vl, hf)]
    print(f"identical greedy replies (ids, text, finish): {sum(same)}/{len(prompts)}")
    # fp32 kernels differ in rounding: a reply may only diverge where two logits are all but tied.
    for prompt, a, b, ok in zip(prompts, vl, hf, same):
        if not ok:
            gap = first_divergence_gap(policies[0], prompt, a.token_ids, b.token_ids, greedy.engine_info[0]["prompt_budget"])
            assert gap < 1e-3, (prompt, a, b, gap)
    assert sum(same) >= 64
    cut = [o for o in hf if o.finish_reason == "stop"]
    assert len(cut) >= 5 and len(cut) <= len(prompts) - 5, f"the stop {stop!r} cut {len(cut)} replies"
    assert all(stop not in o.text for o in vl)


def test_update_weights_in_place_equals_a_fresh_engine(greedy, policies, prompts):
    import ray

    from alol_ray.models import load_policy

    old, new = policies
    before = greedy.generate_with_ids(prompts)
    pids = [info["pid"] for info in greedy.engine_info]
    state = load_policy(new, dtype="float32")[0].state_dict()
    greedy.update_weights(ray.put(state))  # through the object store, as a PPO trainer would
    after = greedy.generate_with_ids(prompts)
    assert [info["pid"] for info in greedy.engine_info] == pids  # same actors: no restart
    assert [info["weights_version"] for info in greedy.engine_info] == [1]
    with Generator(new, greedy.cfg, max_prompt_tokens=MAX_PROMPT_TOKENS, show_progress=False) as fresh:
        assert fresh.generate_with_ids(prompts) == after
    changed = sum(a.token_ids != b.token_ids for a, b in zip(before, after))
    assert changed >= len(prompts) // 4, f"only {changed} replies changed: the update did not take"
    # The transformers engine takes the same dict the same way.
    hf = TransformersEngine(old, greedy.cfg, MAX_PROMPT_TOKENS, num_threads=1)
    hf.update_weights(state)
    assert hf.generate(prompts[:16]) == in_process(new, greedy.cfg, prompts[:16])
    # A checkpoint folder loads in place too (the old policy back).
    greedy.load_weights(old)
    assert greedy.generate_with_ids(prompts) == before
    assert [info["pid"] for info in greedy.engine_info] == pids


def test_sampling_is_seeded_and_independent_of_the_split(ray_local, policies, prompts, greedy):
    import ray

    sampling = cfg(temperature=1.0, top_p=0.9, seed=3, num_engines=2)
    with Generator(policies[0], sampling, max_prompt_tokens=MAX_PROMPT_TOKENS, show_progress=False) as gen:
        assert len({info["pid"] for info in gen.engine_info}) == 2
        first = gen.generate_with_ids(prompts)  # half the prompts to each engine
        assert gen.generate_with_ids(prompts) == first
        # Other splits: two calls of uneven size, and one engine taking every prompt.
        k = 37
        assert gen.generate_with_ids(prompts[:k]) + gen.generate_with_ids(prompts[k:], first_index=k) == first
        assert ray.get(gen.actors[1].generate.remote(prompts, 0)) == first
        # Sampling samples: not the greedy replies; a later call (PPO's next rollout) draws other ones.
        greedy_ids = [o.token_ids for o in greedy.generate_with_ids(prompts)]
        assert sum(o.token_ids != g for o, g in zip(first, greedy_ids)) >= len(prompts) // 2
        later = gen.generate_with_ids(prompts, first_index=len(prompts))
        assert sum(a.token_ids != b.token_ids for a, b in zip(later, first)) >= len(prompts) // 2


def broken_copies(policy: str, root) -> dict[str, str]:
    """Copies of a good policy folder, each broken one way."""
    out = {}
    for name in ("truncated", "no_weights", "bad_config", "unknown_arch"):
        out[name] = str(root / name)
        shutil.copytree(policy, out[name])
    weights = os.path.join(out["truncated"], "model.safetensors")
    with open(weights, "r+b") as fh:
        fh.truncate(os.path.getsize(weights) // 2)
    os.remove(os.path.join(out["no_weights"], "model.safetensors"))
    with open(os.path.join(out["bad_config"], "config.json"), "w") as fh:
        fh.write('{"model_type": "gpt2", ')
    config_path = os.path.join(out["unknown_arch"], "config.json")
    with open(config_path) as fh:
        config = json.load(fh)
    config["architectures"] = ["NoSuchModelForCausalLM"]  # transformers reads it; vLLM cannot build it
    with open(config_path, "w") as fh:
        json.dump(config, fh)
    return out


def test_a_broken_checkpoint_fails_with_one_clear_line(greedy, policies, prompts, tmp_path):
    from alol_ray.models import init_tiny_policy, load_policy

    broken = broken_copies(policies[0], tmp_path)
    expected = {"truncated": "corrupt weights file", "no_weights": "no weights", "bad_config": "unreadable",
                "unknown_arch": "cannot run NoSuchModelForCausalLM"}
    for name, folder in broken.items():
        with pytest.raises(UserError) as err:
            # engine=vllm: an architecture vLLM cannot run is an error (engine=auto falls back to transformers,
            # tests/test_vllm_families.py)
            Generator(folder, dataclasses.replace(greedy.cfg, engine="vllm"), max_prompt_tokens=MAX_PROMPT_TOKENS,
                      show_progress=False)
        message = str(err.value)
        assert expected[name] in message and "\n" not in message and len(message) < 600, (name, message)
        if name != "unknown_arch":
            with pytest.raises(UserError, match=expected[name]):
                greedy.load_weights(folder)  # the running engine refuses it, before touching its weights
    # A well-formed checkpoint of another architecture (same tokenizer): refused before any weight changes.
    other = init_tiny_policy(str(tmp_path / "other"), ["hello world"], vocab_size=300, n_layer=2, n_embd=32,
                             n_head=2, n_positions=256)
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if os.path.exists(os.path.join(policies[0], f)):
            shutil.copy(os.path.join(policies[0], f), other)
    with pytest.raises(UserError, match="differ from the running policy") as err:
        greedy.load_weights(other)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="missing"):
        greedy.update_weights({"transformer.wte.weight": load_policy(policies[0])[0].transformer.wte.weight})
    # The engine still serves the old policy.
    assert greedy.generate_with_ids(prompts[:16]) == in_process(policies[0], greedy.cfg, prompts[:16])
