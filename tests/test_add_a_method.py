"""docs/architecture.md, "How to add ... A training method", followed to the letter for a toy method: one new module
at the path the doc names (under a folder on PYTHONPATH, as a user outside the repository writes it), no other
file edited. The method is then known to the config checks, `alol train --help` and the method list, has a
fingerprint, computes its loss on a real batch of a tiny model, is found by a fresh process the way a Ray worker
finds it, and (slow tier) trains two steps through the real offline loop (Ray Train).

Fails when the doc's recipe stops being enough (a list to edit, a second file) or names another path."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from alol_ray import columns as C
from alol_ray.config import load_config
from alol_ray.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
NAME = "toy_weighted_nll"

# The module the recipe asks for: a reward-weighted NLL, its loss a pure function of tensors.
MODULE = '''
"""A toy method: reward-weighted NLL, L = mean_i( -w_i * sum_t log pi(y_it | x_i, y_i<t) / |y_i| ), w_i = max(r_i, 0)."""
import torch

from alol_ray import columns as C
from alol_ray.tokenization import response_token_logps
from alol_ray.train.methods import Method, register


def weighted_nll(logps: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """logps, mask: [N, R]; weight: [N]. The mean over the N units of -weight * (mean token log-prob)."""
    per_unit = (logps * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    return -(weight.clamp(min=0) * per_unit).mean()


def compute(model, batch, params, state=None):
    logps = response_token_logps(model, batch.policy)
    loss = weighted_nll(logps, batch.policy.response_mask, batch.reward)
    return loss, {"loss": float(loss.detach())}


register(Method(name="toy_weighted_nll", layout="single", columns=(C.REWARD,), sample_weight="reward",
                compute=compute, make_params=lambda train_cfg: {"weighting": "reward"}))
'''


def recipe() -> str:
    """The doc's paragraph on adding a training method."""
    text = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    return text[text.index("**A training method.**"):].split("\n\n")[0]


@pytest.fixture(scope="module")
def plugin_folder(tmp_path_factory):
    """The recipe's one file, written under a fresh folder put on sys.path (this process) and PYTHONPATH (Ray)."""
    paragraph = recipe()
    files = re.findall(r"Write one module, `([^`]+)`, plus its test `([^`]+)`;\s+edit nothing else", paragraph)
    assert files, f"the recipe no longer says 'Write one module, `...`, plus its test `...`; edit nothing else':\n{paragraph}"
    module_path, _test_path = files[0]
    folder = tmp_path_factory.mktemp("my_methods")
    target = folder / module_path.replace("<name>", NAME)
    target.parent.mkdir(parents=True)
    target.write_text(textwrap.dedent(MODULE), encoding="utf-8")
    before = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}
    sys.path.insert(0, str(folder))
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(folder), str(REPO), old]))
    yield folder
    sys.path.remove(str(folder))
    # The toy method leaves this process's registry as it found it (later tests compare it with the built-ins).
    from alol_ray.train.methods import METHODS

    METHODS.pop(NAME, None)
    sys.modules.pop(f"alol_ray.methods.{NAME}", None)
    if old is None:
        os.environ.pop("PYTHONPATH")
    else:
        os.environ["PYTHONPATH"] = old
    after = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    assert after == before  # exactly one file, and nothing else written there


def test_the_new_module_is_known_to_the_config_checks_and_the_help(plugin_folder, alol_cli):
    from alol_ray.preflight import check_methods
    from alol_ray.registry import check_method_name, method_names

    assert NAME in method_names()
    check_method_name(NAME)
    cfg = load_config(None, [f"train.algo={NAME}", f"compare.methods=[nll,{NAME}]"])
    check_methods(cfg)  # what `alol` runs before taking the run's lock
    with pytest.raises(ConfigError, match=f"did you mean '{NAME}'"):
        check_methods(load_config(None, ["train.algo=toy_weighted_nl"]))
    help_text = subprocess.run([*alol_cli, "train", "--help"], capture_output=True, text=True, check=True).stdout
    assert NAME in " ".join(help_text.split())


