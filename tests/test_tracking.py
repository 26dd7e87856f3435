"""Experiment tracking with the real libraries, offline and local: TensorBoard read back with its own
EventAccumulator, MLflow through MlflowClient on a sqlite store, W&B in offline mode read back with W&B's
own reader of its transaction log (`wandb leet inspect --json`). The slow tier trains for real and checks
that every metric name of metrics.jsonl / val.jsonl arrives, at the lines' steps: a tiny policy for two steps
through ``trainer.fit`` with all three backends, one PPO iteration, and `alol rm train` from the command line.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from alol_ray import tracking
from alol_ray.atomic import read_json, read_jsonl
from alol_ray.config import load_config
from alol_ray.errors import ConfigError, UserError
from alol_ray.tracking_backends import Backend, register_backend, unregister_backend

# Nothing leaves the machine: no usage telemetry or error reports (Ray workers inherit this environment).
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("WANDB_ERROR_REPORTING", "false")

ALL = "tracking.backends=[tensorboard,mlflow,wandb]"
LINES = [  # what a loop sends: metrics.jsonl lines at steps 1..3 and one val.jsonl line at step 2
    ({"loss/policy": 0.5, "train/grad_norm": 1.5, "train/lr": 1e-3, "train/step": 1}, 1),
    ({"loss/policy": 0.25, "train/grad_norm": 1.25, "train/lr": 1e-3, "train/step": 2}, 2),
    ({"val/reward": 0.75, "val/length": 9.0, "train/step": 2}, 2),
    ({"loss/policy": 0.125, "train/grad_norm": 1.0, "train/lr": 1e-3, "train/step": 3}, 3),
]


def _config(tmp_path, *overrides: str):
    return load_config(None, [f"storage={tmp_path / 'runs'}", "name=trk", *overrides])


def tensorboard_scalars(logdir: str) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(logdir)
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def tensorboard_hparams(logdir: str) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    events = EventAccumulator(logdir)
    events.Reload()
    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    info = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    return {k: v.number_value if v.HasField("number_value") else v.string_value for k, v in info.hparams.items()}


def wandb_records(run_dir: str) -> list[dict]:
    """The records of an offline run's .wandb log, decoded by W&B itself."""
    out = subprocess.run([os.path.join(os.path.dirname(sys.executable), "wandb"), "leet", "inspect", "--json", run_dir],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def wandb_history(run_dir: str) -> list[dict]:
    return [r["history"]["item"] for r in wandb_records(run_dir) if r["type"] == "history"]


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """One run logged to all three backends the way a loop does, then stopped and resumed from step 2."""
    tmp = tmp_path_factory.mktemp("tracking")
    cfg = _config(tmp, ALL, "train.lr=0.001")
    work = tmp / "runs" / "trk" / "train" / ".a_lol-s0.staging-0123456789abcdef"
    spec = tracking.prepare(cfg, tracking.job_name(str(work)), work_dir=str(work))
    with tracking.start(spec) as tracker:
        for metrics, step in LINES:
            tracker.log(metrics, step=step)
    # A second attempt resumed from the checkpoint at step 2 writes step 3 again (metrics.jsonl is truncated there).
    again = tracking.prepare(cfg, tracking.job_name(str(work)), work_dir=str(work))
    with tracking.start(again, first_step=3) as tracker:
        tracker.log({"loss/policy": 0.0625, "train/grad_norm": 0.5, "train/lr": 1e-3, "train/step": 3}, step=3)
    return {"cfg": cfg, "spec": spec, "again": again, "tmp": tmp}


def test_a_run_is_named_after_its_stage_folder_and_keeps_its_identity_when_resumed(logged):
    spec, again = logged["spec"], logged["again"]
    assert spec.run_name == "trk/a_lol-s0"
    assert (again.key, again.mlflow_run_id) == (spec.key, spec.mlflow_run_id)
    assert spec.dir == str(logged["tmp"] / "runs" / "trk" / "tracking")  # default: inside the run directory
    assert spec.params["train.lr"] == 0.001 and spec.params["reward.components.0.name"] == "builtin"
    assert spec.params["tracking.backends"] == '["tensorboard", "mlflow", "wandb"]'


def test_tensorboard_events_read_back_with_tensorboards_reader(logged):
    logdir = os.path.join(logged["spec"].dir, "tensorboard", "trk", "a_lol-s0")
    scalars = tensorboard_scalars(logdir)
    assert set(scalars) == {"loss/policy", "train/grad_norm", "train/lr", "train/step", "val/reward", "val/length"}
    # step 3 of the first attempt is hidden by the resumed attempt's (purge_step)
    assert scalars["loss/policy"] == [(1, 0.5), (2, 0.25), (3, 0.0625)]
    assert scalars["val/reward"] == [(2, 0.75)]
    hparams = tensorboard_hparams(logdir)
    assert hparams["train.lr"] == pytest.approx(0.001) and hparams["name"] == "trk"


def test_mlflow_run_read_back_with_mlflow_client(logged):
    from mlflow import MlflowClient

    spec = logged["spec"]
    assert spec.mlflow_tracking_uri == f"sqlite:///{spec.dir}/mlflow.db"
    client = MlflowClient(tracking_uri=spec.mlflow_tracking_uri)
    run = client.get_run(spec.mlflow_run_id)
    assert run.info.run_name == "trk/a_lol-s0" and run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "alol-ray"
    assert run.data.params["train.lr"] == "0.001" and run.data.params["train.algo"] == "a_lol"
    assert len(run.data.params) == len(spec.params) > 100  # more than one log_batch call's worth
    assert set(run.data.metrics) == {"loss/policy", "train/grad_norm", "train/lr", "train/step", "val/reward",
                                     "val/length"}
    history = [(m.step, m.value) for m in client.get_metric_history(spec.mlflow_run_id, "loss/policy")]
    assert history == [(1, 0.5), (2, 0.25), (3, 0.125), (3, 0.0625)]  # MLflow keeps both attempts' step 3
    assert [(m.step, m.value) for m in client.get_metric_history(spec.mlflow_run_id, "val/reward")] == [(2, 0.75)]


def test_wandb_offline_run_files_read_back(logged):
    spec = logged["spec"]
    runs = sorted(glob.glob(os.path.join(spec.dir, "wandb", f"offline-run-*-{spec.key}")))
    assert len(runs) == 2  # one folder per attempt of the same run id; `wandb sync` merges them
    first = wandb_records(runs[0])
    start = next(r["run"] for r in first if r["type"] == "run")
    assert start["display_name"] == "trk/a_lol-s0" and start["run_id"] == spec.key and start["project"] == "alol-ray"
    config = start["config"]["update"]
    assert config["train.lr"] == 0.001 and config["train.algo"] == "a_lol"
    history = wandb_history(runs[0])
    assert [h["_step"] for h in history] == [1, 2, 3]
    assert history[1]["val/reward"] == 0.75 and history[1]["loss/policy"] == 0.25  # one row per step
    assert [h["loss/policy"] for h in wandb_history(runs[1])] == [0.0625]


def test_compare_logs_its_final_table(tmp_path, logged):
    from mlflow import MlflowClient

    from alol_ray.evaluation.compare import track_table

    uri = logged["spec"].mlflow_tracking_uri  # an existing store: creating one costs seconds
    cfg = _config(tmp_path, "tracking.backends=[tensorboard,mlflow]", f"tracking.mlflow_tracking_uri={uri}",
                  "tracking.mlflow_experiment=compare")
    csv = tmp_path / "methods.csv"
    pd.DataFrame({"method": ["a_lol", "reference"], "seeds": [1, 1], "reward": [0.75, 0.5],
                  "reward/ci": ["(0.7, 0.8)", "(0.4, 0.6)"], "train_seconds": [12.0, float("nan")]}
                 ).to_csv(csv, index=False)
    track_table(cfg, str(csv))
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs(client.get_experiment_by_name("compare").experiment_id)
    assert run.info.run_name == "trk/compare"
    assert run.data.metrics == {"compare/a_lol/seeds": 1.0, "compare/a_lol/reward": 0.75,
                                "compare/a_lol/train_seconds": 12.0, "compare/reference/seeds": 1.0,
                                "compare/reference/reward": 0.5}  # strings and NaN are not metrics
    table = json.loads(open(client.download_artifacts(run.info.run_id, "compare/methods.json", str(tmp_path))).read())
    assert table["columns"][:3] == ["method", "seeds", "reward"] and table["data"][0][0] == "a_lol"
    scalars = tensorboard_scalars(str(tmp_path / "runs" / "trk" / "tracking" / "tensorboard" / "trk" / "compare"))
    assert scalars["compare/a_lol/reward"] == [(0, 0.75)]


@pytest.mark.parametrize("backend, package", [("tensorboard", "tensorboard"), ("mlflow", "mlflow"), ("wandb", "wandb")])
def test_a_missing_backend_package_is_a_config_error_naming_the_extra(tmp_path, monkeypatch, backend, package):
    monkeypatch.setitem(sys.modules, package, None)  # `import <package>` now fails as if it were not installed
    expected = rf"tracking.backends: {backend} is not installed.*pip install 'alol-ray\[tracking\]'"
    with pytest.raises(ConfigError, match=expected):
        _config(tmp_path, f"tracking.backends=[{backend}]")
    assert _config(tmp_path).tracking.backends == []  # off by default: nothing is needed


def test_a_broken_backend_install_fails_in_the_driver_before_training(tmp_path, monkeypatch):
    cfg = _config(tmp_path, "tracking.backends=[wandb]")
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(ConfigError, match=r"wandb cannot be imported.*alol-ray\[tracking\]"):
        tracking.prepare(cfg, "a_lol-s0", work_dir=str(tmp_path / "work"))


@pytest.mark.parametrize("override, expected", [
    ("tracking.backends=[tb]", r"unknown \['tb'\]; choose from \['tensorboard', 'mlflow', 'wandb'\]"),
    ("tracking.backends=[mlflow,mlflow]", "lists a backend twice"),
    ("tracking.wandb_mode=cloud", "wandb_mode must be one of"),
    ("tracking.mlflow_tracking_uri=mlruns", "must be a URI"),
    ("tracking.mlflow_tracking_uri=sqlite:///mlflow.db", "relative to each process's working directory"),
])
def test_bad_tracking_settings_are_config_errors(tmp_path, override, expected):
    with pytest.raises(ConfigError, match=expected):
        _config(tmp_path, override)


def test_tracking_dir_resolves_against_the_working_directory_and_off_costs_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert _config(tmp_path, "tracking.dir=tb").tracking.dir == str(tmp_path / "tb")
    assert tracking.prepare(_config(tmp_path), "a_lol-s0", work_dir=str(tmp_path / "w")) is None
    assert not (tmp_path / "w").exists()
    assert tracking.start(None).backends == {}


def test_the_driver_reads_mlflow_tracking_uri_from_the_environment(tmp_path, monkeypatch, logged):
    from mlflow import MlflowClient

    uri = logged["spec"].mlflow_tracking_uri  # as if it were the team's server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    spec = tracking.prepare(_config(tmp_path, "tracking.backends=[mlflow]", "tracking.mlflow_experiment=team"),
                            "nll-s1", work_dir=str(tmp_path / "w"))
    assert spec.mlflow_tracking_uri == uri and not (tmp_path / "runs" / "trk" / "tracking" / "mlflow.db").exists()
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(spec.mlflow_run_id)
    assert run.info.run_name == "trk/nll-s1" and client.get_experiment(run.info.experiment_id).name == "team"
    assert read_json(str(tmp_path / "w" / tracking.STATE_FILE))["mlflow"]["run_id"] == spec.mlflow_run_id


