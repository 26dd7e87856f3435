"""Tiny models of the families users bring, built from config with random weights, each with a tokenizer set up
the way that family's is: BOS added or not, a pad token or none, its EOS, its end-of-turn token and chat template.

    folder = build_family("llama", tmp_path / "llama")     # save_pretrained folder: config, weights, tokenizer

| family  | model class          | BOS added         | pad            | EOS               | end of turn      | chat template     | tied |
|---------|----------------------|-------------------|----------------|-------------------|------------------|-------------------|------|
| llama   | LlamaForCausalLM     | <|begin_of_text|> | none           | <|end_of_text|>   | <|eot_id|>       | Llama 3 headers   | no   |
| qwen2   | Qwen2ForCausalLM     | none              | <|endoftext|>  | <|im_end|>        | <|im_end|> (=EOS) | ChatML           | yes  |
| mistral | MistralForCausalLM   | <s>               | none           | </s>              | </s> (=EOS)      | [INST] ... [/INST] | no  |
| gpt_neox| GPTNeoXForCausalLM   | none              | none           | <|endoftext|>     | -                | none (a base model) | no |
| gemma   | GemmaForCausalLM     | <bos>             | <pad>          | <eos>             | <end_of_turn>    | Gemma turns       | yes  |

The sizes are toys (2 layers, width 64, 2 heads of 32, one KV head where the family has grouped-query attention)
so that a test of every family costs seconds. Head size 32 is one vLLM's CPU attention runs.
"""

from __future__ import annotations

import os

FAMILIES = ("llama", "qwen2", "mistral", "gpt_neox", "gemma")

# Text the tokenizers learn their merges from: dialogue words, the built-in task's kind of request.
_CORPUS = [
    "What is the capital of France? The capital of France is Paris.",
    "Any tips for gardening on a small budget? Sure, happy to help! Pull the weeds every week.",
    "How should I practice chess late at night? Play short games every day and keep the lights soft.",
    "Thanks for asking! I am sorry, I do not know. Could you tell me more about it?",
    "### Human: Hello there ### Assistant: Hi! How can I help you today?",
    "user assistant system model You are a helpful assistant. Answer briefly.",
] * 4

LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] }}\n\n"
    "{% elif m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
    "{% else %}{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}")
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
    "<start_of_turn>{{ role }}\n{{ m['content'] | trim }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")

# family -> how its tokenizer is set up: specials (in vocabulary order), the pre-tokenizer kind, the BOS the
# tokenizer puts before every text (None: nothing), pad / eos / extra specials, the chat template.
TOKENIZERS = {
    "llama": dict(specials=["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                            "<|eot_id|>"], kind="bytelevel", bos="<|begin_of_text|>", add_bos=True, pad=None,
                  eos="<|end_of_text|>", template=LLAMA3_TEMPLATE),
    "qwen2": dict(specials=["<|endoftext|>", "<|im_start|>", "<|im_end|>"], kind="bytelevel", bos=None,
                  add_bos=False, pad="<|endoftext|>", eos="<|im_end|>", template=CHATML_TEMPLATE),
    "mistral": dict(specials=["<unk>", "<s>", "</s>"], kind="metaspace", bos="<s>", add_bos=True, pad=None,
                    eos="</s>", template=MISTRAL_TEMPLATE),
    "gpt_neox": dict(specials=["<|endoftext|>", "<|padding|>"], kind="bytelevel", bos="<|endoftext|>",
                     add_bos=False, pad=None, eos="<|endoftext|>", template=None),
    "gemma": dict(specials=["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"],
                  kind="metaspace", bos="<bos>", add_bos=True, pad="<pad>", eos="<eos>", template=GEMMA_TEMPLATE),
}


def build_tokenizer(family: str, vocab_size: int = 400):
    """The family's tokenizer (a fast tokenizer trained on a small corpus), set up as described above."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    spec = TOKENIZERS[family]
    if spec["kind"] == "bytelevel":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:  # SentencePiece-style (Llama 2, Mistral, Gemma): "▁" marks a word start
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        alphabet = sorted(set("".join(_CORPUS)) | set("▁\n[]/"))
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=spec["specials"], initial_alphabet=alphabet,
                                  show_progress=False)
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    if spec["add_bos"]:
        bos = tok.token_to_id(spec["bos"])
        tok.post_processor = TemplateProcessing(single=f"{spec['bos']} $A", pair=f"{spec['bos']} $A $B",
                                                special_tokens=[(spec["bos"], bos)])
    extra = [s for s in spec["specials"] if s not in (spec["bos"], spec["eos"], spec["pad"], "<unk>")]
    kwargs = dict(bos_token=spec["bos"], eos_token=spec["eos"], additional_special_tokens=extra)
    if spec["pad"]:
        kwargs["pad_token"] = spec["pad"]
    if "<unk>" in spec["specials"]:
        kwargs["unk_token"] = "<unk>"
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, **kwargs)
    if spec["template"]:
        tokenizer.chat_template = spec["template"]
    return tokenizer


def build_model(family: str, tokenizer, seed: int = 0):
    """The family's causal LM at toy size, random weights (``seed``), sized for ``tokenizer``."""
    import transformers

    from alol_ray.models import seeded_init

    common = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=2, max_position_embeddings=256, bos_token_id=tokenizer.bos_token_id,
                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    if family == "llama":
        config = transformers.LlamaConfig(num_key_value_heads=1, tie_word_embeddings=False, **common)
        cls = transformers.LlamaForCausalLM
    elif family == "qwen2":
        config = transformers.Qwen2Config(num_key_value_heads=1, tie_word_embeddings=True, **common)
        cls = transformers.Qwen2ForCausalLM
    elif family == "mistral":
        config = transformers.MistralConfig(num_key_value_heads=1, tie_word_embeddings=False, sliding_window=None,
                                            **common)
        cls = transformers.MistralForCausalLM
    elif family == "gpt_neox":
        config = transformers.GPTNeoXConfig(tie_word_embeddings=False, **common)
        cls = transformers.GPTNeoXForCausalLM
    elif family == "gemma":
        config = transformers.GemmaConfig(num_key_value_heads=1, head_dim=32, **common)
        cls = transformers.GemmaForCausalLM
    else:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    return seeded_init(cls, config, tokenizer, seed)


def build_family(family: str, out_dir, seed: int = 0) -> str:
    """A save_pretrained folder (config, safetensors, tokenizer with its chat template) of the family's toy model."""
    out_dir = str(out_dir)
    tokenizer = build_tokenizer(family)
    model = build_model(family, tokenizer, seed=seed)
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def build_gpt_neo(out_dir, seed: int = 0) -> str:
    """A toy GPT-Neo (EleutherAI's GPT-Neo 125M is its real size): transformers runs it, vLLM 0.32 has no
    implementation of it. For the engine fall-back tests."""
    import transformers

    from alol_ray.models import seeded_init

    out_dir = str(out_dir)
    tokenizer = build_tokenizer("gpt_neox")
    config = transformers.GPTNeoConfig(vocab_size=len(tokenizer), hidden_size=64, num_layers=2, num_heads=2,
                                       attention_types=[[["global"], 2]], max_position_embeddings=256,
                                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    model = seeded_init(transformers.GPTNeoForCausalLM, config, tokenizer, seed)
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir
