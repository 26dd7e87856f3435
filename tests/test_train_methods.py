"""Training pieces without Ray: the Method registry, batch layouts, LR schedule, data preparation, LoRA.

``build_scored_table`` makes a scored table the way the pipeline does -- reference log-probs through
``tokenization.response_token_logps`` of the (tiny) reference policy -- with a synthetic value column,
so the training tests do not depend on the scoring and value stages.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import require_gpu_extra

from alol_ray import columns as C
from alol_ray.config import RunConfig, TrainConfig
from alol_ray.errors import ConfigError, DataError, UserError
from alol_ray.losses import LOSSES, REQUIRES
from alol_ray.train.loop import learning_rate
from alol_ray.train.policy import build_policy
from alol_ray.registry import get_method, load_builtin_methods
from alol_ray.train.methods import collate_units, training_units

MAX_PROMPT, MAX_RESPONSE = 96, 48


def build_scored_table(rows: pd.DataFrame, policy_dir: str, n_train_prompts: int = 48, n_val_prompts: int = 8):
    """A scored table: the first prompts of train/val, ``ref_token_logps`` / ``ref_logp`` under the policy in
    ``policy_dir`` (eval mode, the ReferenceScorer's tokenisation), value = mean rank-0 train reward."""
    from alol_ray.models import load_policy
    from alol_ray.tokenization import collate, encode_pair, response_token_logps

    keep = []
    for split, n in (("train", n_train_prompts), ("val", n_val_prompts)):
        ids = rows.loc[rows[C.SPLIT] == split, C.PROMPT_ID].drop_duplicates().head(n)
        keep.append(rows[rows[C.PROMPT_ID].isin(ids)])
    table = pd.concat(keep).reset_index(drop=True)
    model, tok = load_policy(policy_dir)
    model.eval()
    logps = []
    with torch.no_grad():
        for start in range(0, len(table), 64):
            chunk = table.iloc[start:start + 64]
            pairs = [encode_pair(tok, p, r, MAX_PROMPT, MAX_RESPONSE) for p, r in zip(chunk[C.PROMPT], chunk[C.RESPONSE])]
            batch = collate(pairs, tok.pad_token_id)
            lp = response_token_logps(model, batch)
            logps += [lp[i, :n].tolist() for i, n in enumerate(batch.response_lengths.tolist())]
    table[C.REF_TOKEN_LOGPS] = logps
    table[C.REF_LOGP] = [float(np.sum(x)) for x in logps]
    value = table.loc[(table[C.SPLIT] == "train") & (table[C.RANK] == 0), C.REWARD].mean()
    table[C.VALUE] = value
    table[C.ADVANTAGE] = table[C.REWARD] - value
    return table


@pytest.fixture(scope="module")
def scored_table(builtin_rows, tiny_policy_dir):
    return build_scored_table(builtin_rows, tiny_policy_dir)


def spec_for(policy_dir: str, **train) -> dict:
    """What build_policy takes: the model section, the train section and the starting weights."""
    cfg = RunConfig()
    cfg.model.max_prompt_tokens, cfg.model.max_response_tokens = MAX_PROMPT, MAX_RESPONSE
    return {"model_cfg": cfg.model, "train_cfg": dataclasses.replace(cfg.train, **train), "policy_path": policy_dir}


def batch_of(table, method, rows, tok):
    frame = table[table[C.SPLIT] == "train"].reset_index(drop=True)
    return collate_units(frame, [np.array([r]) for r in rows], tok, max_prompt_tokens=MAX_PROMPT,
                         max_response_tokens=MAX_RESPONSE, columns=method.columns)


def test_the_eight_losses_are_registered_with_their_columns():
    assert set(LOSSES) <= set(load_builtin_methods())
    for name in LOSSES:
        method = get_method(name)
        assert method.layout == "single"
        wanted = {"ref_logps": C.REF_TOKEN_LOGPS, "reward": C.REWARD, "advantage": C.ADVANTAGE}
        assert set(method.columns) == {wanted[f] for f in REQUIRES[name]}, name
    assert get_method("a_lol").needs_advantage and not get_method("wbc").needs_advantage
    with pytest.raises(ValueError, match="did you mean 'a_lol'"):
        get_method("a_lo")


def _adapter_of(policy_dir: str, folder) -> str:
    """A LoRA adapter on ``policy_dir`` with non-zero B (so it changes the outputs), saved like a hub adapter."""
    import peft

    from alol_ray.models import load_policy

    base, tok = load_policy(policy_dir)
    model = peft.get_peft_model(base, peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(0))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


LOADING_OPTIONS = {  # every way the CPU can load a policy: model.* settings, and whether the start is an adapter
    "float32": ({}, False), "bfloat16": ({"dtype": "bfloat16"}, False), "float16": ({"dtype": "float16"}, False),
    "lora": ({"lora": {"enabled": True}}, False), "lora_bf16": ({"lora": {"enabled": True}, "dtype": "bfloat16"}, False),
    "adapter_start_full": ({}, True), "adapter_start_lora": ({"lora": {"enabled": True}}, True),
}


@pytest.mark.parametrize("option", sorted(LOADING_OPTIONS))
def test_step0_weight_is_one_for_every_way_the_cpu_loads_a_policy(scored_table, tiny_policy_dir, tmp_path, option):
    """pi_ref scored the way the scored table is scored (ReferenceScorer) and the policy built the way
    training builds it, from the same starting folder: at step 0 every importance weight is 1 and nothing is
    clipped, whatever the dtype, LoRA and adapter settings (pi_ref loads exactly as the policy does)."""
    from alol_ray.scoring.reference import ReferenceScorer

    settings, adapter = LOADING_OPTIONS[option]
    model_cfg = dataclasses.replace(RunConfig().model, max_prompt_tokens=MAX_PROMPT, max_response_tokens=MAX_RESPONSE,
                                    dtype=settings.get("dtype", "auto"),
                                    lora=dataclasses.replace(RunConfig().model.lora, r=4, alpha=8, dropout=0.0,
                                                             **settings.get("lora", {})))
    start = _adapter_of(tiny_policy_dir, tmp_path / "adapter") if adapter else tiny_policy_dir
    frame = scored_table[scored_table[C.SPLIT] == "train"].reset_index(drop=True).head(8)
    scorer = ReferenceScorer(start, max_prompt_tokens=MAX_PROMPT, max_response_tokens=MAX_RESPONSE, model_cfg=model_cfg)
    frame = scorer(frame.drop(columns=[C.REF_TOKEN_LOGPS, C.REF_LOGP]))
    model, tok = build_policy(model_cfg, TrainConfig(), start, None, torch.device("cpu"))
    model.eval()
    for name in ("a_lol", "r_lol", "a_lol_seq", "a_lol_kl"):
        method = get_method(name)
        batch = collate_units(frame, [np.array([i]) for i in range(len(frame))], tok, max_prompt_tokens=MAX_PROMPT,
                              max_response_tokens=MAX_RESPONSE, columns=method.columns)
        with torch.no_grad():
            _, metrics = method.compute(model, batch, method.make_params(TrainConfig()), None)
        assert abs(metrics["kl/mean"]) < 1e-4, (option, name, metrics["kl/mean"])
        if "is_weight/mean" in metrics:
            assert abs(metrics["is_weight/mean"] - 1.0) < 1e-4 and metrics["is_weight/clip_frac"] == 0.0, (option, name)


def test_4bit_reference_loads_like_the_4bit_policy_and_needs_a_gpu_alike(tiny_policy_dir):
    """Under QLoRA the policy trains on a 4-bit base, so pi_ref must be scored on the same 4-bit base: the
    scorer uses the policy's loader, which on a CPU refuses 4-bit with the same clear error."""
    from alol_ray.scoring.reference import ReferenceScorer

    model_cfg = dataclasses.replace(RunConfig().model, lora=dataclasses.replace(RunConfig().model.lora, enabled=True,
                                                                                load_in_4bit=True))
    with pytest.raises(ConfigError, match="load_in_4bit.*needs a CUDA GPU"):
        build_policy(model_cfg, TrainConfig(), tiny_policy_dir, None, torch.device("cpu"))
    with pytest.raises(ConfigError, match="load_in_4bit.*needs a CUDA GPU"):
        ReferenceScorer(tiny_policy_dir, max_prompt_tokens=MAX_PROMPT, max_response_tokens=MAX_RESPONSE,
                        model_cfg=model_cfg)


@pytest.mark.gpu
def test_step0_weight_is_one_under_4bit_on_gpu(scored_table, tiny_policy_dir):
    """The QLoRA case on CUDA (bitsandbytes): pi_ref scored in 4-bit, the policy built in 4-bit, weight 1."""
    require_gpu_extra("bitsandbytes")
    from alol_ray.scoring.reference import ReferenceScorer

    model_cfg = dataclasses.replace(RunConfig().model, max_prompt_tokens=MAX_PROMPT, max_response_tokens=MAX_RESPONSE,
                                    lora=dataclasses.replace(RunConfig().model.lora, enabled=True, r=4, alpha=8,
                                                             dropout=0.0, load_in_4bit=True))
    frame = scored_table[scored_table[C.SPLIT] == "train"].reset_index(drop=True).head(8)
    scorer = ReferenceScorer(tiny_policy_dir, max_prompt_tokens=MAX_PROMPT, max_response_tokens=MAX_RESPONSE,
                             model_cfg=model_cfg, use_gpu=True)
    frame = scorer(frame.drop(columns=[C.REF_TOKEN_LOGPS, C.REF_LOGP]))
    device = torch.device("cuda")
    model, tok = build_policy(model_cfg, TrainConfig(), tiny_policy_dir, None, device)
    model.eval()
    method = get_method("a_lol")
    batch = collate_units(frame, [np.array([i]) for i in range(len(frame))], tok, max_prompt_tokens=MAX_PROMPT,
                          max_response_tokens=MAX_RESPONSE, columns=method.columns).to(device)
    with torch.no_grad():
        _, metrics = method.compute(model, batch, method.make_params(TrainConfig()), None)
    assert abs(metrics["is_weight/mean"] - 1.0) < 1e-3 and metrics["is_weight/clip_frac"] == 0.0


def test_step0_importance_ratio_is_one(scored_table, tiny_policy_dir):
    """pi_theta = pi_ref at the start: same tokenisation as the scorer -> log ratio ~ 0 (only the
    float noise of a different padding width), weight 1, nothing clipped."""
    model, tok = build_policy(**spec_for(tiny_policy_dir), checkpoint_model_dir=None, device=torch.device("cpu"))
    for name in ("a_lol", "r_lol", "a_lol_seq", "a_lol_kl"):
        method = get_method(name)
        batch = batch_of(scored_table, method, range(8), tok)
        _, metrics = method.compute(model, batch, method.make_params(TrainConfig()), None)
        assert abs(metrics["kl/mean"]) < 1e-4, name
        if "is_weight/mean" in metrics:
            assert abs(metrics["is_weight/mean"] - 1.0) < 1e-5 and metrics["is_weight/clip_frac"] == 0.0, name


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_one_step_of_every_method_changes_the_policy(scored_table, tiny_policy_dir, name):
    model, tok = build_policy(**spec_for(tiny_policy_dir), checkpoint_model_dir=None, device=torch.device("cpu"))
    method = get_method(name)
    frame = scored_table[scored_table[C.SPLIT] == "train"].reset_index(drop=True)
    positive = np.flatnonzero(frame[C.ADVANTAGE].to_numpy() > 0)[:6]
    batch = batch_of(scored_table, method, positive, tok)
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss, metrics = method.compute(model, batch, method.make_params(TrainConfig()), None)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss) and all(np.isfinite(v) for v in metrics.values())
    changed = sum(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    assert changed == len(before), f"{name}: {len(before) - changed} parameter tensors did not move"


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_method_feeds_its_loss_the_right_columns_and_descends_on_it(scored_table, tiny_policy_dir, name):
    """What the "parameters moved" check cannot see. (1) Wiring: the method's loss equals the registered loss
    called on inputs assembled here by hand from the table (reward from `reward`, advantage from `advantage`,
    pi_ref's log-probs from `ref_token_logps`), so a swapped or missing column fails. (2) Sign: on rows with a
    clearly positive advantage and reward, every method is a weighted likelihood step, so one small step along
    its gradient makes the trained responses more likely; a loss wired with the wrong sign does the opposite."""
    from alol_ray.losses import REGISTRY, LossInputs
    from alol_ray.tokenization import response_token_logps

    model, tok = build_policy(**spec_for(tiny_policy_dir), checkpoint_model_dir=None, device=torch.device("cpu"))
    method = get_method(name)
    frame = scored_table[scored_table[C.SPLIT] == "train"].reset_index(drop=True)
    rows = np.flatnonzero((frame[C.ADVANTAGE].to_numpy() > 0.5) & (frame[C.REWARD].to_numpy() > 0.5))[:6]
    assert len(rows) == 6
    batch = batch_of(scored_table, method, rows, tok)
    params = method.make_params(TrainConfig())
    loss, _ = method.compute(model, batch, params, None)

    spec = REGISTRY[name]
    logps = response_token_logps(model, batch.policy)
    n = logps.shape[1]
    ref = torch.zeros_like(logps)
    for i, r in enumerate(rows):
        stored = frame[C.REF_TOKEN_LOGPS].iloc[r]
        ref[i, :len(stored)] = torch.as_tensor(np.asarray(stored, dtype=np.float32))[:n]
    column = {"reward": C.REWARD, "advantage": C.ADVANTAGE}
    inputs = LossInputs(logps=logps, mask=batch.policy.response_mask,
                        ref_logps=ref if "ref_logps" in spec.requires else None,
                        **{f: torch.as_tensor(frame[column[f]].to_numpy()[rows], dtype=torch.float32)
                           for f in ("reward", "advantage") if f in spec.requires})
    expected, _ = spec.fn(inputs, params)
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)

    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    norm = torch.sqrt(sum((g.double() ** 2).sum() for g in grads))
    with torch.no_grad():
        before = logps.sum().item()
        for p in model.parameters():
            if p.grad is not None:
                p -= 1e-3 * p.grad / norm  # a small step of fixed length along the gradient
        after = response_token_logps(model, batch.policy).sum().item()
    assert after > before, (name, before, after)


