"""`alol eval --prompts FILE`: a run's policies judged on a new prompt set, through the CLI as a user types it.

The run is made the way `alol compare` leaves one, without the minutes of training: pi_ref (the tiny policy)
and one `nll-s0` policy (another tiny policy) published by the stage mechanism into train/, beside an
unfinished run and a staging folder that must be ignored. Evaluating two policies on a handful of prompts
takes about a minute on 2 cores.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import pandas as pd
import pytest
from conftest import in_dir

from alol_ray import columns as C
from alol_ray import stage
from alol_ray.config import SourceConfig
from alol_ray.data.loaders import load_prompts
from alol_ray.errors import DataError
from alol_ray.runs import RunPaths
from alol_ray.evaluation import eval_job

RUN = ["storage=runs", "name=ev", "data.builtin_train_prompts=60", "data.builtin_eval_prompts=20",
       "generation.max_new_tokens=12", "eval.bootstrap_samples=200"]
NLL_SECONDS, NLL_TOKENS, NLL_STEP_S = 12.5, 1000.0, 2.0


def publish_policy(folder: str, policy: str, seconds: float, metrics: list[dict] = ()) -> None:
    """What the training stage publishes: best/ (an HF folder), metrics.jsonl, stage.json with the seconds."""
    staging = stage.staging_dir(folder, "f" * 20)
    shutil.copytree(policy, os.path.join(staging, "best"))
    with open(os.path.join(staging, "metrics.jsonl"), "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(m) + "\n" for m in metrics)
    stage.publish(staging, folder, "f" * 20, {"seconds": seconds})


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_policy_dir, builtin_rows):
    """(working directory, RunPaths) of a run with pi_ref and one finished nll-s0 policy."""
    from alol_ray.models import init_tiny_policy

    cwd = tmp_path_factory.mktemp("user")
    paths = RunPaths(str(cwd / "runs" / "ev"))
    texts = list(builtin_rows["prompt"].unique()) + list(builtin_rows["response"])
    other = init_tiny_policy(str(tmp_path_factory.mktemp("other")), texts, vocab_size=512, n_layer=2, n_embd=64,
                             n_head=2, n_positions=256, seed=1)  # other weights: replies that differ from pi_ref's
    publish_policy(paths.train("reference", 0), tiny_policy_dir, 30.0)
    publish_policy(paths.train("nll", 0), other, NLL_SECONDS, [{"train/tokens": 600.0, "time/step_s": NLL_STEP_S / 2},
                                                                   {"train/tokens": 400.0, "time/step_s": NLL_STEP_S / 2}])
    # Not finished: a run without its marker, and a staging folder of an interrupted one.
    shutil.copytree(tiny_policy_dir, os.path.join(paths.train("dpo", 0), "best"))
    shutil.copytree(tiny_policy_dir, os.path.join(stage.staging_dir(paths.train("a_lol", 0), "a" * 20), "best"))
    return cwd, paths


@pytest.fixture(scope="module")
def test_prompts(builtin_rows):
    """Six distinct test prompts of the built-in task."""
    return list(builtin_rows.loc[builtin_rows[C.SPLIT] == "test", C.PROMPT].unique()[:6])


def write_prompts(path, prompts) -> str:
    """A prompt-only jsonl file (the common benchmark set); returns the output folder name it gets."""
    data = "".join(json.dumps({"prompt": p}) + "\n" for p in prompts).encode("utf-8")
    path.write_bytes(data)
    return f"{path.stem}-{hashlib.sha256(data).hexdigest()[:10]}"


@pytest.fixture(scope="module")
def first_eval(ray_local, trained_run, test_prompts):
    """`alol eval --prompts bench.jsonl` once: five prompts, the second one repeated at the end."""
    import io
    from contextlib import redirect_stdout

    cwd, paths = trained_run
    prompts = test_prompts[:5]
    name = write_prompts(cwd / "bench.jsonl", prompts + [prompts[1]])
    out = io.StringIO()
    with redirect_stdout(out):
        rc = in_dir(cwd, ["eval", *RUN, "--prompts", "bench.jsonl"])
    assert rc == 0, out.getvalue()[-3000:]
    return cwd, paths, prompts, paths.prompts(name), out.getvalue()


def test_every_finished_policy_is_evaluated_on_the_file_and_reported(first_eval):
    cwd, paths, prompts, folder, stdout = first_eval
    table = pd.read_csv(os.path.join(folder, "report", "methods.csv")).set_index("method")
    assert sorted(table.index) == ["nll", "reference"]  # the unfinished dpo-s0 and a_lol staging are not policies
    assert (table["prompts"] == 5).all() and (table["seeds"] == 1).all()
    # train_dir and the marker's seconds reach the cost columns
    assert table.loc["nll", "train_seconds"] == NLL_SECONDS
    assert table.loc["nll", "tokens_per_s"] == pytest.approx(NLL_TOKENS / NLL_STEP_S)  # step time, not the wall
    assert pd.isna(table.loc["reference", "train_seconds"])

    ref = pd.read_parquet(os.path.join(folder, "reference-s0", eval_job.EXAMPLES_FILE))
    nll = pd.read_parquet(os.path.join(folder, "nll-s0", eval_job.EXAMPLES_FILE))
    assert nll[C.PROMPT].tolist() == prompts == ref[C.PROMPT].tolist()  # distinct prompts, in file order
    # The win rate is against pi_ref's replies to the same prompts (its own eval's replies, from the cache).
    assert nll[eval_job.REF_RESPONSE].tolist() == ref[C.RESPONSE].tolist()
    assert nll[C.RESPONSE].tolist() != ref[C.RESPONSE].tolist()
    assert (ref[eval_job.WIN] == 0.5).all()
    with open(os.path.join(folder, "nll-s0", eval_job.SUMMARY_FILE), encoding="utf-8") as fh:
        summary = json.load(fh)
    assert summary["split"] == "bench.jsonl" and summary["model"] == os.path.join(paths.train("nll", 0), "best")
    assert summary["reference"] == paths.reference(0)
    # pi_ref's replies to the file are cached beside the results; the run's own cache is not touched.
    assert os.path.exists(os.path.join(folder, "reference_replies.parquet"))
    assert not os.path.exists(paths.reference_replies())

    with open(os.path.join(folder, "report.md"), encoding="utf-8") as fh:
        report = fh.read()
    assert report.startswith("# alol-ray evaluation on bench.jsonl") and "Prompts: bench.jsonl (5 distinct" in report
    assert "--prompts bench.jsonl" in report and str(cwd) not in report
    assert os.path.exists(os.path.join(folder, "report", "reward_dist.png"))
    assert f"report: {os.path.join(folder, 'report.md')}" in stdout and "win vs ref" in stdout
    # It says how it read the file; the run's rows were never built, so there is no overlap to warn about.
    assert "[eval] bench.jsonl: format rows (detected from its first record), 5 distinct prompts" in stdout
    assert "warning" not in stdout
    # Nothing was built for it: pi_ref is the published one, the run's data never loaded.
    assert stage.stage_fingerprint(paths.train("reference", 0)) == "f" * 20 and not os.path.exists(paths.data)
    assert "[train " not in stdout


def test_the_same_file_again_reuses_every_evaluation(first_eval, capsys):
    cwd, _, _, folder, _ = first_eval
    markers = [os.path.join(folder, p, stage.STAGE_FILE) for p in ("reference-s0", "nll-s0")]
    before = [os.path.getmtime(m) for m in markers]
    capsys.readouterr()
    assert in_dir(cwd, ["eval", *RUN, "--prompts", "bench.jsonl"]) == 0
    out = capsys.readouterr().out
    assert "running ..." not in out and "[eval nll-s0] up to date" in out
    assert [os.path.getmtime(m) for m in markers] == before
    assert "nll" in out and "report: " in out


def test_the_run_folder_is_a_config(first_eval, capsys):
    """`--config runs/ev`: the config the run saved (absolute paths), typed from another working directory; the
    same evaluations, so nothing runs again. A folder that is no run is one error line."""
    cwd, *_ = first_eval
    capsys.readouterr()
    assert in_dir(cwd / "runs", ["eval", "--config", "ev", "--prompts", "../bench.jsonl"]) == 0
    out = capsys.readouterr().out
    assert "[eval nll-s0] up to date" in out and "[eval reference-s0] up to date" in out
    assert in_dir(cwd, ["eval", "--config", "runs/ev/train", "--prompts", "bench.jsonl"]) == 2
    assert "--config runs/ev/train: a folder without a config.yaml, so not a run folder" in capsys.readouterr().err


def test_a_config_whose_paths_are_not_here_names_the_runs_own_config(first_eval, capsys):
    """The config a run was made with, typed where its relative data paths do not resolve (the issue's
    `--config configs/hh_tiny_cpu.yaml` from another folder): the error names the run's saved config."""
    cwd, *_ = first_eval
    for name in ("ev", "never_ran"):
        (cwd / "moved.yaml").write_text(f"name: {name}\nstorage: runs\ndata:\n  sources:\n"
                                        "    - {path: data/gone.jsonl}\n", encoding="utf-8")
        assert in_dir(cwd, ["eval", "--config", "moved.yaml", "--prompts", "bench.jsonl"]) == 2
        err = capsys.readouterr().err
        assert "data.sources.0.path: 'data/gone.jsonl' is not a file or folder" in err
        hint = ("The run runs/ev keeps the config it ran with (runs/ev/config.yaml, absolute paths): "
                "`alol eval --config runs/ev ...`")
        assert (hint in err) == (name == "ev"), err