def test_the_new_method_has_a_fingerprint_and_computes_its_loss_on_a_real_batch(plugin_folder, builtin_rows,
                                                                              tiny_policy_dir, tmp_path):
    import numpy as np
    import torch

    from alol_ray.registry import get_method
    from alol_ray.scoring.reward import Reward
    from alol_ray.tokenization import response_token_logps
    from alol_ray.train.methods import collate_units
    from alol_ray.train.policy import build_policy
    from alol_ray.train.trainer import identity

    method = get_method(NAME)
    assert (method.layout, method.columns, method.sample_weight) == ("single", (C.REWARD,), "reward")
    cfg = load_config(None, [f"train.algo={NAME}", "model.max_prompt_tokens=64", "model.max_response_tokens=32"])
    table = tmp_path / "table.parquet"
    builtin_rows[builtin_rows[C.SPLIT] == "train"].head(8).to_parquet(table)
    fp = identity(cfg, cfg.train, method, init=tiny_policy_dir, table=str(table), reward=Reward(cfg.reward))
    assert fp["method"] == NAME and fp["knobs"] == {"weighting": "reward"}

    model, tok = build_policy(model_cfg=cfg.model, train_cfg=cfg.train, policy_path=tiny_policy_dir,
                              checkpoint_model_dir=None, device=torch.device("cpu"))
    frame = builtin_rows[builtin_rows[C.SPLIT] == "train"].head(4).reset_index(drop=True)
    batch = collate_units(frame, [np.array([i]) for i in range(4)], tok, max_prompt_tokens=64,
                          max_response_tokens=32, columns=method.columns)
    loss, metrics = method.compute(model, batch, method.make_params(cfg.train), None)
    with torch.no_grad():  # by hand: -mean_i(max(r_i, 0) * mean_t log pi)
        logps = response_token_logps(model, batch.policy)
        mask = batch.policy.response_mask.float()
        expected = -(frame[C.REWARD].clip(lower=0).to_numpy() * ((logps * mask).sum(-1) / mask.sum(-1)).numpy()).mean()
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)
    assert metrics["loss"] == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_a_fresh_process_unpickles_the_new_method(plugin_folder, tmp_path):
    """What a Ray Train worker does with the method it is sent: unpickle it (cloudpickle, as Ray does), importing
    its module by name from PYTHONPATH, without the driver's sys.path."""
    import cloudpickle

    from alol_ray.registry import get_method

    blob = cloudpickle.dumps(get_method(NAME))
    code = "import sys, cloudpickle; m = cloudpickle.loads(sys.stdin.buffer.read()); print(m.name, m.compute.__module__)"
    out = subprocess.run([sys.executable, "-c", code], input=blob, capture_output=True, check=True, cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": os.environ["PYTHONPATH"]}).stdout.decode()
    assert out.split() == [NAME, f"alol_ray.methods.{NAME}"]


@pytest.mark.slow
def test_the_new_method_trains_through_the_offline_loop(plugin_folder, builtin_rows, tiny_policy_dir, tmp_path):
    """Two steps of Ray Train (a worker group: ~25 s unloaded, so in the slow tier)."""
    import ray

    from alol_ray.registry import get_method
    from alol_ray.train.trainer import fit

    cfg = load_config(None, [f"train.algo={NAME}", "train.steps=2", "train.batch_size=4", "train.eval_every=0",
                             "train.sampler=uniform", "train.optimizer=sgd", "train.lr=0.05", "train.log_every=1",
                             "train.checkpoint_every=2", "train.scale_steps_by_positive=false",
                             "model.max_prompt_tokens=64", "model.max_response_tokens=32"])
    table = tmp_path / "table.parquet"
    builtin_rows[builtin_rows[C.SPLIT].isin(["train", "val"])].head(40).to_parquet(table)
    ray.shutdown()  # a Ray whose workers see PYTHONPATH (the new module's folder)
    ray.init(address="local", num_cpus=2, include_dashboard=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "PYTHONPATH": os.environ["PYTHONPATH"]}})
    try:
        outcome = fit(cfg, method=get_method(NAME), train_cfg=cfg.train, table=str(table),
                      policy_path=tiny_policy_dir, work_dir=str(tmp_path / "run"))
    finally:
        ray.shutdown()
    assert outcome.total_steps == 2
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]  # the metrics its compute returns
    assert len(losses) == 2 and all(loss == loss and loss > 0 for loss in losses), rows
