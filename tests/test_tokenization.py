"""The shared tokenisation: truncation sides, EOS, masks, and log-probs against a slow reference."""

import re

import pytest
import torch
from tokenizers.processors import TemplateProcessing

from alol_ray.models import build_tiny_policy, train_tokenizer
from alol_ray import tokenization
from alol_ray.tokenization import PolicyBatch, collate, encode_pair, prompt_batch, response_token_logps

torch.set_num_threads(1)

TEXTS = [
    "### Human: Any tips for gardening on a small budget? ### Assistant:",
    "Sure, happy to help! For gardening, pull the weeds every week.",
    "### Human: How should I practice chess late at night? ### Assistant:",
    "Thanks for asking! Play short games every day. At night, keep the lights soft.",
] * 5


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(TEXTS, vocab_size=300)


@pytest.fixture(scope="module")
def model(tokenizer):
    return build_tiny_policy(tokenizer, n_layer=2, n_embd=32, n_head=2, n_positions=128, seed=0).eval()


def _ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_prompt_is_left_truncated_and_response_right_truncated_with_eos(tokenizer):
    prompt, response = TEXTS[0], TEXTS[1]
    full_p, full_r = _ids(tokenizer, prompt), _ids(tokenizer, response)
    assert len(full_p) > 5 and len(full_r) > 5
    p, r = encode_pair(tokenizer, prompt, response, max_prompt_tokens=5, max_response_tokens=4)
    assert p == full_p[-5:]  # the END of the prompt is kept
    assert r == full_r[:3] + [tokenizer.eos_token_id]  # the START of the response, then EOS
    p, r = encode_pair(tokenizer, prompt, response, max_prompt_tokens=1000, max_response_tokens=1000)
    assert p == full_p and r == full_r + [tokenizer.eos_token_id]
    p, r = encode_pair(tokenizer, prompt, response, max_prompt_tokens=3, max_response_tokens=1)
    assert r == [tokenizer.eos_token_id]  # EOS survives any truncation
    p, r = encode_pair(tokenizer, prompt, "", max_prompt_tokens=3, max_response_tokens=8)
    assert r == [tokenizer.eos_token_id]


def _bos_tokenizer():
    """A tokenizer that defines a BOS and puts it before every text (as LLaMA's does)."""
    from transformers import PreTrainedTokenizerFast

    tok = train_tokenizer(TEXTS, vocab_size=300)
    backend = tok.backend_tokenizer
    backend.add_special_tokens(["<s>"])
    bos = backend.token_to_id("<s>")
    backend.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token=tok.eos_token,
                                   pad_token=tok.pad_token)


def test_the_bos_a_tokenizer_defines_starts_every_prompt_everywhere(tokenizer):
    """Special tokens the way the tokenizer defines them, alike in training, scoring, the value head and
    generation: a BOS tokenizer's prompts start with BOS (also when left-truncated), responses never do. A
    tokenizer without one (GPT-2's, the tiny policies') gets nothing."""
    from alol_ray.generation.common import encode_prompts
    from alol_ray.tokenization import encode_prompt, special_prefix

    bos_tok = _bos_tokenizer()
    bos = bos_tok.bos_token_id
    assert special_prefix(bos_tok) == [bos] and special_prefix(tokenizer) == []
    text = _ids(bos_tok, TEXTS[0])
    p, r = encode_pair(bos_tok, TEXTS[0], "Sure", 6, 10)
    assert p == [bos] + text[-5:] and bos not in r and r[-1] == bos_tok.eos_token_id  # truncated, BOS kept
    assert encode_prompt(bos_tok, TEXTS[0], 6) == p
    assert encode_prompts(bos_tok, [TEXTS[0]], 6) == [p]  # what the engines condition on
    ids, mask = prompt_batch(bos_tok, [TEXTS[0], "Sure"], 6)  # what the value head reads
    assert ids[0].tolist() == p and ids[1, 0].item() == bos and mask[1].sum().item() == 1 + len(_ids(bos_tok, "Sure"))
    assert encode_pair(tokenizer, TEXTS[0], "Sure", 6, 10)[0] == _ids(tokenizer, TEXTS[0])[-6:]
    with pytest.raises(ValueError, match="no room"):
        encode_prompt(bos_tok, TEXTS[0], 1)


def test_encode_pair_rejects_bad_limits(tokenizer):
    with pytest.raises(ValueError):
        encode_pair(tokenizer, "a", "b", 0, 4)
    with pytest.raises(ValueError):
        encode_pair(tokenizer, "a", "b", 4, 0)