def test_prompts_the_run_trained_or_selected_on_are_counted_and_named(tmp_path, capsys):
    """A prompt file that holds 2 of the run's train prompts (one with its spacing changed), 1 val prompt and 1 test
    prompt: a warning with the counts, as soon as the file is read (here the run has no policy yet, so it stops
    after); the format given with --prompts-format is said to be given."""
    from alol_ray.config import load_config
    from alol_ray.pipeline import Pipeline

    run = ["storage=runs", "name=ov", "data.builtin_train_prompts=60", "data.builtin_eval_prompts=20"]
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        rows = pd.read_parquet(Pipeline(load_config(None, run)).rows())  # the run's rows stage
    finally:
        os.chdir(cwd)
    first = {split: list(rows.loc[rows[C.SPLIT] == split, C.PROMPT].unique()) for split in ("train", "val", "test")}
    respaced = first["train"][1].replace(" ", "  ")
    write_prompts(tmp_path / "mixed.jsonl", [first["train"][0], respaced, first["val"][0], first["test"][0]])
    assert in_dir(tmp_path, ["eval", *run, "--prompts", "mixed.jsonl", "--prompts-format", "rows"]) == 2
    captured = capsys.readouterr()
    assert "[eval] mixed.jsonl: format rows (--prompts-format), 4 distinct prompts" in captured.out
    assert ("[eval] warning: 2 of the 4 prompts of mixed.jsonl are among the run's train prompts and 1 among its "
            "val prompts: not held out") in captured.out
    assert "has no trained policy" in captured.err