def test_micro_batches_and_worker_halves_average_to_the_full_batch_gradient(scored_table, tiny_policy_dir):
    """The loss is a mean over units: grad(mean over 8) == (grad(mean over rows 0-3) + grad(mean over 4-7)) / 2,
    although each half is padded to its own width -- what grad_accum and DDP averaging rely on."""
    model, tok = build_policy(**spec_for(tiny_policy_dir), checkpoint_model_dir=None, device=torch.device("cpu"))
    method = get_method("a_lol")
    params = method.make_params(TrainConfig())
    frame = scored_table[scored_table[C.SPLIT] == "train"].reset_index(drop=True)
    rows = np.flatnonzero(frame[C.ADVANTAGE].to_numpy() > 0)[:8]

    def grads(row_sets):
        model.zero_grad()
        for r in row_sets:
            loss, _ = method.compute(model, batch_of(scored_table, method, r, tok), params, None)
            (loss / len(row_sets)).backward()
        return torch.cat([p.grad.flatten() for p in model.parameters()])

    full, halves = grads([rows]), grads([rows[:4], rows[4:]])
    assert full.abs().max() > 0
    torch.testing.assert_close(halves, full, rtol=1e-5, atol=1e-6)  # float32 sums in another order


def test_reference_logps_of_another_tokenisation_are_refused(scored_table, tiny_policy_dir):
    _, tok = build_policy(**spec_for(tiny_policy_dir), checkpoint_model_dir=None, device=torch.device("cpu"))
    frame = scored_table[scored_table[C.SPLIT] == "train"].reset_index(drop=True)
    with pytest.raises(ValueError, match="different tokenizer or max_prompt/response_tokens"):
        collate_units(frame, [np.array([0])], tok, max_prompt_tokens=MAX_PROMPT, max_response_tokens=8,
                      columns=(C.REF_TOKEN_LOGPS,))


