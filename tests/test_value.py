"""The value head, its fit (held-out epoch selection), advantages, reports, and the stage end to end."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
import torch

from alol_ray import columns as C
from alol_ray.errors import UserError
from alol_ray.value.fit import (
    ADVANTAGE_REPORT,
    FIT_REPORT,
    HISTOGRAM,
    add_value_columns,
    advantage_report,
    fit_value_head,
    plot_advantages,
    predict,
)
from alol_ray.value.head import CONFIG_FILE, WEIGHTS_FILE, ValueHead, ValueHeadConfig, load_head, save_head

MAX_VALUE = 3.0


def _synthetic(n: int, seed: int = 0, hidden: int = 32, vocab: int = 20):
    """Prompts as sequences of fixed random token embeddings (+ noise); the target is a function of the
    prompt: 2.5 if the key token (id 1) occurs anywhere in it, else 0.5."""
    gen = torch.Generator().manual_seed(seed)
    table = torch.randn(vocab, hidden, generator=gen)
    rng = np.random.default_rng(seed)
    states, targets = [], []
    for _ in range(n):
        length = int(rng.integers(4, 13))
        tokens = rng.integers(2, vocab, size=length)
        has_key = rng.random() < 0.5
        if has_key:
            tokens[rng.integers(0, length)] = 1
        states.append(table[torch.as_tensor(tokens)] + 0.1 * torch.randn(length, hidden, generator=gen))
        targets.append(2.5 if has_key else 0.5)
    return states, np.asarray(targets)


def _fit(states, targets, **kw):
    args = dict(heads=4, dropout=0.1, max_value=MAX_VALUE, lr=1e-2, epochs=6, batch_size=32,
                holdout_fraction=0.2, seed=0)
    args.update(kw)
    return fit_value_head(states, targets, **args)


def test_head_ignores_padding_positions():
    torch.manual_seed(0)
    head = ValueHead(ValueHeadConfig(hidden_size=16, num_heads=4, dropout=0.1, max_value=MAX_VALUE)).eval()
    states = torch.randn(3, 7, 16)
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1] * 2 + [0] * 5])
    before = head(states, mask)
    garbage = states.clone()
    garbage[mask == 0] = 100.0 * torch.randn(int((mask == 0).sum()), 16)
    after = head(garbage, mask)
    torch.testing.assert_close(after, before, rtol=0, atol=1e-6)
    # ... while a real position does matter (the check above could fail).
    moved = states.clone()
    moved[1, 0] += 5.0
    assert abs(head(moved, mask)[1] - before[1]).item() > 1e-4
    # The same prompt with or without extra right padding gets the same value.
    alone = head(states[2:3, :2], mask[2:3, :2])
    torch.testing.assert_close(alone, before[2:3], rtol=0, atol=1e-6)


@pytest.mark.parametrize("max_value", [1.0, 3.0])
def test_head_output_in_range(max_value):
    torch.manual_seed(1)
    head = ValueHead(ValueHeadConfig(hidden_size=8, num_heads=2, dropout=0.0, max_value=max_value)).eval()
    for scale, bias in [(1.0, 0.0), (1e3, 50.0), (1e3, -50.0)]:
        with torch.no_grad():
            head.out.bias.fill_(bias)
        out = head(scale * torch.randn(5, 4, 8), torch.ones(5, 4, dtype=torch.long))
        assert out.shape == (5,)
        assert torch.all(out >= 0) and torch.all(out <= max_value)
    head.start_at(0.25 * max_value)
    with torch.no_grad():
        head.out.weight.zero_()
    out = head(torch.randn(2, 3, 8), torch.ones(2, 3, dtype=torch.long))
    torch.testing.assert_close(out, torch.full((2,), 0.25 * max_value), rtol=0, atol=1e-5)


def test_head_rejects_heads_not_dividing_hidden():
    with pytest.raises(ValueError, match="divisible"):
        ValueHeadConfig(hidden_size=10, num_heads=4)


def test_fit_beats_predicting_the_mean_on_held_out_prompts():
    states, targets = _synthetic(120)
    result = _fit(states, targets)
    rep = result.report
    assert rep["prompts/holdout"] == 24 and rep["prompts/fit"] == 96
    assert not set(result.fit_index) & set(result.holdout_index)
    y_hold = targets[result.holdout_index]
    mean_mse = float(np.mean((targets[result.fit_index].mean() - y_hold) ** 2))
    assert rep["mse/holdout_predict_mean"] == pytest.approx(mean_mse, rel=1e-12)
    # Predicting the mean costs ~1.0 here; a head that found the key token is far below that.
    assert rep["mse/holdout"] < 0.2 * rep["mse/holdout_predict_mean"]
    assert rep["best_epoch"] >= 1 and rep["mse/holdout_initial"] > 0.5 * rep["mse/holdout_predict_mean"]
    # The returned head (eval mode) is the one whose held-out MSE is reported.
    assert not result.head.training
    recomputed = float(np.mean((predict(result.head, [states[i] for i in result.holdout_index], 32) - y_hold) ** 2))
    assert recomputed == pytest.approx(rep["mse/holdout"], rel=1e-6)


def test_best_epoch_is_chosen_on_the_held_out_slice():
    """Held-out targets are the mirror image (max - target) of what the fit part teaches: learning makes
    the held-out MSE worse while the fit MSE falls. Selection by held-out MSE picks an early epoch;
    selection by training MSE would pick a late one."""
    states, targets = _synthetic(120, seed=3)
    holdout = np.arange(0, 120, 5)
    mirrored = targets.copy()
    mirrored[holdout] = MAX_VALUE - targets[holdout]
    result = _fit(states, mirrored, holdout_index=holdout)
    history = result.report["epochs"]
    hold = [e["mse/holdout"] for e in history]
    fit = [e["mse/fit"] for e in history]
    assert [e["epoch"] for e in history] == list(range(7))  # epoch 0 = the untrained head
    assert result.report["best_epoch"] == history[int(np.argmin(hold))]["epoch"]
    assert result.report["best_epoch"] != history[int(np.argmin(fit))]["epoch"]
    assert fit[-1] < fit[0] and hold[-1] > hold[0]  # the setup did what it is meant to
    assert np.array_equal(result.holdout_index, holdout)
    recomputed = float(np.mean((predict(result.head, [states[i] for i in holdout], 32) - mirrored[holdout]) ** 2))
    assert recomputed == pytest.approx(min(hold), rel=1e-6)


def _table():
    return pd.DataFrame({
        C.PROMPT_ID: ["a", "a", "b", "c"],
        C.PROMPT: ["p1", "p1", "p2", "p3"],
        C.RESPONSE: ["r1", "r2", "r3", "r4"],
        C.RANK: [0, 1, 0, 0],
        C.SPLIT: ["train", "train", "train", "val"],
        C.REWARD: [2.75, 0.5, 1.0, 3.0],
    })


def test_advantage_is_reward_minus_value_exactly(tmp_path):
    values = {"p1": 1.2345678, "p2": 2.5, "p3": 0.1}
    out = add_value_columns(_table(), values)
    assert np.array_equal(out[C.VALUE].to_numpy(), [1.2345678, 1.2345678, 2.5, 0.1])
    assert np.array_equal(out[C.ADVANTAGE].to_numpy(), out[C.REWARD].to_numpy() - out[C.VALUE].to_numpy())
    report = advantage_report(out)
    train = report["advantage/train"]
    assert train["rows"] == 3
    assert train["positive_fraction"] == pytest.approx(1 / 3)
    assert train["p50"] == pytest.approx(np.percentile([2.75 - 1.2345678, 0.5 - 1.2345678, 1.0 - 2.5], 50))
    assert report["advantage/train_best"]["rows"] == 2
    assert report["advantage/train_best"]["positive_fraction"] == pytest.approx(0.5)
    png = plot_advantages(out, str(tmp_path / HISTOGRAM))
    with open(png, "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"


def test_missing_reward_is_a_user_error():
    table = _table()
    table.loc[2, C.REWARD] = np.nan
    with pytest.raises(UserError, match="row 3"):
        add_value_columns(table, {"p1": 1.0, "p2": 1.0, "p3": 1.0})


def test_head_round_trips_through_safetensors(tmp_path):
    torch.manual_seed(2)
    head = ValueHead(ValueHeadConfig(hidden_size=16, num_heads=4, dropout=0.1, max_value=MAX_VALUE))
    save_head(head, str(tmp_path), note="x")
    assert sorted(os.listdir(tmp_path)) == sorted([WEIGHTS_FILE, CONFIG_FILE])
    loaded = load_head(str(tmp_path))
    assert not loaded.training
    states, mask = torch.randn(4, 5, 16), torch.ones(4, 5, dtype=torch.long)
    torch.testing.assert_close(loaded(states, mask), head.eval()(states, mask), rtol=0, atol=0)


def test_value_stage_end_to_end_on_builtin_task(tmp_path, builtin_rows, tiny_policy_dir, ray_local, capsys,
                                                monkeypatch):
    """`alol value --table table.parquet --ref policy --out value` from the working directory, on the built-in
    task with pi_ref = the tiny policy fixture."""
    import shutil

    from alol_ray.cli import main
    from alol_ray.config import load_config
    from alol_ray.models import load_policy
    from alol_ray.scoring.scorers import BUILTIN_SCORERS
    from alol_ray.train.selection import greedy_replies
    from alol_ray.value.fit import GENERATIONS, TABLE_FILE, prompt_states

    rows = builtin_rows
    val_ids = rows.loc[rows[C.SPLIT] == "val", C.PROMPT_ID].unique()[:20]
    train_ids = rows.loc[rows[C.SPLIT] == "train", C.PROMPT_ID].unique()[:30]
    table = rows[rows[C.PROMPT_ID].isin(set(val_ids) | set(train_ids))].reset_index(drop=True)
    table.to_parquet(tmp_path / "table.parquet", index=False)
    shutil.copytree(tiny_policy_dir, tmp_path / "policy")
    monkeypatch.chdir(tmp_path)
    overrides = ["value.epochs=3", "value.heads=2", "value.batch_size=8", "generation.max_new_tokens=12",
                 "generation.batch_size=10", "model.max_prompt_tokens=32", "storage=runs"]
    # In-process through the CLI entry point (a subprocess would pay the torch/transformers import again).
    assert main(["value", "--table", "table.parquet", "--ref", "policy", "--out", "value", *overrides]) == 0
    assert '"mse/holdout"' in capsys.readouterr().out
    out_dir = tmp_path / "value"

    # The targets are the run's reward of pi_ref's own greedy replies to the val prompts (not the data's
    # rewards): regenerated here with plain transformers and scored with the built-in scorer.
    gens = pd.read_parquet(out_dir / GENERATIONS)
    val_prompts = list(pd.unique(table.loc[table[C.SPLIT] == "val", C.PROMPT]))
    assert list(gens[C.PROMPT]) == val_prompts
    model, tok = load_policy(tiny_policy_dir)
    replies = greedy_replies(model, tok, val_prompts, max_prompt_tokens=32, max_new_tokens=12,
                             stop=["### Human:"], batch_size=10)
    assert list(gens[C.RESPONSE]) == replies
    expected = BUILTIN_SCORERS["builtin_task"](val_prompts, replies)
    np.testing.assert_allclose(gens[C.REWARD].to_numpy(), expected, rtol=0, atol=1e-12)

    fit = json.loads((out_dir / FIT_REPORT).read_text())
    assert fit["prompts"] == 20 and fit["prompts/holdout"] == 4
    assert 0 <= fit["best_epoch"] <= 3 and len(fit["epochs"]) == 4
    assert fit["mse/holdout"] == pytest.approx(min(e["mse/holdout"] for e in fit["epochs"]))
    adv = json.loads((out_dir / ADVANTAGE_REPORT).read_text())
    assert adv["advantage/train"]["rows"] == int((table[C.SPLIT] == "train").sum())
    assert (out_dir / HISTOGRAM).read_bytes()[:4] == b"\x89PNG"

    scored = pd.read_parquet(out_dir / TABLE_FILE)
    assert len(scored) == len(table)
    assert pd.read_parquet(tmp_path / "table.parquet").equals(table)  # the input table is never rewritten
    assert np.array_equal(scored[C.ADVANTAGE].to_numpy(), scored[C.REWARD].to_numpy() - scored[C.VALUE].to_numpy())
    assert scored[C.VALUE].between(0.0, 3.0).all()
    assert (scored.groupby(C.PROMPT)[C.VALUE].nunique() == 1).all()
    train_pos = float((scored.loc[scored[C.SPLIT] == "train", C.ADVANTAGE] > 0).mean())
    assert adv["advantage/train"]["positive_fraction"] == pytest.approx(train_pos)

    # The saved head + pi_ref's prompt states reproduce the table's values.
    cfg = load_config(None, overrides)
    head = load_head(str(out_dir))
    prompts = list(scored[C.PROMPT].unique()[:5])
    states = prompt_states(model, tok, prompts, cfg.model.max_prompt_tokens, 8, show_progress=False)
    expected = scored.drop_duplicates(C.PROMPT).set_index(C.PROMPT).loc[prompts, C.VALUE].to_numpy()
    np.testing.assert_allclose(predict(head, states, 8), expected, rtol=0, atol=1e-5)


@pytest.mark.slow  # reward + reference actor pools and two generation rounds: minutes on a busy 2-core box
def test_pipeline_value_runs_once_and_again_when_the_scored_table_changes(tmp_path, tiny_policy_dir, ray_local):
    """Pipeline.value from a fresh run dir (rows -> scored table -> value), then up to date, then built again
    when its input (the scored table) changed: a reward weight changes the table's content."""
    from alol_ray.config import load_config
    from alol_ray.pipeline import Pipeline
    from alol_ray.stage import stage_fingerprint

    overrides = [f"storage={tmp_path}", "name=v", "data.builtin_train_prompts=16",
                 "data.builtin_eval_prompts=10", f"reference.path={tiny_policy_dir}",
                 "model.max_prompt_tokens=32", "model.max_response_tokens=16",
                 "generation.max_new_tokens=8", "value.epochs=2", "value.heads=2", "value.batch_size=8",
                 "scoring.reward_pool.max_actors=1", "scoring.reference_pool.max_actors=1"]
    pipeline = Pipeline(load_config(None, overrides))
    table_path = pipeline.value()
    scored = pd.read_parquet(table_path)
    assert {C.VALUE, C.ADVANTAGE, C.REF_LOGP} <= set(scored.columns)
    assert np.array_equal(scored[C.ADVANTAGE].to_numpy(), scored[C.REWARD].to_numpy() - scored[C.VALUE].to_numpy())
    for name in (FIT_REPORT, ADVANTAGE_REPORT, HISTOGRAM, WEIGHTS_FILE, CONFIG_FILE):
        assert os.path.exists(os.path.join(pipeline.paths.value, name)), name
    assert json.loads(open(os.path.join(pipeline.paths.value, FIT_REPORT)).read())["prompts"] == 10
    first = stage_fingerprint(pipeline.paths.value)

    assert Pipeline(load_config(None, overrides)).value() == table_path
    assert stage_fingerprint(pipeline.paths.value) == first

    Pipeline(load_config(None, overrides + ["reward.components.0.weight=2.0"])).value()
    assert stage_fingerprint(pipeline.paths.value) != first


def test_cli_bad_inputs_exit_2_with_one_line(tmp_path, capsys, monkeypatch):
    from alol_ray.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["value", "--table", str(tmp_path / "missing.parquet"), "--ref", "x"]) == 2
    assert "--table: no such file" in capsys.readouterr().err
    assert main(["value", "--table", str(tmp_path / "t.parquet")]) == 2
    assert "--table and --ref go together" in capsys.readouterr().err
    no_val = _table()
    no_val[C.SPLIT] = "train"
    no_val.to_parquet(tmp_path / "t.parquet", index=False)
    assert main(["value", "--table", str(tmp_path / "t.parquet"), "--ref", "x", f"storage={tmp_path}"]) == 2
    assert "needs val prompts" in capsys.readouterr().err
    assert main(["value", "value.holdout_fraction=1.5"]) == 2
    assert "value.holdout_fraction" in capsys.readouterr().err