def test_an_edited_file_gets_its_own_folder(first_eval, test_prompts, capsys):
    cwd, paths, prompts, folder, _ = first_eval
    name = write_prompts(cwd / "bench.jsonl", test_prompts[:6])
    assert paths.prompts(name) != folder
    assert in_dir(cwd, ["eval", *RUN, "--prompts", "bench.jsonl", "--methods", "nll"]) == 0
    assert "[eval nll-s0] running" in capsys.readouterr().out
    edited = pd.read_parquet(os.path.join(paths.prompts(name), "nll-s0", eval_job.EXAMPLES_FILE))
    assert edited[C.PROMPT].tolist() == test_prompts[:6]
    # The first file's results stay as they were.
    assert pd.read_parquet(os.path.join(folder, "nll-s0", eval_job.EXAMPLES_FILE))[C.PROMPT].tolist() == prompts


def test_methods_must_name_finished_runs(first_eval, capsys):
    cwd, *_ = first_eval
    assert in_dir(cwd, ["eval", *RUN, "--prompts", "bench.jsonl", "--methods", "nll,dpo"]) == 2
    err = capsys.readouterr().err
    assert "--methods: no finished training run of dpo" in err and "(finished: nll)" in err


@pytest.mark.parametrize("content, expected", [
    (None, "--prompts: no such file: bench.jsonl"),
    (b'{"prompt": "a"}\n{"prompt": "b"\n', "bench.jsonl:2: <json>: malformed JSON"),
    (b'{"prompt": "a"}\n{"text": "b"}\n', "bench.jsonl:2: prompt: missing field [missing_field]"),
    (b'{"prompt": "a"}\n{"prompt": "  "}\n', "bench.jsonl:2: prompt: empty text [empty_prompt]"),
    (b'{"prompt": ["a"]}\n', "bench.jsonl:1: prompt: expected a string, got list [wrong_type]"),
    (b"", "bench.jsonl: no prompts"),
    (b"\xff\xfe garbage", "bench.jsonl:1: <line>: invalid UTF-8"),
], ids=["missing", "garbled", "no-prompt", "empty-prompt", "wrong-type", "empty-file", "not-utf8"])
def test_a_bad_prompt_file_is_one_error_line_and_writes_nothing(tmp_path, capsys, content, expected):
    if content is not None:
        (tmp_path / "bench.jsonl").write_bytes(content)
    rc = in_dir(tmp_path, ["eval", "storage=runs", "name=bad", "--prompts", "bench.jsonl"])
    err = capsys.readouterr().err
    assert rc == 2 and f"alol eval: error: {expected}" in err, err
    assert "Traceback" not in err
    run = tmp_path / "runs" / "bad"
    assert not (run / "prompts").exists() and not (run / "config.yaml").exists()