def test_pair_and_list_layouts_stack_units_with_group_and_position(scored_table, tiny_policy_dir):
    """Prompt with ranks 0,1,2 -> pairs (0,1) (default) or (0,1), (0,2) (all); list (0,1,2). Stacked best
    first per unit."""
    frame = pd.DataFrame({C.PROMPT_ID: ["a", "a", "a", "b", "b", "c"], C.RANK: [2, 0, 1, 1, 0, 0],
                          C.PROMPT: ["p"] * 6, C.RESPONSE: ["r0", "r1", "r2", "r3", "r4", "r5"]})
    assert [u.tolist() for u in training_units(frame, "pair")] == [[1, 2], [4, 3]]
    pairs = training_units(frame, "pair", responses="all")
    assert [u.tolist() for u in pairs] == [[1, 2], [1, 0], [4, 3]]
    assert [u.tolist() for u in training_units(frame, "list")] == [[1, 2, 0], [4, 3]]
    assert [u.tolist() for u in training_units(frame, "single")] == [[1], [4], [5]]
    assert len(training_units(frame, "single", responses="all")) == 6
    _, tok = build_policy(**spec_for(tiny_policy_dir), checkpoint_model_dir=None, device=torch.device("cpu"))
    batch = collate_units(frame, pairs, tok, max_prompt_tokens=8, max_response_tokens=8)
    assert batch.group.tolist() == [0, 0, 1, 1, 2, 2] and batch.position.tolist() == [0, 1, 0, 1, 0, 1]
    assert batch.n_units == 3 and len(batch.policy) == 6


