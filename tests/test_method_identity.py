"""A method owns its config section and its fingerprint: a knob of one method retrains that method only.

A training run's fingerprint (``alol_ray.train.trainer.identity``) holds the shared ``train.*`` keys the loop
reads, minus the runtime-only ones (``config_fields.runtime_field``: a rerun that changes them resumes), plus
``Method.identity``: the method's own knobs. The A-LoL family's losses declare which ``LossParams`` they read
(``register_loss(knobs=...)``); ``test_losses_read_only_the_knobs_they_declare`` holds them to it.
"""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch

from alol_ray.config import load_config
from alol_ray.hashing import fingerprint
from alol_ray.losses import REGISTRY, LossInputs, LossParams
from alol_ray.registry import get_method, method_names
from alol_ray.train.trainer import shared_settings

OFFLINE = [name for name in method_names() if not get_method(name).online]
DPO = {"dpo", "dpo_ref_free"}
GOLD = {"gold", "gold_delta", "gold_s", "gold_p"}
CLIPPED = {"r_lol", "a_lol", "a_lol_seq"}

# an override -> the methods whose runs it must retrain (every other offline method's run stays as it is)
CHANGES = [
    ("train.dpo.beta=0.2", DPO),
    ("train.dpo.loss_type=ipo", DPO),
    ("train.dpo.reference_free=true", {"dpo"}),  # dpo_ref_free is reference-free whatever the key says
    ("train.pro.sft_weight=0.5", {"pro"}),
    ("train.gold.u=0.3", GOLD),
    ("train.gold.sync_every=7", GOLD),
    ("train.gold.reward=p", {"gold"}),  # the suffixed names fix the reward
    ("train.alol.clip_eps=0.5", CLIPPED),
    ("train.alol.clip=false", CLIPPED),
    ("train.alol.kl_beta=0.3", {"a_lol_kl"}),
    ("train.alol.r_gold_u=0.3", {"r_gold"}),
    ("train.lr=1e-4", set(OFFLINE)),  # a shared key every method's loop reads
    ("train.log_every=3", set()),  # runtime only: the run resumes
    ("train.num_workers=2", set()),
    ("train.max_failures=3", set()),
]


def run_identities(overrides: list[str]) -> dict[str, str]:
    """Method -> the fingerprint of the config-dependent part of its run (shared train keys + its own knobs)."""
    tc = load_config(None, overrides, resolve=False).train
    return {m: fingerprint(shared_settings(tc), get_method(m).identity(tc)) for m in OFFLINE}


@pytest.fixture(scope="module")
def default_identities() -> dict[str, str]:
    return run_identities([])


@pytest.mark.parametrize("override,retrained", CHANGES, ids=[c[0] for c in CHANGES])
def test_a_knob_changes_the_fingerprints_of_the_methods_that_read_it_only(default_identities, override, retrained):
    after = run_identities([override])
    assert {m for m in OFFLINE if after[m] != default_identities[m]} == retrained


def test_a_setting_added_later_keeps_older_fingerprints_at_its_default():
    """``config_fields.added_field``: a field added to a section after runs were made enters no fingerprint at its
    default (the behaviour those runs had), so they stay up to date; any other value enters. Without the rule a new
    field would make every existing run out of date on its next rerun."""
    from typing import Literal

    from alol_ray.config_fields import added_field, bounded

    @dataclasses.dataclass
    class Before:
        lr: float = bounded(1e-3, gt=0)

    @dataclasses.dataclass
    class After:
        lr: float = bounded(1e-3, gt=0)
        strategy: Literal["ddp", "fsdp"] = added_field("ddp")
        width: int = added_field(4, ge=1)

    assert fingerprint(After()) == fingerprint(Before())
    assert fingerprint(After(strategy="fsdp")) != fingerprint(Before())
    assert fingerprint(After(width=8)) not in (fingerprint(Before()), fingerprint(After(strategy="fsdp")))
    assert fingerprint(After(lr=2e-3)) == fingerprint(Before(lr=2e-3))
    # The reward model's strategy is such a setting: its fingerprint at ddp is the one reward models trained
    # before the setting existed have (the learned settings leave it out), fsdp enters.
    from alol_ray.config import RewardModelConfig
    from alol_ray.rm.train import learned_settings

    assert "strategy" not in learned_settings(RewardModelConfig())
    assert learned_settings(RewardModelConfig(strategy="fsdp", freeze_encoder=False))["strategy"] == "fsdp"


