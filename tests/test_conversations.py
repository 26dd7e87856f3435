"""Conversational data: ``messages`` conversations and TRL-style ``chat_pairs`` (prompt / chosen / rejected as
message lists), read through ``alol data`` from a working directory, validated with the same one-line errors as
every other format; under ``model.chat_template`` the policy gets the conversation back, turn for turn."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from conftest import in_dir

from alol_ray import columns as C
from alol_ray.config import ChatTemplateConfig, SourceConfig
from alol_ray.data.loaders import load_prompts
from alol_ray.families import prompt_messages

SYSTEM = {"role": "system", "content": "Be brief."}
ASK = {"role": "user", "content": "What is the capital of France?"}


def say(text: str) -> dict:
    return {"role": "assistant", "content": text}


def conversation(*messages, **extra) -> str:
    return json.dumps({"messages": list(messages), **extra})


def write(folder, name: str, lines: list[str]) -> str:
    (folder / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return name


def test_messages_become_rows_and_the_policy_gets_the_conversation_back(tmp_path, capsys):
    follow_up = [ASK, say("Paris."), {"role": "user", "content": "And of Italy?"}]
    name = write(tmp_path, "chats.jsonl", [
        conversation(SYSTEM, ASK, say("Paris."), reward=1.0),
        conversation(SYSTEM, ASK, say("Lyon, I think."), reward=0.2),
        conversation(*follow_up, say("Rome."), rank=0, split="val"),
        conversation(*follow_up, say("Milan."), rank=1, split="val"),
    ])
    assert in_dir(tmp_path, ["data", "convert", name, "--out", "rows"]) == 0
    rows = pd.read_parquet(tmp_path / "rows" / "rows.parquet")
    assert rows[C.RESPONSE].tolist() == ["Paris.", "Lyon, I think.", "Rome.", "Milan."]
    assert rows[C.RANK].tolist() == [0, 1, 0, 1]  # by reward, and as given
    assert rows[C.PROMPT_ID].nunique() == 2 and rows[C.SPLIT].tolist() == ["train", "train", "val", "val"]
    assert rows[C.PROMPT][0] == "Be brief. ### Human: What is the capital of France? ### Assistant:"
    markers = ChatTemplateConfig()
    assert prompt_messages(rows[C.PROMPT][0], markers) == [SYSTEM, ASK]
    assert prompt_messages(rows[C.PROMPT][2], markers) == follow_up


def test_trl_chat_pairs_with_an_explicit_or_implicit_prompt(tmp_path):
    name = write(tmp_path, "prefs.jsonl", [
        json.dumps({"prompt": [ASK], "chosen": [say("Paris.")], "rejected": [say("Berlin.")], "reward": [1.0, -1.0]}),
        json.dumps({"chosen": [ASK, say("It is Paris.")], "rejected": [ASK, say("No idea.")]}),
    ])
    assert in_dir(tmp_path, ["data", "convert", name, "--out", "rows"]) == 0
    rows = pd.read_parquet(tmp_path / "rows" / "rows.parquet")
    assert rows[C.RESPONSE].tolist() == ["Paris.", "Berlin.", "It is Paris.", "No idea."]
    assert rows[C.RANK].tolist() == [0, 1, 0, 1] and rows[C.PROMPT_ID].nunique() == 2
    assert rows[C.REWARD].tolist()[:2] == [1.0, -1.0]
    assert set(rows[C.PROMPT]) == {"### Human: What is the capital of France? ### Assistant:"}


# (case, lines, the 1-based line at fault, the field named, the reason)
BAD = [
    ("wrong_role", [conversation({"role": "bot", "content": "Hi"}, say("Hello."))], 1, "messages[0].role",
     "bad_role"),
    ("late_system", [conversation(ASK, SYSTEM, say("Paris."))], 1, "messages[1].role", "bad_role"),
    ("empty_turn", [conversation(ASK, say("Paris.")), conversation({"role": "user", "content": " \n"}, say("Hi."))],
     2, "messages[0].content", "empty_turn"),
    ("no_reply", [conversation(ASK)], 1, "messages", "no_final_reply"),
    ("reply_only", [conversation(say("Paris."))], 1, "messages", "no_user_turn"),
    ("no_content", [conversation({"role": "user"}, say("Paris."))], 1, "messages[0].content", "missing_field"),
    ("not_a_list", [json.dumps({"messages": [ASK, say("Paris.")]}), json.dumps({"messages": "Hi"})], 2, "messages",
     "wrong_type"),
    ("mixed", [conversation(ASK, say("Paris.")), json.dumps({"prompt": "Hi", "response": "Hello"})], 2, "<record>",
     "mixed_formats"),
    ("mixed_other_way", [json.dumps({"prompt": "Hi", "response": "Hello"}), conversation(ASK, say("Paris."))], 2,
     "<record>", "mixed_formats"),
    ("two_replies", [json.dumps({"prompt": [ASK], "chosen": [say("A."), say("B.")], "rejected": [say("C.")]})], 1,
     "chosen", "no_final_reply"),
    ("pair_prompts_differ", [json.dumps({"chosen": [ASK, say("Paris.")],
                                         "rejected": [{"role": "user", "content": "Hi"}, say("Hello.")]})], 1,
     "rejected", "inconsistent_prompt"),
    ("bad_reward", [conversation(ASK, say("Paris."), reward="high")], 1, "reward", "wrong_type"),
]


@pytest.mark.parametrize("case,lines,line,field,reason", BAD, ids=[c[0] for c in BAD])
def test_bad_conversations_exit_2_with_one_line_each(tmp_path, capsys, case, lines, line, field, reason):
    name = write(tmp_path, f"{case}.jsonl", lines)
    assert in_dir(tmp_path, ["data", "validate", name]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert f" {case}.jsonl:{line}: {field}: " in err[0] and err[0].endswith(f"[{reason}]"), err
    assert "Traceback" not in "\n".join(err)


def test_a_prompt_set_of_conversations(tmp_path):
    """`alol eval --prompts` reads conversations too: a record may hold the prompt alone (ending with the user's
    turn) or a whole conversation (its last reply is dropped)."""
    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join([conversation(ASK), conversation(SYSTEM, ASK, say("Paris.")),
                               conversation(ASK, say("Paris."))]) + "\n", encoding="utf-8")
    prompts = load_prompts(SourceConfig(path=str(path)))
    assert prompts[C.PROMPT].tolist() == ["### Human: What is the capital of France? ### Assistant:",
                                          "Be brief. ### Human: What is the capital of France? ### Assistant:"]