def test_a_micro_batch_converts_only_its_own_rows_of_the_text_columns(tiny_policy_dir, monkeypatch):
    """collate_units reads the batch's rows of the prompt and response columns, never the whole column: with
    pandas' string dtype, Series.to_numpy() converts every row, so a step cost O(table rows) (bench/vs_trl.py
    found ~40 ms a step at 43k rows). A string column converted whole fails here; the batch is still right."""
    n = 5000
    frame = pd.DataFrame({C.PROMPT_ID: [f"p{i}" for i in range(n)], C.RANK: 0,
                          C.PROMPT: pd.array([f"prompt {i}" for i in range(n)], dtype="string"),
                          C.RESPONSE: pd.array([f"reply {i}" for i in range(n)], dtype="string")})
    real = pd.Series.to_numpy

    def whole_column(series, *args, **kwargs):
        if isinstance(series.dtype, pd.StringDtype) and len(series) > 100:
            raise AssertionError(f"the whole column {series.name!r} ({len(series)} rows) was converted")
        return real(series, *args, **kwargs)

    monkeypatch.setattr(pd.Series, "to_numpy", whole_column)
    _, tok = build_policy(**spec_for(tiny_policy_dir), checkpoint_model_dir=None, device=torch.device("cpu"))
    batch = collate_units(frame, [np.array([4321]), np.array([7])], tok, max_prompt_tokens=32, max_response_tokens=32)
    first = batch.policy.input_ids[0, : int(batch.policy.attention_mask[0].sum())].tolist()
    assert tok.decode(first, skip_special_tokens=True).replace(" ", "") == "prompt4321reply4321"