def test_collate_layout(tokenizer):
    pad = tokenizer.pad_token_id
    pairs = [([1, 2, 3], [4, 5]), ([6], [7, 8, 9, 10])]
    batch = collate(pairs, pad)
    assert batch.input_ids.tolist() == [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]]
    pairs = [([1, 2, 3, 4, 5, 6], [7]), ([8], [9, 10, 11])]
    batch = collate(pairs, pad)
    assert batch.input_ids.tolist() == [[1, 2, 3, 4, 5, 6, 7], [8, 9, 10, 11, pad, pad, pad]]
    assert batch.attention_mask.tolist() == [[1] * 7, [1, 1, 1, 1, 0, 0, 0]]
    # targets = input_ids[:, 1:]; response token j of row b is target prompt_len_b - 1 + j
    assert batch.response_index.tolist() == [[5, 0, 0], [0, 1, 2]]
    assert batch.response_mask.tolist() == [[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]]
    assert batch.prompt_lengths.tolist() == [6, 1] and batch.response_lengths.tolist() == [1, 3]
    targets = batch.input_ids[:, 1:].gather(1, batch.response_index)
    assert targets[0, :1].tolist() == [7] and targets[1].tolist() == [9, 10, 11]
    assert len(batch) == 2 and isinstance(batch.to("cpu"), PolicyBatch)
    with pytest.raises(ValueError):
        collate([([], [1])], pad)


def _slow_logps(model, prompt_ids, response_ids):
    """Reference: the model on one unpadded example; full log-softmax; pick each response token."""
    ids = torch.tensor([prompt_ids + response_ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
    n_p = len(prompt_ids)
    return torch.stack([logp[n_p - 1 + j, t] for j, t in enumerate(response_ids)])


def _pairs(tokenizer):
    return [
        encode_pair(tokenizer, TEXTS[0], TEXTS[1], 64, 64),  # long prompt, long response
        encode_pair(tokenizer, TEXTS[2], "Ok", 3, 64),  # 3-token prompt, 2-token response
        encode_pair(tokenizer, TEXTS[2], TEXTS[3], 64, 1),  # response = EOS only
        encode_pair(tokenizer, "Hi", TEXTS[3], 64, 64),
    ]


def test_logps_match_a_slow_per_example_reference(tokenizer, model):
    pairs = _pairs(tokenizer)
    lengths = [len(p) + len(r) for p, r in pairs]
    assert max(lengths) > 3 * min(lengths)  # very different lengths in one batch
    batch = collate(pairs, tokenizer.pad_token_id)
    with torch.no_grad():
        logps = response_token_logps(model, batch)
    assert logps.shape == batch.response_mask.shape and logps.dtype == torch.float32
    for b, (p, r) in enumerate(pairs):
        n = len(r)
        torch.testing.assert_close(logps[b, :n], _slow_logps(model, p, r), atol=1e-5, rtol=0)
        assert logps[b, n - 1] < 0  # the EOS is scored
        assert torch.all(logps[b, n:] == 0.0)  # exactly zero at padding


def test_logps_are_differentiable_and_padding_gets_no_gradient(tokenizer, model):
    pairs = _pairs(tokenizer)
    batch = collate(pairs, tokenizer.pad_token_id)
    model.zero_grad()
    logps = response_token_logps(model, batch)
    assert logps.requires_grad
    logps.sum().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    # Same gradient as summing only the real tokens of each example separately.
    expected = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for p_ids, r_ids in pairs:
        model.zero_grad()
        response_token_logps(model, collate([(p_ids, r_ids)], tokenizer.pad_token_id)).sum().backward()
        for n, p in model.named_parameters():
            expected[n] += p.grad
    model.zero_grad()
    response_token_logps(model, batch).sum().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[n], atol=1e-5, rtol=1e-4)
    model.zero_grad()


class _NoLogitsToKeep(torch.nn.Module):
    """A causal LM whose forward takes the ids and the mask only (as some remote-code models)."""

    def __init__(self, lm):
        super().__init__()
        self.lm = lm

    def forward(self, input_ids, attention_mask):
        return self.lm(input_ids=input_ids, attention_mask=attention_mask)


class _IgnoresLogitsToKeep(_NoLogitsToKeep):
    """One that swallows unknown arguments and gives the full logits anyway."""

    def forward(self, input_ids, attention_mask, **unused):
        return self.lm(input_ids=input_ids, attention_mask=attention_mask)


def test_the_lm_head_runs_on_the_response_positions_alone_and_other_forwards_fall_back(tokenizer, model):
    """A transformers causal LM gets ``logits_to_keep`` = the response positions: its LM head sees B x R rows, not
    B x L, and the log-probs are those of the full logits. Forwards that refuse or ignore the argument are found
    out on their first call and give the same numbers from the full logits. The first call's check draws the
    same dropout masks for both of its forwards and leaves the caller's RNG as it was."""
    pairs = _pairs(tokenizer)
    batch = collate(pairs, tokenizer.pad_token_id)
    width = batch.response_mask.shape[1]
    expected = torch.stack([torch.cat([_slow_logps(model, p, r), torch.zeros(width - len(r))]) for p, r in pairs])
    for cls in (_NoLogitsToKeep, _IgnoresLogitsToKeep):
        other = cls(model)
        with torch.no_grad():
            torch.testing.assert_close(response_token_logps(other, batch), expected, atol=1e-5, rtol=0)
        assert getattr(other, tokenization._KEEPS_POSITIONS) is False

    def policy_with_dropout():
        return build_tiny_policy(tokenizer, n_layer=2, n_embd=32, n_head=2, n_positions=128, seed=0).train()

    trained = policy_with_dropout()
    assert any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in trained.modules())  # dropout on
    head_rows = []
    trained.lm_head.register_forward_hook(lambda module, args, out: head_rows.append(args[0].shape[:-1]))
    torch.manual_seed(7)
    logps = response_token_logps(trained, batch)  # the first call: checked (no grad), then run
    assert logps.requires_grad
    assert getattr(trained, tokenization._KEEPS_POSITIONS) is True
    assert head_rows[0] == batch.input_ids.shape  # the check's full logits, once
    assert head_rows[-1] == batch.response_index.shape  # then B x R rows through the head
    # The same draws as a model that was checked before: the check left the caller's RNG as it was.
    checked = policy_with_dropout()
    setattr(checked, tokenization._KEEPS_POSITIONS, True)
    torch.manual_seed(7)
    assert torch.equal(response_token_logps(checked, batch), logps)
    trained.eval()
    with torch.no_grad():
        torch.testing.assert_close(response_token_logps(trained, batch),
                                   response_token_logps(_NoLogitsToKeep(trained), batch), atol=1e-6, rtol=0)