def test_losses_read_only_the_knobs_they_declare():
    """Each A-LoL-family loss, given LossParams whose undeclared fields are far from their defaults, computes
    exactly what it computes with the defaults: what its runs' fingerprints leave out, it does not read."""
    torch.manual_seed(0)
    b, t = 4, 5
    logps = -torch.rand(b, t) * 3
    inputs = LossInputs(logps=logps, mask=torch.ones(b, t), ref_logps=logps - torch.randn(b, t),
                        reward=torch.randn(b), advantage=torch.randn(b))
    odd = {"clip_eps": 0.05, "clip": False, "gold_u": 0.9, "kl_beta": 2.0}
    assert set(odd) == {f.name for f in dataclasses.fields(LossParams)}
    for name, spec in REGISTRY.items():
        base_loss, base_metrics = spec.fn(inputs, LossParams())
        for knob, value in odd.items():
            loss, metrics = spec.fn(inputs, dataclasses.replace(LossParams(), **{knob: value}))
            if knob in spec.knobs:
                continue
            assert torch.equal(loss, base_loss) and metrics == base_metrics, f"{name} reads {knob}"


# -- the user's view: one comparison, one knob changed -------------------------------------------------

# pi_ref is given (the tiny policy of conftest): no reference training job; each method is one short Ray Train job
TOY = [
    "name=knobs", "ray.num_cpus=2", "compare.methods=[nll,a_lol,dpo]", "compare.seeds=1",
    "data.builtin_train_prompts=120", "data.builtin_eval_prompts=16",
    "model.max_prompt_tokens=32", "model.max_response_tokens=24",
    "train.steps=2", "train.eval_every=0", "train.checkpoint_every=2", "train.cpus_per_worker=2",
    "value.epochs=1", "eval.max_prompts=4", "eval.bootstrap_samples=20", "generation.max_new_tokens=6",
]


def stage_lines(out: str) -> dict[str, str]:
    """'[train dpo-s0] up to date' -> {'train dpo-s0': 'up to date'}, for every train and eval stage."""
    return {m.group(1): m.group(2) for m in re.finditer(r"\[((?:train|eval) [\w-]+)\] (up to date|running)", out)}


@pytest.mark.timeout(1800)  # two comparisons, four Ray Train jobs: 660 s measured with 30 processes on 2 cores
def test_changing_one_methods_knob_retrains_and_reevaluates_that_method_only(tmp_path, monkeypatch, capsys,
                                                                            tiny_policy_dir):
    """`alol compare` with nll, a_lol and dpo, then again with `train.dpo.beta` changed (and the runtime-only
    `train.log_every`): dpo trains and is evaluated again; nll, a_lol and pi_ref are up to date."""
    from alol_ray.cli import main

    monkeypatch.chdir(tmp_path)
    args = ["compare", *TOY, f"reference.path={tiny_policy_dir}"]
    assert main(args) == 0
    first = stage_lines(capsys.readouterr().out)
    assert {first[f"{kind} {m}-s0"] for kind in ("train", "eval") for m in ("nll", "a_lol", "dpo")} == {"running"}

    assert main([*args, "train.dpo.beta=0.3", "train.log_every=1"]) == 0
    second = stage_lines(capsys.readouterr().out)
    assert second["train dpo-s0"] == "running" and second["eval dpo-s0"] == "running", second
    for stage in ("train nll-s0", "train a_lol-s0", "eval nll-s0", "eval a_lol-s0", "eval reference-s0"):
        assert second[stage] == "up to date", (stage, second)