def test_learning_rate_schedules():
    """lr 1e-3, warmup 2, total 10: warmup 5e-4, 1e-3; then constant 1e-3, linear 1e-3 * (1 - (s-2)/8),
    cosine 1e-3 * (1 + cos(pi (s-2)/8)) / 2."""
    def lr(schedule, step):
        return learning_rate(step, TrainConfig(lr=1e-3, warmup_steps=2, lr_schedule=schedule), 10)

    for schedule in ("constant", "linear", "cosine"):
        assert lr(schedule, 0) == pytest.approx(5e-4) and lr(schedule, 1) == pytest.approx(1e-3)
    assert lr("constant", 9) == pytest.approx(1e-3)
    assert lr("linear", 6) == pytest.approx(1e-3 * 0.5) and lr("linear", 10) == pytest.approx(0.0)
    assert lr("cosine", 6) == pytest.approx(1e-3 * 0.5) and lr("cosine", 4) == pytest.approx(1e-3 * (1 + np.cos(np.pi / 4)) / 2)


def test_prepare_data_scales_steps_and_names_missing_columns(scored_table):
    from alol_ray.train.trainer import prepare_data

    tc = TrainConfig(steps=100, eval_every=10, batch_size=4)
    data = prepare_data(scored_table, get_method("a_lol"), tc)
    train = scored_table[(scored_table[C.SPLIT] == "train") & (scored_table[C.RANK] == 0)]
    frac = float((train[C.ADVANTAGE] > 0).mean())
    assert data.positive_fraction == pytest.approx(frac) and 0 < frac < 1
    assert data.total_steps == round(100 * frac) and data.eval_every == round(10 * frac)
    assert len(data.units) == len(train) and data.sampler.name == "good_priority"
    nll = prepare_data(scored_table, get_method("nll"), tc)
    assert nll.total_steps == 100 and nll.sampler.name == "uniform"
    with pytest.raises(UserError, match=r"needs columns \['advantage'\].*alol value"):
        prepare_data(scored_table.drop(columns=[C.ADVANTAGE]), get_method("a_lol"), tc)
    broken = scored_table.copy()
    broken.loc[broken[C.RANK] == 0, C.REWARD] = np.nan
    with pytest.raises(DataError, match="'reward' is missing or not finite") as err:
        prepare_data(broken, get_method("wbc"), tc)
    first = err.value.problems[0]
    assert first.field == C.REWARD and first.location == f"row {int(np.flatnonzero(broken[C.REWARD].isna())[0]) + 1}"


