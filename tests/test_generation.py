"""The transformers engine in Ray actors on the built-in task (CPU, default tier).

References are computed independently of the Generator: plain ``model.generate`` on one unpadded
prompt at a time, or the engine class run in-process, batch by batch.
"""

from __future__ import annotations

import pytest

from alol_ray import columns as C
from alol_ray.config import GenerationConfig
from alol_ray.errors import ConfigError
from alol_ray.generation import Generator
from alol_ray.generation.hf_engine import TransformersEngine

MAX_PROMPT_TOKENS = 96


def gen_cfg(**kw) -> GenerationConfig:
    # 0.5 CPU per actor: both fixtures' actors fit the 2-CPU test cluster at once.
    base = dict(engine="transformers", cpus_per_engine=0.5, batch_size=4, max_new_tokens=16)
    base.update(kw)
    return GenerationConfig(**base)


@pytest.fixture(scope="module")
def prompts(builtin_rows):
    test = builtin_rows[builtin_rows[C.SPLIT] == "test"].drop_duplicates(C.PROMPT_ID)
    return list(test[C.PROMPT])[:10]


@pytest.fixture(scope="module")
def policy_dir(tiny_policy_dir, tmp_path_factory) -> str:
    """The tiny policy with its weight matrices scaled by 3: an untrained GPT-2 answers every prompt with
    the same repeated token, which would make the comparisons below vacuous; scaled, its greedy replies
    are varied and depend on the prompt."""
    import torch

    from alol_ray.models import load_policy

    model, tok = load_policy(tiny_policy_dir)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() >= 2:
                param.mul_(3.0)
    out = str(tmp_path_factory.mktemp("varied_policy"))
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def gen(ray_local, policy_dir):
    """Two sampling actors (one actor start-up costs seconds on 2 cores, so the module shares them)."""
    gen = Generator(policy_dir, gen_cfg(num_engines=2, temperature=1.0, top_p=0.9, seed=7),
                    max_prompt_tokens=MAX_PROMPT_TOKENS, show_progress=False)
    yield gen
    gen.shutdown()


def in_process(model_dir: str, cfg: GenerationConfig, prompts: list[str], max_prompt_tokens=MAX_PROMPT_TOKENS):
    """What the Generator should return, computed by one engine in this process, batch by batch."""
    engine = TransformersEngine(model_dir, cfg, max_prompt_tokens, num_threads=1)
    out = []
    for start in range(0, len(prompts), cfg.batch_size):
        out += engine.generate(prompts[start:start + cfg.batch_size], start)
    return out


def reference_greedy(model_dir: str, prompts: list[str], max_new_tokens: int) -> list[list[int]]:
    """Greedy ids from plain transformers generate, one unpadded prompt at a time."""
    import torch

    from alol_ray.models import load_policy

    model, tok = load_policy(model_dir)
    model.eval()
    out = []
    for prompt in prompts:
        ids = tok(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"][:, -MAX_PROMPT_TOKENS:]
        with torch.inference_mode():
            seq = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id)
        new = seq[0, ids.shape[1]:].tolist()
        if tok.eos_token_id in new:
            new = new[: new.index(tok.eos_token_id) + 1]
        out.append(new)
    return out