def test_prompt_batch_matches_encode_pair(tokenizer):
    prompts = [TEXTS[0], "Hi"]
    input_ids, attention_mask = prompt_batch(tokenizer, prompts, max_prompt_tokens=6)
    for b, prompt in enumerate(prompts):
        expected, _ = encode_pair(tokenizer, prompt, "x", 6, 4)
        n = len(expected)
        assert input_ids[b, :n].tolist() == expected
        assert attention_mask[b].tolist() == [1] * n + [0] * (input_ids.shape[1] - n)
        assert torch.all(input_ids[b, n:] == tokenizer.pad_token_id)


def test_special_prefix_is_cached_on_the_tokenizer():
    """The prefix is found once and kept on the tokenizer as a tuple; a cached value is returned as a list
    without encoding again (a fake cached (7, 8) comes back as [7, 8])."""
    from alol_ray.tokenization import special_prefix

    bos_tok = _bos_tokenizer()
    assert special_prefix(bos_tok) == [bos_tok.bos_token_id]
    assert bos_tok._alol_special_prefix == (bos_tok.bos_token_id,)
    bos_tok._alol_special_prefix = (7, 8)
    assert special_prefix(bos_tok) == [7, 8]


def test_prompt_limits_at_their_smallest(tokenizer):
    """max_prompt_tokens = 2 with a BOS leaves room for exactly the last text token; = 1 leaves none (an error
    naming the limit and the prefix). Without a BOS, 1 keeps the last token. max_response_tokens = 1 and
    max_prompt_tokens = 1 together are valid: ([last prompt token], [EOS])."""
    from alol_ray.tokenization import encode_prompt

    bos_tok = _bos_tokenizer()
    bos = bos_tok.bos_token_id
    assert encode_prompt(bos_tok, TEXTS[0], 2) == [bos, _ids(bos_tok, TEXTS[0])[-1]]
    with pytest.raises(ValueError, match=re.escape(f"max_prompt_tokens=1 leaves no room after the special tokens [{bos}]")):
        encode_prompt(bos_tok, TEXTS[0], 1)
    assert encode_pair(tokenizer, TEXTS[0], TEXTS[1], 1, 1) == ([_ids(tokenizer, TEXTS[0])[-1]], [tokenizer.eos_token_id])
    with pytest.raises(ValueError, match="^max_prompt_tokens and max_response_tokens must be >= 1$"):
        encode_pair(tokenizer, "a", "b", 0, 0)