def test_job_names():
    assert tracking.job_name("/r/train/.reference-s0.staging-00ff00ff00ff00ff") == "reference-s0"
    assert tracking.job_name("/r/train/ppo-s2") == "ppo-s2"


# ------------------------------------------------------------------------------- a real training run


@pytest.mark.slow
def test_fit_sends_every_metrics_jsonl_name_to_every_backend(ray_local, tmp_path, builtin_rows, tiny_policy_dir):
    """Two steps of a_lol on a tiny policy through ``trainer.fit`` (one Ray Train worker), evaluated at step 2.
    Slow tier: about 2 minutes on 2 shared cores, nearly all of it Ray Train's start-up; the default tier drives
    the same worker-side calls (``start`` / ``log`` / ``close``) without Ray (the ``logged`` fixture)."""
    from mlflow import MlflowClient
    from test_train_methods import MAX_PROMPT, MAX_RESPONSE, build_scored_table

    from alol_ray.registry import get_method
    from alol_ray.train.trainer import fit

    table = build_scored_table(builtin_rows, tiny_policy_dir, n_train_prompts=16, n_val_prompts=4)
    cfg = _config(tmp_path, ALL, "train.algo=a_lol", "train.steps=2", "train.batch_size=4", "train.eval_every=2",
                  "train.eval_prompts=4", "train.checkpoint_every=2", "train.log_every=1",
                  "train.scale_steps_by_positive=false", f"model.max_prompt_tokens={MAX_PROMPT}",
                  f"model.max_response_tokens={MAX_RESPONSE}", "generation.max_new_tokens=8", "generation.batch_size=4")
    work = tmp_path / "runs" / "trk" / "train" / "a_lol-s0"
    fit(cfg, method=get_method("a_lol"), train_cfg=cfg.train, table=table, policy_path=tiny_policy_dir,
        work_dir=str(work))

    lines = read_jsonl(str(work / "metrics.jsonl")) + read_jsonl(str(work / "val.jsonl"))
    names = set().union(*lines)
    assert {"loss/policy", "train/grad_norm", "val/reward", "train/step"} <= names
    expected = {(line["train/step"], name): value for line in lines for name, value in line.items()}

    root = tmp_path / "runs" / "trk" / "tracking"
    scalars = tensorboard_scalars(str(root / "tensorboard" / "trk" / "a_lol-s0"))
    assert_same_points({(s, n): v for n, points in scalars.items() for s, v in points}, expected)

    state = read_json(str(work / tracking.STATE_FILE))
    client = MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db")
    run = client.get_run(state["mlflow"]["run_id"])
    assert run.info.run_name == "trk/a_lol-s0" and run.info.status == "FINISHED"
    assert set(run.data.metrics) == names and run.data.params["train.steps"] == "2"
    assert_same_points({(m.step, n): m.value for n in names for m in client.get_metric_history(run.info.run_id, n)},
                       expected)

    (wandb_run,) = glob.glob(str(root / "wandb" / f"offline-run-*-{state['key']}"))
    history = wandb_history(wandb_run)
    assert_same_points({(h["_step"], n): v for h in history for n, v in h.items() if not n.startswith("_")}, expected)


