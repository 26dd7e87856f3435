"""The worker-loop skeleton (alol_ray/train/worker_loop.py), tested once for the three loops that run on it
(offline methods, PPO, reward model): resume == straight run, the cadence of evaluations and checkpoints,
stop-at-step, step 0 never selected, each step logged once after a restart.

The skeleton runs in this process with a toy method (a small MLP with dropout, momentum SGD: optimizer
state and RNG draws that a resume must restore) and an in-process session in place of Ray Train's (rank 0
of 1, checkpoints as folders, the latest one restored): a Ray Train job costs tens of seconds per fit on
2 cores, this costs well under one. A crash is the real fault point (``alol_ray.faults``) in a forked child.
The Ray Train side of each loop is tested end to end in tests/test_train.py, test_ppo.py and test_rm.py.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
from dataclasses import dataclass, field

import pytest
import torch
from conftest import armed

from alol_ray.atomic import read_json, read_jsonl
from alol_ray.config import TrainConfig
from alol_ray.train import checkpoint as ckpt
from alol_ray.train.worker import NOT_EVALUATED, SELECTION_METRIC
from alol_ray.train.worker_loop import Hooks, LoopSpec, LRSchedule, cadence, learning_rate, run

TOTAL = 6


class FolderSession:
    """Ray Train's part, in process: rank 0 of 1 on CPU; a reported checkpoint is a folder under ``root``
    and the latest one is restored (Ray's ``get_checkpoint``); reports are kept in order."""

    rank, world, device = 0, 1, torch.device("cpu")

    def __init__(self, root: str):
        self.root = root
        self.reports: list[dict] = []  # {"metrics": ..., "checkpoint": name or None}

    def latest_checkpoint(self):
        names = sorted(n for n in os.listdir(self.root) if n.startswith("checkpoint-")) if os.path.isdir(self.root) else []
        return contextlib.nullcontext(os.path.join(self.root, names[-1])) if names else None

    def report(self, metrics: dict) -> None:
        self.reports.append({"metrics": dict(metrics), "checkpoint": None})

    def report_checkpoint(self, metrics: dict, name: str, write) -> None:
        tmp = os.path.join(self.root, ".tmp-" + name)
        write(tmp)
        os.replace(tmp, os.path.join(self.root, name))  # registered whole, as Ray does
        self.reports.append({"metrics": dict(metrics), "checkpoint": name})


@dataclass
class ToyHooks(Hooks):
    """Regression of a fixed target by an MLP with dropout; val reward scripted per step."""

    val_rewards: dict = field(default_factory=dict)

    def build(self, w, model_dir):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Dropout(0.5), torch.nn.Linear(16, 1))
        if model_dir:
            ckpt.load_weights(model, model_dir)
        return model, None

    def make_optimizer(self, w, trainable):
        return torch.optim.SGD(trainable, lr=0.1, momentum=0.9)

    def evaluate(self, w, step):
        return {"val/reward": self.val_rewards.get(step, float(-step))}

    def state(self, w):
        return {"toy": "state"}

    def train_step(self, w, step, lr):
        g = torch.Generator().manual_seed(1)
        x, y = torch.randn(32, 4, generator=g), torch.randn(32, 1, generator=g)
        loss = torch.nn.functional.mse_loss(w.model(x), y)
        loss.backward()
        return {"loss/total": loss.item(), "train/grad_norm": w.apply_gradients(1.0),
                "toy/draw": float(torch.rand(()))}  # the torch RNG after the step's dropout


def spec(root: str, **overrides) -> LoopSpec:
    fields = dict(name="toy", total_steps=TOTAL, schedule=LRSchedule(lr=0.1, warmup_steps=2, lr_schedule="cosine"),
                  parallel=TrainConfig(bf16=False), eval_every=4, eval_at_start=True, checkpoint_every=3,
                  log_every=2, seed=3, run_dir=os.path.join(root, "logs"), fault_point="toy.step")
    return LoopSpec(**{**fields, **overrides})


def train(root: str, hooks: Hooks | None = None, **overrides) -> FolderSession:
    session = FolderSession(os.path.join(root, "checkpoints"))
    run(spec(root, **overrides), hooks or ToyHooks(), session)
    return session


def weights(root: str, step: int = TOTAL) -> dict:
    from safetensors.torch import load_file

    return load_file(os.path.join(root, "checkpoints", f"checkpoint-{step:07d}", ckpt.MODEL_DIR, ckpt.WEIGHTS_FILE))


def lines(root: str, name: str) -> list[dict]:
    return read_jsonl(os.path.join(root, "logs", name))


def _crash_in_child(root: str) -> int:
    """The same run in a forked child, with the fault point armed at step 5: the child dies there."""
    child = multiprocessing.get_context("fork").Process(target=train, args=(root,))
    child.start()
    child.join(120)
    return child.exitcode


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("straight"))
    return root, train(root)


def test_cadence_of_evaluations_checkpoints_and_reports(straight):
    """eval_every=4 with eval_at_start: evaluations at 0, 4 and the last step 6; checkpoints every 3 steps, at
    every evaluated step (4) and the last; a Ray report every log_every=2 steps, except where a checkpoint
    follows at once (it carries the step's metrics); one metrics line per step."""
    root, session = straight
    assert [m["train/step"] for m in lines(root, "val.jsonl")] == [0, 4, 6]
    assert [r["checkpoint"] for r in session.reports if r["checkpoint"]] == [f"checkpoint-{s:07d}" for s in (3, 4, 6)]
    plain = [r["metrics"]["train/step"] for r in session.reports if not r["checkpoint"]]
    assert plain == [0, 2]  # step 0's evaluation; step 2's log (4 and 6 go with their checkpoints)
    step6 = session.reports[-1]["metrics"]
    assert step6["loss/total"] == lines(root, "metrics.jsonl")[-1]["loss/total"] and step6["val/reward"] == -6.0
    assert [m["train/step"] for m in lines(root, "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]
    assert [m["train/lr"] for m in lines(root, "metrics.jsonl")] == [learning_rate(s, spec(root).schedule, TOTAL)
                                                                     for s in range(TOTAL)]
    state = read_json(os.path.join(root, "checkpoints", "checkpoint-0000006", ckpt.STATE_FILE))
    assert (state["step"], state["total_steps"], state["method"], state["toy"]) == (6, 6, "toy", "state")


def test_cadence_table():
    """The rule itself: not again at the step a run resumed at; stop_at_step always checkpoints; step 0 is
    evaluated only with eval_at_start and never saved."""
    s = spec("/x", stop_at_step=5)
    assert [cadence(s, k, start=0, resumed=False) for k in range(7)] == [
        (True, False), (False, False), (False, False), (False, True), (True, True), (False, True), (True, True)]
    assert cadence(s, 4, start=4, resumed=True) == (False, False)
    assert cadence(spec("/x", eval_at_start=False), 0, start=0, resumed=False) == (False, False)
    assert cadence(spec("/x", eval_every=0), 4, start=0, resumed=False) == (False, False)


def test_a_crash_resumes_from_the_last_checkpoint_equal_to_the_straight_run_logging_each_step_once(straight, tmp_path):
    """The child dies at the fault point before step 5 (after step 5's metrics line, whose checkpoint does not
    exist: the latest is step 4's). The rerun resumes at 4 -- not evaluating or saving step 4 again -- and
    ends with the straight run's weights and metric values exactly (momentum restored through the strategy,
    dropout seeded per step); metrics.jsonl and val.jsonl hold each step once."""
    root, _ = straight
    crashed = str(tmp_path)
    with armed("toy.step=5"):
        assert _crash_in_child(crashed) == 1
    assert [m["train/step"] for m in lines(crashed, "metrics.jsonl")] == [1, 2, 3, 4, 5]
    session = train(crashed)
    assert [r["checkpoint"] for r in session.reports if r["checkpoint"]] == ["checkpoint-0000006"]
    assert [m["train/step"] for m in lines(crashed, "val.jsonl")] == [0, 4, 6]
    straight_lines, resumed_lines = lines(root, "metrics.jsonl"), lines(crashed, "metrics.jsonl")
    assert [m["train/step"] for m in resumed_lines] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(straight_lines, resumed_lines):
        assert (a["loss/total"], a["toy/draw"], a["train/lr"]) == (b["loss/total"], b["toy/draw"], b["train/lr"])
    for key, value in weights(root).items():
        assert torch.equal(value, weights(crashed)[key]), key


def test_stop_at_step_checkpoints_there_and_the_rerun_continues(straight, tmp_path):
    root, _ = straight
    stopped = str(tmp_path)
    session = train(stopped, stop_at_step=2)
    assert [r["checkpoint"] for r in session.reports if r["checkpoint"]] == ["checkpoint-0000002"]
    assert [m["train/step"] for m in lines(stopped, "metrics.jsonl")] == [1, 2]
    train(stopped)
    assert [m["train/step"] for m in lines(stopped, "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]
    for key, value in weights(root).items():
        assert torch.equal(value, weights(stopped)[key]), key


def test_step_zero_is_measured_but_never_selected(tmp_path):
    """The starting policy has no checkpoint to export: its val reward is logged and reported, but it is not
    a selection candidate even when it is the best, for every method alike."""
    session = train(str(tmp_path), ToyHooks(val_rewards={0: 9.0, 4: 1.0, 6: 0.5}))
    assert [m["val/reward"] for m in lines(str(tmp_path), "val.jsonl")] == [9.0, 1.0, 0.5]
    first = session.reports[0]["metrics"]
    assert first["train/step"] == 0 and first["val/reward"] == 9.0 and first[SELECTION_METRIC] == NOT_EVALUATED
    scored = {r["checkpoint"]: r["metrics"][SELECTION_METRIC] for r in session.reports if r["checkpoint"]}
    assert scored == {"checkpoint-0000003": NOT_EVALUATED, "checkpoint-0000004": 1.0, "checkpoint-0000006": 0.5}
    state = read_json(os.path.join(str(tmp_path), "checkpoints", "checkpoint-0000006", ckpt.STATE_FILE))
    assert (state["best_step"], state["best_val_reward"]) == (4, 1.0)
