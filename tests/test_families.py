"""The family matrix: Llama, Qwen2, Mistral, GPT-NeoX and Gemma (tiny, random weights, each with its family's
tokenizer conventions, ``tests/family_models.py``) through every stage that feeds a policy, in this process.

Per family: the rules ``alol_ray.families`` looks up (decoder layer, LoRA targets, BOS, pad, end of turn); pi_ref's
log-probs from the ReferenceScorer equal a plain HF forward on ids built here by hand; the same prompt ids reach
scoring, training, the value head and generation; the value head fits; nll, a_lol and dpo train with and without
LoRA; generation stops at the chat template's end-of-turn token. A family with a chat template runs with
``model.chat_template`` on (its prompts rendered by ``apply_chat_template``); GPT-NeoX, a base model, as text.
The vLLM half (greedy ids, in-place weight updates) is ``tests/test_vllm_families.py``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
import torch
from family_models import FAMILIES, build_family

from alol_ray import columns as C
from alol_ray.config import GenerationConfig, RunConfig, TrainConfig
from alol_ray.errors import ConfigError
from alol_ray.families import TEXT, PromptFormat, decoder_layers, describe, has_chat_template, prompt_messages
from alol_ray.models import load_policy
from alol_ray.tokenization import special_prefix

torch.set_num_threads(1)
MAX_PROMPT, MAX_RESPONSE = 160, 48
CHAT = PromptFormat(chat_template=True)

# Canonical prompts (as the data loaders render them) and, written out by hand, the conversation each one is.
CONVERSATIONS = {
    "### Human: What is the capital of France? ### Assistant:":
        [{"role": "user", "content": "What is the capital of France?"}],
    "### Human: Any tips for gardening? ### Assistant: Pull the weeds. ### Human: And on a small budget? "
    "### Assistant:":
        [{"role": "user", "content": "Any tips for gardening?"}, {"role": "assistant", "content": "Pull the weeds."},
         {"role": "user", "content": "And on a small budget?"}],
    "How should I practice chess late at night?":  # a `rows` prompt: no markers, one user turn
        [{"role": "user", "content": "How should I practice chess late at night?"}],
}
PROMPTS = list(CONVERSATIONS)
RESPONSES = ["The capital of France is Paris.", "Sure, happy to help! Play short games every day.",
             "I am sorry, I do not know."]

# What each family's rules must come out as (tests/family_models.py sets the tokenizers up this way).
EXPECTED = {
    "llama": dict(layer="LlamaDecoderLayer", lora=("down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj",
                                                  "v_proj"), bos="<|begin_of_text|>", pad=None, end="<|eot_id|>",
                  tied=False),
    "qwen2": dict(layer="Qwen2DecoderLayer", lora=("down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj",
                                                  "v_proj"), bos=None, pad="<|endoftext|>", end="<|im_end|>", tied=True),
    "mistral": dict(layer="MistralDecoderLayer", lora=("down_proj", "gate_proj", "k_proj", "o_proj", "q_proj",
                                                      "up_proj", "v_proj"), bos="<s>", pad=None, end="</s>", tied=False),
    "gpt_neox": dict(layer="GPTNeoXLayer", lora=("dense", "dense_4h_to_h", "dense_h_to_4h", "query_key_value"),
                     bos=None, pad=None, end=None, tied=False),
    "gemma": dict(layer="GemmaDecoderLayer", lora=("down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj",
                                                  "v_proj"), bos="<bos>", pad="<pad>", end="<end_of_turn>", tied=True),
}


@dataclass
class Family:
    name: str
    folder: str
    model: object  # loaded as the stages load it (models.load_policy), eval mode
    tokenizer: object
    fmt: PromptFormat  # the chat template where the family has one, else text


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, tmp_path_factory) -> Family:
    """One shared toy model per family (built, saved, loaded back like any HF folder)."""
    folder = build_family(request.param, tmp_path_factory.mktemp(request.param))
    model, tokenizer = load_policy(folder)
    return Family(request.param, folder, model.eval(), tokenizer, CHAT if has_chat_template(tokenizer) else TEXT)


def model_cfg(**kw):
    base = dataclasses.replace(RunConfig().model, max_prompt_tokens=MAX_PROMPT, max_response_tokens=MAX_RESPONSE,
                               init="pretrained", name_or_path="x")
    return dataclasses.replace(base, **kw)


def hand_prompt_ids(fam: Family, prompt: str) -> list[int]:
    """The prompt's ids built here, independently of alol-ray's encoders: the tokenizer's own chat template on the
    conversation written out above (its token ids straight from apply_chat_template), or the tokenizer's plain
    encoding with its special tokens (its BOS, where the family adds one)."""
    tok = fam.tokenizer
    if fam.fmt.chat_template:
        out = tok.apply_chat_template(CONVERSATIONS[prompt], tokenize=True, add_generation_prompt=True)
        return list(out["input_ids"] if isinstance(out, Mapping) else out)
    return list(tok(prompt)["input_ids"])


def hand_response_ids(fam: Family, response: str) -> list[int]:
    tok = fam.tokenizer
    end = tok.convert_tokens_to_ids(EXPECTED[fam.name]["end"]) if fam.fmt.chat_template else tok.eos_token_id
    return list(tok(response, add_special_tokens=False)["input_ids"]) + [end]


def test_the_family_rules_are_looked_up_from_the_model_and_tokenizer(family):
    rules, want, tok = describe(family.model, family.tokenizer), EXPECTED[family.name], family.tokenizer
    assert rules.decoder_layer == (want["layer"],)
    assert len(decoder_layers(family.model)) == family.model.config.num_hidden_layers
    assert rules.lora_targets == want["lora"]
    assert rules.tied_embeddings == want["tied"]
    assert special_prefix(tok) == ([tok.convert_tokens_to_ids(want["bos"])] if want["bos"] else [])
    # No pad token of its own (Llama, Mistral, Pythia): padding is written with EOS (and masked).
    assert rules.pad_id == tok.convert_tokens_to_ids(want["pad"] or tok.eos_token)
    assert rules.end_of_turn_id == (tok.convert_tokens_to_ids(want["end"]) if want["end"] else None)
    assert rules.chat_template == (want["end"] is not None)


def test_the_lookups_see_through_lora_and_name_gpt2_too(family, tiny_policy_dir):
    import peft

    wrapped = peft.get_peft_model(load_policy(family.folder)[0], peft.LoraConfig(r=2, target_modules=["dense" if
                                  family.name == "gpt_neox" else "q_proj"], task_type="CAUSAL_LM"))
    assert describe(wrapped, family.tokenizer).lora_targets == EXPECTED[family.name]["lora"]
    gpt2 = describe(*load_policy(tiny_policy_dir))
    assert (gpt2.decoder_layer, gpt2.lora_targets, gpt2.end_of_turn_id) == (("GPT2Block",), ("c_attn", "c_fc",
                                                                                             "c_proj"), None)


def test_messages_are_found_in_a_canonical_prompt():
    markers = RunConfig().data.sources[0].template
    for prompt, conversation in CONVERSATIONS.items():
        assert prompt_messages(prompt, markers) == conversation
    system = dataclasses.replace(markers, system="Be brief.")
    assert prompt_messages("Be brief. ### Human: Hi ### Assistant:", system) == [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]


def test_reference_logps_equal_a_plain_forward(family):
    """The ReferenceScorer (batched, right-padded, the family's BOS / chat template / end token) against one
    unpadded forward per pair on ids built by hand."""
    from alol_ray.scoring.reference import ReferenceScorer

    scorer = ReferenceScorer(family.folder, max_prompt_tokens=MAX_PROMPT, max_response_tokens=MAX_RESPONSE,
                             model_cfg=model_cfg(chat_template=family.fmt.chat_template), prompt_format=family.fmt)
    got = scorer.token_logps(PROMPTS, RESPONSES)
    for prompt, response, logps in zip(PROMPTS, RESPONSES, got):
        p, r = hand_prompt_ids(family, prompt), hand_response_ids(family, response)
        with torch.no_grad():
            logits = family.model(torch.tensor([p + r])).logits[0].float()
        want = torch.log_softmax(logits[len(p) - 1:-1], dim=-1).gather(1, torch.tensor(r)[:, None])[:, 0]
        assert len(logps) == len(r)
        np.testing.assert_allclose(logps, want.numpy(), atol=2e-5, rtol=0)


def _record_inputs(model, seen: list):
    """A forward pre-hook that keeps, per forward pass of ``model``, the ids of each row that its attention mask
    lets through (padding dropped); the model still runs."""
    def hook(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        mask = kwargs.get("attention_mask")
        if mask is None or mask.shape != ids.shape:  # a decoding step: one new token, the mask covers the past
            mask = torch.ones_like(ids)
        seen.append([row[m.bool()].tolist() for row, m in zip(ids, mask)])
    return model.register_forward_pre_hook(hook, with_kwargs=True)


def test_the_same_prompt_ids_reach_scoring_training_value_and_generation(family):
    """What each stage's model actually receives, recorded by a forward hook: pi_ref's scoring pass, a training
    step, the value head's prompt states and the first generation step see the same prompt ids, and they are the
    ids built by hand (the chat template's, where the family has one); responses end with the chat template's
    end-of-turn token in scoring and training alike."""
    from alol_ray.generation.hf_engine import TransformersEngine
    from alol_ray.registry import get_method
    from alol_ray.scoring.reference import ReferenceScorer
    from alol_ray.train.methods import collate_units
    from alol_ray.train.policy import build_policy
    from alol_ray.value.fit import prompt_states

    fmt, want = family.fmt, [hand_prompt_ids(family, p) for p in PROMPTS]
    pairs = [p + hand_response_ids(family, r) for p, r in zip(want, RESPONSES)]
    seen: dict[str, list] = {stage: [] for stage in ("scoring", "training", "value", "generation")}
    scorer = ReferenceScorer(family.folder, max_prompt_tokens=MAX_PROMPT, max_response_tokens=MAX_RESPONSE,
                             model_cfg=model_cfg(), prompt_format=fmt)
    _record_inputs(scorer.model, seen["scoring"])
    scorer.token_logps(PROMPTS, RESPONSES)

    model, tok = build_policy(model_cfg(), TrainConfig(), family.folder, None, torch.device("cpu"))
    _record_inputs(model, seen["training"])
    frame = pd.DataFrame({C.PROMPT: PROMPTS, C.RESPONSE: RESPONSES})
    method = get_method("nll")
    batch = collate_units(frame, [np.array([i]) for i in range(len(frame))], tok, max_prompt_tokens=MAX_PROMPT,
                          max_response_tokens=MAX_RESPONSE, columns=method.columns, fmt=fmt)
    method.compute(model, batch, method.make_params(TrainConfig()), None)

    hook = _record_inputs(family.model.base_model, seen["value"])  # the value head reads the backbone's states
    prompt_states(family.model, family.tokenizer, PROMPTS, MAX_PROMPT, batch_size=8, show_progress=False, fmt=fmt)
    hook.remove()

    engine = TransformersEngine(family.folder, GenerationConfig(engine="transformers", max_new_tokens=2, stop=[]),
                                MAX_PROMPT, num_threads=1, prompt_format=fmt)
    _record_inputs(engine.model, seen["generation"])
    engine.generate(PROMPTS)

    assert seen["scoring"][0] == pairs
    assert seen["training"][0] == pairs
    assert sorted(seen["value"][0]) == sorted(want)  # batched by length, in another order
    assert seen["generation"][0] == want


def test_the_value_head_fits_on_the_familys_prompt_states(family):
    from alol_ray.value.fit import fit_value_head, prompt_states, prompt_values

    prompts = PROMPTS * 4
    states = prompt_states(family.model, family.tokenizer, prompts, MAX_PROMPT, batch_size=4, show_progress=False,
                           fmt=family.fmt)
    assert [s.shape[0] for s in states[:3]] == [len(hand_prompt_ids(family, p)) for p in PROMPTS]
    targets = np.tile([0.9, 0.2, 0.5], 4)
    result = fit_value_head(states, targets, heads=2, dropout=0.0, max_value=1.0, lr=1e-2, epochs=3, batch_size=4,
                            holdout_fraction=0.25, seed=0)
    values = prompt_values(family.model, family.tokenizer, result.head, PROMPTS, max_prompt_tokens=MAX_PROMPT,
                           batch_size=4, show_progress=False, fmt=family.fmt)
    assert values.shape == (3,) and np.all(np.isfinite(values)) and np.all((values >= 0) & (values <= 1))


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_nll_alol_and_dpo_train_with_and_without_lora(family, lora):
    """Two optimizer steps of each method on a table scored by the family's pi_ref: the loss is finite, the
    step-0 importance weight is 1 (scoring and training see the same ids), the trained weights move; under LoRA
    only adapters on the family's targets train and the base weights stay."""
    from alol_ray.registry import get_method
    from alol_ray.scoring.reference import ReferenceScorer
    from alol_ray.train.methods import collate_units, training_units
    from alol_ray.train.policy import build_policy, make_optimizer

    cfg = model_cfg(lora=dataclasses.replace(RunConfig().model.lora, enabled=lora, r=4, alpha=8, dropout=0.0))
    frame = pd.DataFrame({C.PROMPT_ID: [f"p{i}" for i in range(3)] * 2, C.PROMPT: PROMPTS * 2,
                          C.RESPONSE: RESPONSES + RESPONSES[1:] + RESPONSES[:1], C.RANK: [0] * 3 + [1] * 3,
                          C.REWARD: [1.0, 0.8, 0.9, 0.1, 0.2, 0.3]})
    frame[C.ADVANTAGE] = frame[C.REWARD] - 0.5
    scorer = ReferenceScorer(family.folder, max_prompt_tokens=MAX_PROMPT, max_response_tokens=MAX_RESPONSE,
                             model_cfg=cfg, prompt_format=family.fmt)
    frame = scorer(frame)
    tc = TrainConfig(lr=1e-2)
    for name in ("nll", "a_lol", "dpo"):
        method = get_method(name)
        model, tok = build_policy(cfg, tc, family.folder, None, torch.device("cpu"))
        trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
        if lora:
            assert trainable and all("lora_" in n for n in trainable)
            adapted = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable}
            assert adapted == set(EXPECTED[family.name]["lora"]), adapted
        else:
            assert not frozen
        optimizer = make_optimizer(list(p for p in model.parameters() if p.requires_grad), tc)
        units = training_units(frame, method.layout)
        for step in range(2):
            batch = collate_units(frame, units, tok, max_prompt_tokens=MAX_PROMPT, max_response_tokens=MAX_RESPONSE,
                                  columns=method.columns, fmt=family.fmt)
            loss, metrics = method.compute(model, batch, method.make_params(tc), None)
            assert torch.isfinite(loss), (name, metrics)
            if step == 0 and "is_weight/mean" in metrics:
                assert abs(metrics["is_weight/mean"] - 1.0) < 1e-4, (name, metrics)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        after = dict(model.named_parameters())
        assert all(not torch.equal(p, after[n]) for n, p in trainable.items() if "lora_A" not in n), name
        assert all(torch.equal(p, after[n]) for n, p in frozen.items()), name


def test_generation_stops_at_the_end_of_turn_token(family, tmp_path):
    """A copy of the family's model trained by NLL to answer the France prompt with one short reply: greedy
    generation gives that reply and ends at the response's end token (the chat template's end of turn; EOS for
    a base model), well before max_new_tokens. An engine that stopped at EOS only would run on past it."""
    from alol_ray.families import response_end_id
    from alol_ray.generation.hf_engine import TransformersEngine
    from alol_ray.tokenization import collate, encode_pair, response_token_logps

    torch.manual_seed(0)
    model, tok = load_policy(family.folder)
    pair = encode_pair(tok, PROMPTS[0], "Paris.", MAX_PROMPT, MAX_RESPONSE, family.fmt)
    batch = collate([pair] * 4, tok.pad_token_id)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(30):
        loss = -response_token_logps(model, batch).sum() / batch.response_mask.sum()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    engine = TransformersEngine(str(tmp_path), GenerationConfig(engine="transformers", max_new_tokens=24, stop=[]),
                                MAX_PROMPT, num_threads=1, prompt_format=family.fmt)
    out = engine.generate(PROMPTS[:1])[0]
    end = response_end_id(tok, family.fmt)
    assert (out.text, out.finish_reason, out.token_ids) == ("Paris.", "eos", pair[1]), (out, tok.decode(out.token_ids))
    assert out.token_ids[-1] == end


def test_a_chat_template_asked_of_a_tokenizer_without_one_is_one_line(tmp_path, capsys):
    """GPT-NeoX here is a base model without a chat template: model.chat_template=true stops with one line (exit 2)
    before any stage runs, in the stages' loaders too, and at config load for a tiny policy (whose tokenizer never
    has one)."""
    from conftest import in_dir

    from alol_ray.config import load_config
    from alol_ray.generation.hf_engine import TransformersEngine
    from alol_ray.scoring.reference import ReferenceScorer

    folder = build_family("gpt_neox", tmp_path / "neox")
    capsys.readouterr()
    assert in_dir(tmp_path, ["score", "model.init=pretrained", "model.name_or_path=neox", "model.chat_template=true",
                             "reference.path=neox"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the tokenizer of model.name_or_path=" in err[0] and "has no chat template" in err[0], err
    assert not (tmp_path / "runs" / "builtin" / "data").exists()  # nothing was built
    for build in (lambda: ReferenceScorer(folder, max_prompt_tokens=MAX_PROMPT, max_response_tokens=MAX_RESPONSE,
                                          prompt_format=CHAT),
                  lambda: TransformersEngine(folder, GenerationConfig(engine="transformers"), MAX_PROMPT,
                                             prompt_format=CHAT)):
        with pytest.raises(ConfigError, match="has no chat template") as err:
            build()
        assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="model.init=tiny has none"):
        load_config(None, ["model.chat_template=true"])


def test_a_long_conversation_loses_its_oldest_turns_first(family):
    """Truncation under a chat template: whole old exchanges go first (the conversation still starts with a user
    turn), then the start of the last user turn; the rendering always fits and ends with the generation prompt."""
    from alol_ray.families import chat_prompt_ids

    if not family.fmt.chat_template:
        pytest.skip("a base model: prompts are text (left-truncated, tests/test_tokenization.py)")
    tok, markers, prompt = family.tokenizer, family.fmt.markers, PROMPTS[1]
    full = chat_prompt_ids(tok, prompt, markers, 1000)
    last_turn = tok.apply_chat_template(CONVERSATIONS[prompt][-1:], tokenize=False, add_generation_prompt=True)
    last_ids = tok(last_turn, add_special_tokens=False)["input_ids"]
    assert len(full) > len(last_ids)
    assert chat_prompt_ids(tok, prompt, markers, len(full) - 1) == last_ids
    cut = chat_prompt_ids(tok, prompt, markers, len(last_ids) - 2)
    assert len(cut) <= len(last_ids) - 2 and cut[-3:] == last_ids[-3:]
    with pytest.raises(ValueError, match="raise model.max_prompt_tokens"):
        chat_prompt_ids(tok, prompt, markers, 3)


def test_sources_that_mark_turns_differently_cannot_share_a_chat_template(tmp_path):
    """The policy finds a prompt's turns by one set of markers: under model.chat_template every source must use the
    same data template (one line at config load)."""
    from alol_ray.config import load_config

    for name in ("a.jsonl", "b.jsonl"):
        (tmp_path / name).write_text("")
    flags = ["model.init=pretrained", "model.name_or_path=org/model", "model.chat_template=true",
             "data.sources=[{path: a.jsonl}, {path: b.jsonl, template: {human: 'User:'}}]"]
    with pytest.raises(ConfigError, match="data.sources.1.template differs from data.sources.0.template"):
        load_config(None, flags, cwd=str(tmp_path))
    assert load_config(None, flags[:2] + flags[3:], cwd=str(tmp_path)).model.chat_template is False