def test_a_run_without_policies_or_other_flags_are_user_errors(tmp_path, capsys):
    (tmp_path / "bench.jsonl").write_text('{"prompt": "a"}\n', encoding="utf-8")
    assert in_dir(tmp_path, ["eval", "storage=runs", "name=new", "--prompts", "bench.jsonl"]) == 2
    assert "has no trained policy and no reference policy to evaluate: run `alol compare`" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "new" / "prompts").exists()
    assert in_dir(tmp_path, ["eval", "storage=runs", "name=new", "--prompts", "bench.jsonl", "--split", "val"]) == 2
    assert "it takes no --split" in capsys.readouterr().err
    assert in_dir(tmp_path, ["eval", "storage=runs", "name=new", "--methods", "nll"]) == 2
    assert "--methods and --prompts-format go with --prompts" in capsys.readouterr().err


def test_prompt_sets_in_every_data_format(tmp_path):
    """Only the prompt is read, in each format; repeats go, file order stays; ids are the file's or the hash's."""
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps(r) + "\n" for r in [
        {"prompt": "b", "response": "x", "prompt_id": 7}, {"prompt": "a"}, {"prompt": "b", "response": "y"}]))
    got = load_prompts(SourceConfig(path=str(rows)))
    assert got[C.PROMPT].tolist() == ["b", "a"] and got[C.PROMPT_ID].iloc[0] == "7"
    assert got[C.PROMPT_ID].iloc[1] == hashlib.sha1(b"a").hexdigest()[:16]

    pairs = tmp_path / "pairs.json"
    pairs.write_text(json.dumps([{"prompt": "q1", "chosen": "c", "rejected": "r"},
                                 {"prompt": "q2", "chosen": "c", "rejected": "r"}]))
    assert load_prompts(SourceConfig(path=str(pairs)))[C.PROMPT].tolist() == ["q1", "q2"]

    hh = tmp_path / "hh.jsonl"
    hh.write_text(json.dumps({"chosen": "\n\nHuman: hi\n\nAssistant: yes", "rejected": "\n\nHuman: hi\n\nAssistant: no"}))
    assert load_prompts(SourceConfig(path=str(hh)))[C.PROMPT].tolist() == ["### Human: hi ### Assistant:"]

    pro = tmp_path / "pro.json"
    pro.write_text(json.dumps([{"prefix": [["<|prompter|>hello", "<|assistant|>"]] * 2, "suffix": ["a", "b"]}]))
    assert load_prompts(SourceConfig(path=str(pro)))[C.PROMPT].tolist() == ["### Human: hello ### Assistant:"]
    parquet = tmp_path / "p.parquet"
    pd.DataFrame({"prompt": ["z", "z", "w"]}).to_parquet(parquet)
    assert load_prompts(SourceConfig(path=str(parquet), format="rows"))[C.PROMPT].tolist() == ["z", "w"]

    clash = tmp_path / "clash.jsonl"
    clash.write_text('{"prompt": "a", "prompt_id": 1}\n{"prompt": "b", "prompt_id": 1}\n')
    with pytest.raises(DataError, match=r"clash.jsonl:2: prompt_id: prompt_id '1' already names another prompt"):
        load_prompts(SourceConfig(path=str(clash)))