def test_engine_choice_and_light_import():
    import subprocess
    import sys

    from alol_ray.generation import choose_engine, resolve_engine, vllm_build

    cpu_build, gpu_build = ("cpu", "0.32.0"), ("gpu", "0.32.0")

    def pick(engine, gpus, build):
        choice = choose_engine(gen_cfg(engine=engine), gpus=gpus, build=build)
        return choice.engine, choice.device

    # auto: vLLM wherever the installed build runs (the CPU build anywhere, a GPU build with GPUs), else transformers.
    assert pick("auto", 0, None) == ("transformers", "cpu")
    assert pick("auto", 0, cpu_build) == ("vllm", "cpu")
    assert pick("auto", 1, gpu_build) == ("vllm", "cuda")
    assert pick("auto", 0, gpu_build) == ("transformers", "cpu")
    assert pick("vllm", 0, cpu_build) == ("vllm", "cpu")
    assert pick("transformers", 8, gpu_build)[0] == "transformers"
    # vllm where it cannot run, or tensor parallelism on CPU: a clear error, not a crash later.
    with pytest.raises(ConfigError, match="not installed"):
        pick("vllm", 1, None)
    with pytest.raises(ConfigError, match="GPU build"):
        pick("vllm", 0, gpu_build)
    with pytest.raises(ConfigError, match="tensor_parallel_size"):
        choose_engine(gen_cfg(engine="vllm", tensor_parallel_size=2), gpus=0, build=cpu_build)
    # resolve_engine reads the installed build: this venv's choice follows the same rule.
    here = vllm_build()
    assert resolve_engine(gen_cfg(engine="auto"), gpus=0) == ("vllm" if here and here[0] == "cpu" else "transformers")
    assert resolve_engine(gen_cfg(engine="auto"), gpus=1) == ("vllm" if here else "transformers")
    with pytest.raises(ConfigError, match="generation.engine"):
        gen_cfg(engine="tgi")
    # Importing the package must not pull in vllm (an optional extra), ray or torch.
    code = ("import sys, alol_ray.generation; "
            "print(sorted(m for m in ('vllm', 'ray', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stderr


def test_greedy_batches_equal_unpadded_generate(policy_dir, prompts):
    greedy = in_process(policy_dir, gen_cfg(), prompts)
    # Batches of 4 are left-padded; one-at-a-time generate has no padding: the same ids mean that
    # padding, position ids and the KV cache are handled right.
    assert [o.token_ids for o in greedy] == reference_greedy(policy_dir, prompts, 16)
    assert all(o.num_tokens == len(o.token_ids) <= 16 for o in greedy)
    assert len({o.text for o in greedy}) >= len(prompts) // 2  # replies depend on the prompt


def test_actors_sample_deterministically_for_a_seed(gen, policy_dir, prompts):
    import torch

    torch.set_num_threads(1)
    first = gen.generate_with_ids(prompts)
    assert gen.generate_with_ids(prompts) == first
    assert gen.generate(prompts) == [o.text for o in first]
    # Order and seeds survive the split over 2 actors: one in-process engine gives the same tokens.
    assert in_process(policy_dir, gen.cfg, prompts) == first
    # Sampling really samples: greedy differs, and another seed gives other replies.
    assert [o.token_ids for o in first] != reference_greedy(policy_dir, prompts, 16)
    other = in_process(policy_dir, gen_cfg(temperature=1.0, top_p=0.9, seed=8), prompts)
    assert [o.token_ids for o in other] != [o.token_ids for o in first]
    # A later call (PPO's next rollout) starts at another position: other random streams, still reproducible.
    later = gen.generate_with_ids(prompts, first_index=len(prompts))
    assert [o.token_ids for o in later] != [o.token_ids for o in first]
    assert gen.generate_with_ids(prompts, first_index=len(prompts)) == later
    assert gen.generate([]) == []


def test_stop_string_cuts_like_postprocess(policy_dir, prompts):
    """Greedy with a stop string == greedy without it, cut at the stop's first occurrence."""
    from alol_ray.models import load_tokenizer

    tok = load_tokenizer(policy_dir)
    free = in_process(policy_dir, gen_cfg(stop=[]), prompts)
    texts = [tok.decode(o.token_ids, skip_special_tokens=True) for o in free]
    # A stop of 3 ASCII letters taken from the replies ('\ufffd' from a split multi-byte character is
    # transient while decoding token by token, so it must not be part of the stop).
    pieces = [t[i:i + 3] for t in texts for i in range(len(t) - 2) if t[i:i + 3].isascii() and t[i:i + 3].isalpha()]
    assert pieces, texts
    stop = pieces[len(pieces) // 2]
    stopped = in_process(policy_dir, gen_cfg(stop=[stop]), prompts)
    cut = 0
    for f, s, text in zip(free, stopped, texts):
        if stop in text:
            cut += 1
            assert s.text == text[: text.index(stop)].strip()
            assert s.finish_reason == "stop"
            assert s.token_ids == f.token_ids[: len(s.token_ids)]
            assert stop not in tok.decode(s.token_ids)
        else:
            assert s == f
    assert cut >= 1


def test_long_prompts_are_left_truncated_to_fit_n_positions(policy_dir, prompts):
    long_prompt = " ".join(prompts) * 4  # several hundred tokens, more than n_positions=256
    engine = TransformersEngine(policy_dir, gen_cfg(max_new_tokens=200), max_prompt_tokens=1000, num_threads=1)
    assert engine.budget == 256 - 200
    out = engine.generate([long_prompt, prompts[0]])
    assert all(o.num_tokens <= 200 for o in out)
    # The prompt's end is what the reply continues: truncating from the left keeps it.
    assert out[1] == engine.generate([prompts[0]])[0]
    with pytest.raises(ConfigError, match="max_new_tokens"):
        Generator(policy_dir, gen_cfg(max_new_tokens=256), max_prompt_tokens=8)


def test_load_weights_swaps_the_policy_in_running_actors(gen, policy_dir, tiny_policy_dir, prompts):
    before = gen.generate_with_ids(prompts)
    pids = [info["pid"] for info in gen.engine_info]
    gen.load_weights(tiny_policy_dir)  # same tokenizer and architecture, other weights (a PPO update)
    after = gen.generate_with_ids(prompts)
    assert [info["pid"] for info in gen.engine_info] == pids  # the same actors, new weights
    assert all(info["model"] == tiny_policy_dir for info in gen.engine_info)
    assert after == in_process(tiny_policy_dir, gen.cfg, prompts)
    assert after != before
    gen.load_weights(policy_dir)
    assert gen.generate_with_ids(prompts) == before