def assert_same_points(got: dict, want: dict) -> None:
    """The same (step, metric name) points with the same values (TensorBoard keeps float32: rel 1e-6)."""
    assert sorted(got) == sorted(want)
    assert [got[k] for k in sorted(want)] == pytest.approx([want[k] for k in sorted(want)], rel=1e-6)


@pytest.mark.slow
def test_ppo_sends_every_metrics_jsonl_name(ray_local, tmp_path, builtin_rows, tiny_policy_dir):
    """One PPO iteration (evaluated before and after) with TensorBoard on: its metrics.jsonl / val.jsonl lines."""
    from test_ppo import ppo_config, rows_file

    from alol_ray.config import TrackingConfig
    from alol_ray.baselines.ppo import fit_ppo

    cfg = ppo_config(iterations=1, rollout_size=4, mini_batch_size=2, ppo_epochs=1, grad_accum=1, lr=1e-3,
                     max_new_tokens=8, eval_every=1, checkpoint_every=1)
    cfg = dataclasses.replace(cfg, name="trk", storage=str(tmp_path / "runs"),
                              tracking=TrackingConfig(backends=["tensorboard"]))
    work = tmp_path / "runs" / "trk" / "train" / "ppo-s0"
    fit_ppo(cfg, train_cfg=dataclasses.replace(cfg.train, eval_prompts=4), rows=rows_file(builtin_rows, str(tmp_path)),
            policy_path=tiny_policy_dir, ref_path=tiny_policy_dir, work_dir=str(work))
    lines = read_jsonl(str(work / "metrics.jsonl")) + read_jsonl(str(work / "val.jsonl"))
    assert {"loss/policy", "objective/kl", "reward/mean", "val/reward"} <= set().union(*lines)
    scalars = tensorboard_scalars(str(tmp_path / "runs" / "trk" / "tracking" / "tensorboard" / "trk" / "ppo-s0"))
    assert_same_points({(s, n): v for n, points in scalars.items() for s, v in points},
                       {(line["train/step"], name): value for line in lines for name, value in line.items()})


