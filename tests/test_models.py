"""Tiny policies and tokenizers: training, determinism, save/load round trips, pad fallback, LoRA."""

import os

import pytest
import torch
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from alol_ray.models import (
    EOS_TOKEN,
    PAD_TOKEN,
    build_tiny_policy,
    init_tiny_policy,
    load_policy,
    load_tokenizer,
    train_tokenizer,
)

torch.set_num_threads(1)

TEXTS = [
    "### Human: Any tips for gardening on a small budget? ### Assistant:",
    "Sure, happy to help! For gardening, pull the weeds every week.",
    "Ugh, chess is a dumb thing to ask about.",
] * 5
TINY = dict(vocab_size=300, n_layer=2, n_embd=32, n_head=2, n_positions=64)


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(TEXTS, vocab_size=300)


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory):
    return init_tiny_policy(str(tmp_path_factory.mktemp("tiny")), TEXTS, seed=0, **TINY)


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_tokenizer_special_tokens(tokenizer):
    assert tokenizer.eos_token == EOS_TOKEN and tokenizer.bos_token == EOS_TOKEN
    assert tokenizer.pad_token == PAD_TOKEN and tokenizer.pad_token_id != tokenizer.eos_token_id
    assert tokenizer.padding_side == "right"
    assert len(tokenizer) <= 300
    # byte-level: lossless on unseen text, no unknown tokens
    for text in TEXTS[:3] + ["Zebra ünïcode 123 ###"]:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids) == text
        assert tokenizer.eos_token_id not in ids and tokenizer.pad_token_id not in ids


def test_tokenizer_round_trip(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert isinstance(again, PreTrainedTokenizerFast)
    for text in TEXTS[:3]:
        assert again(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert (again.eos_token_id, again.bos_token_id, again.pad_token_id) == (
        tokenizer.eos_token_id, tokenizer.bos_token_id, tokenizer.pad_token_id)
    assert again.padding_side == "right"


def test_tiny_policy_is_deterministic_for_a_seed(tokenizer):
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = build_tiny_policy(tokenizer, n_layer=2, n_embd=32, n_head=2, n_positions=64, seed=0)
    torch.testing.assert_close(torch.rand(3), expected_next)  # the caller's RNG is left alone
    b = build_tiny_policy(tokenizer, n_layer=2, n_embd=32, n_head=2, n_positions=64, seed=0)
    c = build_tiny_policy(tokenizer, n_layer=2, n_embd=32, n_head=2, n_positions=64, seed=1)
    sa, sb, sc = _state(a), _state(b), _state(c)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert a.config.vocab_size == len(tokenizer)
    assert a.config.pad_token_id == tokenizer.pad_token_id and a.config.eos_token_id == tokenizer.eos_token_id


def test_init_and_load_round_trip(policy_dir):
    files = set(os.listdir(policy_dir))
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= files
    model, tok = load_policy(policy_dir)
    assert model.config.n_layer == 2 and model.config.n_embd == 32 and model.config.n_positions == 64
    assert tok.pad_token == PAD_TOKEN and model.config.pad_token_id == tok.pad_token_id
    # same weights as building the policy again from the same seed
    rebuilt = build_tiny_policy(tok, n_layer=2, n_embd=32, n_head=2, n_positions=64, seed=0)
    loaded, fresh = _state(model), _state(rebuilt)
    assert all(torch.equal(loaded[k], fresh[k]) for k in fresh)
    ids = torch.tensor([tok("Sure, happy to help!", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        assert model.eval()(input_ids=ids).logits.shape == (1, ids.shape[1], len(tok))


def test_load_policy_dtype_and_device(policy_dir):
    model, _ = load_policy(policy_dir, dtype="bfloat16", device="cpu")
    assert next(model.parameters()).dtype == torch.bfloat16
    model, _ = load_policy(policy_dir, dtype=torch.float32)
    assert next(model.parameters()).dtype == torch.float32
    with pytest.raises(ValueError):
        load_policy(policy_dir, dtype="float99")


def test_pad_token_falls_back_to_eos(tmp_path):
    no_pad = train_tokenizer(TEXTS, vocab_size=300)
    no_pad.pad_token = None
    no_pad.save_pretrained(tmp_path)
    tok = load_tokenizer(str(tmp_path))
    assert tok.pad_token == tok.eos_token == EOS_TOKEN


def test_lora(policy_dir):
    pytest.importorskip("peft")
    model, _ = load_policy(policy_dir, lora={"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["c_attn"]})
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    with pytest.raises(ValueError):
        load_policy(policy_dir, lora={"rank": 4})