def test_lora_trains_adapters_only_and_exports_merged_weights(tmp_path, tiny_policy_dir):
    """LoRA: only adapter weights require grad; the export merges them into a plain HF model whose
    logits equal the adapted model's."""
    from alol_ray.models import load_policy
    from alol_ray.train.checkpoint import export_policy, is_adapter

    spec = spec_for(tiny_policy_dir)
    cpu = torch.device("cpu")
    spec["model_cfg"].lora = dataclasses.replace(spec["model_cfg"].lora, enabled=True, r=4, alpha=8, dropout=0.0)
    model, tok = build_policy(**spec, checkpoint_model_dir=None, device=cpu)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    with torch.no_grad():  # make the adapter non-trivial (B starts at 0)
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    model.save_pretrained(tmp_path / "ckpt")
    assert is_adapter(str(tmp_path / "ckpt"))
    export_policy(str(tmp_path / "ckpt"), str(tmp_path / "best"), base_path=tiny_policy_dir)
    merged, _ = load_policy(str(tmp_path / "best"))
    ids = torch.tensor([tok("### Human: tips for cooking? ### Assistant:")["input_ids"]])
    model.eval()
    merged.eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, model(input_ids=ids).logits, rtol=1e-4, atol=1e-4)
    # resuming from the adapter checkpoint restores the same adapter
    resumed, _ = build_policy(**spec, checkpoint_model_dir=str(tmp_path / "ckpt"), device=cpu)
    # a starting policy that is an adapter (e.g. timdettmers/qlora-hh-rlhf-7b) is trained further as that
    # adapter with LoRA on, and merged into its base for full fine-tuning with LoRA off
    continued, _ = build_policy(**{**spec, "policy_path": str(tmp_path / "ckpt")}, checkpoint_model_dir=None, device=cpu)
    assert {n for n, p in continued.named_parameters() if p.requires_grad} == trainable
    full_model = dataclasses.replace(spec["model_cfg"], lora=dataclasses.replace(spec["model_cfg"].lora, enabled=False))
    full, _ = build_policy(**{**spec, "policy_path": str(tmp_path / "ckpt"), "model_cfg": full_model},
                           checkpoint_model_dir=None, device=cpu)
    assert all(p.requires_grad for p in full.parameters()) and not hasattr(full, "peft_config")
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        for other in (resumed, continued, full):
            other.eval()
            torch.testing.assert_close(other(input_ids=ids).logits, expected, rtol=1e-4, atol=1e-4)


def test_qlora_on_cpu_is_a_clear_config_error(tiny_policy_dir):
    spec = spec_for(tiny_policy_dir)
    spec["model_cfg"].lora = dataclasses.replace(spec["model_cfg"].lora, enabled=True, load_in_4bit=True)
    with pytest.raises(ConfigError, match="needs a CUDA GPU"):
        build_policy(**spec, checkpoint_model_dir=None, device=torch.device("cpu"))


def test_train_config_cross_checks():
    with pytest.raises(ConfigError, match="divisible by train.num_workers x train.grad_accum"):
        TrainConfig(batch_size=6, num_workers=2, grad_accum=2)
    with pytest.raises(ConfigError, match="lr_schedule"):
        TrainConfig(lr_schedule="step")


@pytest.mark.gpu
@pytest.mark.parametrize("four_bit", [False, True])
def test_bf16_autocast_step_on_gpu(scored_table, tiny_policy_dir, four_bit):
    """On CUDA: a LoRA (or QLoRA, if bitsandbytes is installed) a_lol step under bf16 autocast is finite."""
    if four_bit:
        require_gpu_extra("bitsandbytes")
    spec = spec_for(tiny_policy_dir)
    spec["model_cfg"].lora = dataclasses.replace(spec["model_cfg"].lora, enabled=True, r=4, alpha=8,
                                                 load_in_4bit=four_bit)
    device = torch.device("cuda")
    model, tok = build_policy(**spec, checkpoint_model_dir=None, device=device)
    if not four_bit:  # 4-bit weights are placed on the GPU when loaded
        model.to(device)
    method = get_method("a_lol")
    batch = batch_of(scored_table, method, range(8), tok).to(device)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss, metrics = method.compute(model, batch, method.make_params(TrainConfig()), None)
    loss.backward()
    assert torch.isfinite(loss) and all(np.isfinite(v) for v in metrics.values())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters() if p.requires_grad)