def test_a_tokenizer_without_eos_is_refused(tokenizer):
    class NoEos:
        eos_token_id = None

    with pytest.raises(ValueError, match="^the tokenizer has no eos token; every response must end with one$"):
        encode_pair(NoEos(), "a", "b", 4, 4)


def test_collate_errors_dtypes_and_device_copy():
    """An empty batch and a pair without response tokens are refused with their own messages. Ids, attention
    mask, index and lengths are int64; the response mask is float32. ``to`` copies every field."""
    with pytest.raises(ValueError, match="^collate: empty batch$"):
        collate([], 0)
    with pytest.raises(ValueError, match="^collate: every pair needs at least one prompt and one response token$"):
        collate([([1, 2], [])], 0)
    batch = collate([([1, 2], [3]), ([4], [5, 6])], 0)
    for name in ("input_ids", "attention_mask", "response_index", "prompt_lengths", "response_lengths"):
        assert getattr(batch, name).dtype == torch.int64, name
    assert batch.response_mask.dtype == torch.float32
    moved = batch.to("cpu")
    for name in ("input_ids", "attention_mask", "response_index", "response_mask", "prompt_lengths",
                 "response_lengths"):
        assert torch.equal(getattr(moved, name), getattr(batch, name)), name


def test_prompt_batch_pads_with_eos_without_a_pad_token_and_refuses_empty_prompts(tokenizer):
    """No pad token: padding uses the EOS id. A prompt that encodes to nothing (no BOS, empty text) and
    max_prompt_tokens < 1 are errors."""
    from transformers import PreTrainedTokenizerFast

    no_pad = PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend_tokenizer, eos_token=tokenizer.eos_token)
    assert no_pad.pad_token_id is None
    ids, mask = prompt_batch(no_pad, [TEXTS[0], "Hi"], max_prompt_tokens=6)
    n = len(_ids(no_pad, "Hi"))
    assert ids[1].tolist() == _ids(no_pad, "Hi") + [no_pad.eos_token_id] * (6 - n)
    assert mask[1].tolist() == [1] * n + [0] * (6 - n)
    with pytest.raises(ValueError, match="^prompt_batch: empty prompt$"):
        prompt_batch(tokenizer, ["Hi", ""], max_prompt_tokens=6)
    with pytest.raises(ValueError, match="^max_prompt_tokens must be >= 1$"):
        prompt_batch(tokenizer, ["Hi"], max_prompt_tokens=0)


def test_collate_and_prompt_batch_dtypes_do_not_follow_the_default_dtype():
    """The response mask is float32 even where torch's default float dtype is float64; ``to`` moves every
    field to the given device (here the meta device)."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        batch = collate([([1, 2], [3]), ([4], [5, 6])], 0)
    finally:
        torch.set_default_dtype(default)
    assert batch.response_mask.dtype == torch.float32
    moved = batch.to("meta")
    for name in ("input_ids", "attention_mask", "response_index", "response_mask", "prompt_lengths",
                 "response_lengths"):
        assert getattr(moved, name).device.type == "meta", name


def test_prompt_batch_at_its_smallest_limit_and_its_dtypes(tokenizer):
    """max_prompt_tokens = 1 is allowed (the last token of each prompt); ids and mask are int64."""
    ids, mask = prompt_batch(tokenizer, [TEXTS[0], "Hi"], max_prompt_tokens=1)
    assert ids.tolist() == [[_ids(tokenizer, TEXTS[0])[-1]], [_ids(tokenizer, "Hi")[-1]]]
    assert mask.tolist() == [[1], [1]]
    assert ids.dtype == torch.int64 and mask.dtype == torch.int64


def test_special_prefix_is_empty_when_the_plain_ids_are_not_inside_the_full_ones():
    """A tokenizer whose special-token encoding does not contain the plain one (no window matches) gets no
    prefix, not an error."""
    from alol_ray.tokenization import special_prefix

    class Odd:
        def __call__(self, text, add_special_tokens):
            return {"input_ids": [9, 8] if add_special_tokens else [5]}

    assert special_prefix(Odd()) == []
