"""The offline-data contract: every loader validates every row; bad input -> exit 2, file:line: field."""

from __future__ import annotations

import json
import re
import subprocess

import pandas as pd
import pytest

from alol_ray import columns as C
from alol_ray.config import DataConfig, SourceConfig
from alol_ray.data.loaders import load_rows
from alol_ray.errors import DataError


def run_cli(alol_cli, *args, cwd=None):
    return subprocess.run([*alol_cli, *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def write_lines(path, lines):
    path.write_bytes(b"\n".join(x if isinstance(x, bytes) else x.encode() for x in lines) + b"\n")
    return path


GOOD = {"prompt": "Hi?", "response": "Hello.", "reward": 0.5}


def jl(**changes):
    row = dict(GOOD, **changes)
    return json.dumps({k: v for k, v in row.items() if v is not ...})


# (case name, lines of the file, the 1-based line at fault, the field named, the reason code)
BAD_CASES = [
    ("malformed_json", [jl(), '{"prompt": "Hi?", "response": '], 2, "<json>", "malformed_json"),
    ("missing_field", [jl(), jl(response=...)], 2, "response", "missing_field"),
    ("wrong_type", [jl(prompt=3)], 1, "prompt", "wrong_type"),
    ("wrong_type_reward", [jl(), jl(), jl(reward="high")], 3, "reward", "wrong_type"),
    ("nan_reward", [jl(), '{"prompt": "Hi?", "response": "Yo.", "reward": NaN}'], 2, "reward", "non_finite_reward"),
    ("inf_reward", ['{"prompt": "Hi?", "response": "Yo.", "reward": Infinity}'], 1, "reward", "non_finite_reward"),
    ("empty_prompt", [jl(prompt="   ")], 1, "prompt", "empty_prompt"),
    ("empty_response", [jl(), jl(response="")], 2, "response", "empty_response"),
    ("invalid_utf8", [jl(), b'{"prompt": "caf\xe9", "response": "x"}'], 2, "<line>", "invalid_utf8"),
    ("duplicate_id", [jl(id="a"), jl(id="b", response="Other."), jl(id="a", response="Third.")], 3, "id", "duplicate_id"),
    ("inconsistent_prompt", [jl(prompt_id="p1", rank=0), jl(prompt_id="p1", prompt="Bye?", rank=1)], 2, "prompt",
     "inconsistent_prompt"),
    ("not_an_object", [jl(), "[1, 2]"], 2, "<record>", "wrong_type"),
]


@pytest.mark.parametrize("name,lines,line,field,reason", BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_input_exits_2_naming_file_line_field(tmp_path, alol_cli, name, lines, line, field, reason):
    path = write_lines(tmp_path / f"{name}.jsonl", lines)
    res = run_cli(alol_cli, "data", "validate", str(path))
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    first = res.stderr.strip().splitlines()[0]
    assert f"{name}.jsonl:{line}: {field}:" in first, first
    assert f"[{reason}]" in first

    # --skip-invalid keeps the good rows and reports the drop by reason.
    skipped = run_cli(alol_cli, "data", "validate", str(path), "--skip-invalid", "--json")
    good_rows = len(lines) - 1
    if good_rows == 0:
        assert skipped.returncode == 2 and "no valid rows" in skipped.stderr
    else:
        assert skipped.returncode == 0, skipped.stderr
        summary = json.loads(skipped.stdout)
        assert summary["dropped_invalid"] == {reason: 1}
        assert summary["rows"] == good_rows


def test_helpful_base_real_defects(hh_dir, alol_cli):
    res = run_cli(alol_cli, "data", "validate", str(hh_dir / "helpful_base.json"))
    assert res.returncode == 2
    named = re.findall(r"helpful_base\.json:(\d+): suffix\[\d\]: .*\[empty_response\]", res.stderr)
    assert named == ["467", "638", "1212", "1277"]

    res = run_cli(alol_cli, "data", "validate", str(hh_dir / "helpful_base.json"), "--skip-invalid", "--json")
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["prompts"] == 2354
    assert summary["rows"] == 4704
    assert summary["dropped_invalid"] == {"empty_response": 4}


def test_hh_rendering_overlap_and_cleaning(hh_dir):
    sources = [SourceConfig(path=str(hh_dir / f), format="hh_pro", split=s)
               for f, s in (("harmless_base.json", "train"), ("helpful_base.json", "train"), ("sampled_dev.json", "val"))]
    frame, report = load_rows(DataConfig(sources=sources, skip_invalid=True))
    assert report.filtered_prompts["val_overlap"] == 136
    val = frame[frame[C.SPLIT] == "val"]
    train = frame[frame[C.SPLIT] == "train"]
    assert val[C.PROMPT_ID].nunique() == 280
    assert not set(val[C.PROMPT]) & set(train[C.PROMPT])
    first = train.iloc[0]
    assert first[C.PROMPT].startswith("### Human: ") and first[C.PROMPT].endswith("### Assistant:")
    assert set(frame[C.RANK]) == {0, 1}
    assert frame[C.REWARD].notna().all()

    cleaned = [SourceConfig(path=str(hh_dir / "helpful_base.json"), format="hh_pro", clean_abrupt=True)]
    frame2, report2 = load_rows(DataConfig(sources=cleaned, skip_invalid=True))
    assert not frame2[C.RESPONSE].str.rstrip().str.endswith(":").any()
    assert report2.filtered_prompts["clean_abrupt"] == 2354 - frame2[C.PROMPT_ID].nunique()


def test_formats_parquet_pairs_hf_and_ranks(tmp_path):
    import datasets

    rows = pd.DataFrame({"q": ["A?", "A?", "B?"], "a": ["x", "y", "z"], "reward": [0.1, 0.9, 0.5]})
    rows.to_parquet(tmp_path / "rows.parquet")
    src = SourceConfig(path=str(tmp_path / "rows.parquet"))
    src.fields.prompt, src.fields.response = "q", "a"
    frame, _ = load_rows(DataConfig(sources=[src]))
    # No rank given: ranks follow the reward within each prompt (0 = best).
    a = frame[frame[C.PROMPT] == "A?"].set_index(C.RESPONSE)[C.RANK]
    assert a["y"] == 0 and a["x"] == 1
    assert frame[C.PROMPT_ID].nunique() == 2

    pairs = [{"prompt": "P?", "chosen": "good", "rejected": "bad"}]
    datasets.Dataset.from_list(pairs).save_to_disk(str(tmp_path / "ds"))
    frame, _ = load_rows(DataConfig(sources=[SourceConfig(path=str(tmp_path / "ds"))]))
    assert list(frame.sort_values(C.RANK)[C.RESPONSE]) == ["good", "bad"]

    transcript = "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: Tell me a joke\n\nAssistant: "
    hh = [{"chosen": transcript + "Why did the chicken...", "rejected": transcript + "No."}]
    write_lines(tmp_path / "hh.jsonl", [json.dumps(r) for r in hh])
    frame, _ = load_rows(DataConfig(sources=[SourceConfig(path=str(tmp_path / "hh.jsonl"))]))
    assert frame[C.PROMPT].iloc[0] == "### Human: Hi there ### Assistant: Hello! ### Human: Tell me a joke ### Assistant:"
    assert list(frame.sort_values(C.RANK)[C.RESPONSE]) == ["Why did the chicken...", "No."]

    bad = [{"chosen": transcript + "A", "rejected": "\n\nHuman: Other\n\nAssistant: B"}]
    write_lines(tmp_path / "hh_bad.jsonl", [json.dumps(r) for r in bad])
    with pytest.raises(DataError, match=r"hh_bad.jsonl:1: rejected: .*inconsistent_prompt"):
        load_rows(DataConfig(sources=[SourceConfig(path=str(tmp_path / "hh_bad.jsonl"))]))


def test_parquet_invalid_utf8_names_row_and_field(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"prompt": pa.array([b"ok", b"caf\xe9"], pa.binary()), "response": ["a", "b"]})
    pq.write_table(table, tmp_path / "bin.parquet")
    with pytest.raises(DataError, match=r"bin.parquet:2: prompt: .*invalid_utf8"):
        load_rows(DataConfig(sources=[SourceConfig(path=str(tmp_path / "bin.parquet"))]))


def test_convert_writes_canonical_parquet(tmp_path, alol_cli):
    src = write_lines(tmp_path / "in.jsonl", [jl(), jl(response="Another.", reward=0.9)])
    out = tmp_path / "out"
    res = run_cli(alol_cli, "data", "convert", str(src) + "@val", "--out", str(out))
    assert res.returncode == 0, res.stderr
    frame = pd.read_parquet(out / "rows.parquet")
    assert list(frame.columns[:5]) == list(C.CANONICAL)
    assert set(frame[C.SPLIT]) == {"val"}
    assert sorted(frame[C.RANK]) == [0, 1]
    # nothing is written when the input is bad
    bad = write_lines(tmp_path / "bad.jsonl", [jl(response="")])
    res = run_cli(alol_cli, "data", "convert", str(bad), "--out", str(tmp_path / "out2"))
    assert res.returncode == 2 and not (tmp_path / "out2").exists()


def test_holdout_is_exact_and_deterministic(hh_dir):
    src = SourceConfig(path=str(hh_dir / "helpful_base.json"), format="hh_pro")
    cfg = DataConfig(sources=[src], skip_invalid=True, holdout_fraction=0.1, holdout_seed=3)
    a, _ = load_rows(cfg)
    b, _ = load_rows(cfg)
    test_ids = set(a.loc[a[C.SPLIT] == "test", C.PROMPT_ID])
    assert len(test_ids) == round(0.1 * 2354)
    assert test_ids == set(b.loc[b[C.SPLIT] == "test", C.PROMPT_ID])