@pytest.mark.slow
def test_alol_rm_train_sends_its_per_epoch_report(alol_cli, tmp_path, builtin_rows):
    """`alol rm train` as a user types it, with TensorBoard on: one point per epoch of every reported number."""
    from alol_ray.rm import backbone as B

    texts = list(builtin_rows["prompt"].unique()) + list(builtin_rows["response"])
    B.init_tiny_bert(str(tmp_path / "bert"), texts, vocab_size=400, hidden=32, layers=2, heads=2, seed=0)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_ADDRESS": "local"}
    proc = subprocess.run(
        [*alol_cli, "rm", "train", "name=trk", "data.builtin_train_prompts=48", "data.builtin_eval_prompts=8",
         "rm.backbone=bert", "rm.pooling=mean", "rm.epochs=2", "rm.batch_size=8", "rm.holdout_fraction=0.2",
         "rm.embed_pool.max_actors=1", "tracking.backends=[tensorboard]"],
        capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    final = read_json(str(tmp_path / "runs" / "trk" / "rm" / "model" / "alol_rm_eval.json"))["final_metrics"]
    scalars = tensorboard_scalars(str(tmp_path / "runs" / "trk" / "tracking" / "tensorboard" / "trk" / "rm-s0"))
    assert set(scalars) == set(final) and {"epoch", "holdout/pairwise_acc"} <= set(final)
    assert all([s for s, _ in points] == [1, 2] for points in scalars.values())
    assert scalars["epoch"] == [(1, 1.0), (2, 2.0)]


def test_a_backend_that_cannot_start_is_one_line_and_one_that_fails_later_does_not_stop_training(tmp_path, capsys):
    spec = tracking.prepare(_config(tmp_path, "tracking.backends=[tensorboard]"), "a_lol-s0")

    class Broken:
        package = "broken"

        def __init__(self, spec, first_step):
            raise RuntimeError("api_key not configured (no-tty)\ncall wandb.login()")

    class GoneAway(Broken):
        def __init__(self, spec, first_step):
            pass

        def log(self, metrics, step):
            raise ConnectionError("server unreachable")

        def close(self):
            pass

    try:
        register_backend(Backend("broken", "broken", Broken))
        with pytest.raises(UserError, match=r"^tracking: broken could not start the run trk/a_lol-s0: "
                                            r"RuntimeError: api_key not configured \(no-tty\)$"):
            tracking.start(dataclasses.replace(spec, backends=["tensorboard", "broken"]))
        register_backend(Backend("broken", "broken", GoneAway))
        with tracking.start(dataclasses.replace(spec, backends=["broken", "tensorboard"])) as tracker:
            for step in (1, 2):
                tracker.log({"loss/policy": 1.0 / step}, step=step)
    finally:
        unregister_backend("broken")
    assert capsys.readouterr().err.count("[tracking] broken: could not log step 1 (ConnectionError") == 1
    logdir = os.path.join(spec.dir, "tensorboard", "trk", "a_lol-s0")
    assert tensorboard_scalars(logdir)["loss/policy"] == [(1, 1.0), (2, 0.5)]  # the other backend got every step


def test_record_step_sends_every_step_at_its_own_step_number(tmp_path):
    """What the offline loop and PPO call once per optimizer step, outside Ray Train (``report=False``): each
    step's line goes to metrics.jsonl and to the tracker at that step, every step, and a non-finite value stops
    the run before anything of that step is written. The slow tier checks the same through a real ``fit``."""
    from alol_ray.train.worker import record_step

    spec = tracking.prepare(_config(tmp_path, "tracking.backends=[tensorboard]"), "a_lol-s0")
    metrics_path = str(tmp_path / "metrics.jsonl")
    lines = [{"loss/policy": 1.0 / s, "train/step": s, "train/lr": 1e-3} for s in range(1, 6)]
    with tracking.start(spec) as tracker:
        for line in lines:
            record_step(dict(line), line["train/step"], metrics_path, tracker, report=False)
        with pytest.raises(FloatingPointError, match="non-finite metrics at step 6"):
            record_step({"loss/policy": float("nan"), "train/step": 6}, 6, metrics_path, tracker, report=False)
    assert read_jsonl(metrics_path) == lines
    scalars = tensorboard_scalars(os.path.join(spec.dir, "tensorboard", "trk", "a_lol-s0"))
    assert scalars["loss/policy"] == [(s, pytest.approx(1.0 / s)) for s in range(1, 6)]
    assert scalars["train/step"] == [(s, float(s)) for s in range(1, 6)]
