"""Experiment tracking: one metrics dict, written to every backend in ``tracking.backends`` at once.

Rank 0 of each Train job sends every line it appends to ``metrics.jsonl`` / ``val.jsonl`` (the reward model:
its per-epoch report), with the same metric names (``loss/policy``, ``train/grad_norm``, ``val/reward``) and the
line's ``train/step`` as the step, to TensorBoard, MLflow and W&B, each through its own client. The driver
prepares the run before any worker starts; the worker opens its clients from that plain-data spec:

    spec = tracking.prepare(cfg, "a_lol-s0", work_dir=work)           # driver: checks, run identity, params
    tracker = tracking.start(spec if rank == 0 else None, first_step=0)  # worker (a no-op without a spec)
    tracker.log(metrics, step=metrics["train/step"])
    tracker.close()

Each run is named ``<name>/<job>`` (``builtin/a_lol-s0``) and carries the resolved config as parameters,
flattened to dotted keys (``train.lr``). A resumed attempt continues the same run: its identity (a random key,
the MLflow run id) is kept in ``<work_dir>/.tracking.json``, and TensorBoard hides what an earlier attempt
wrote from ``first_step`` on, as ``metrics.jsonl`` is truncated there.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import os
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from alol_ray.atomic import write_json
from alol_ray.errors import ConfigError, UserError
from alol_ray.runs import RunPaths
from alol_ray.tracking_backends import INSTALL_HINT, get_backend

STATE_FILE = ".tracking.json"  # hidden: a model folder's content hash ignores it (alol_ray.hashing)
TENSORBOARD_DIR = "tensorboard"  # <dir>/tensorboard/<name>/<job>: `tensorboard --logdir <dir>/tensorboard`
_MLFLOW_PARAMS_PER_CALL = 100  # MLflow's limit of params in one log_batch request
_MLFLOW_MAX_PARAM_LENGTH = 6000
_prepare_lock = threading.Lock()  # `alol compare` prepares concurrent runs from threads of one driver


def _import_backends(backends: list[str]) -> None:
    """Import each backend's package in the driver, so a missing or broken install fails before training."""
    for b in backends:
        try:
            importlib.import_module(get_backend(b).package)
        except ImportError as err:
            raise ConfigError(f"tracking.backends: {b} cannot be imported ({err}): {INSTALL_HINT}") from None


# ---------------------------------------------------------------------------------------------- spec


@dataclass
class TrackingSpec:
    """What a worker needs to open its tracking clients: plain data, shipped inside the loop's spec."""

    backends: list[str]
    run_name: str  # <name>/<job>, e.g. builtin/a_lol-s0
    key: str  # stable across the attempts of one run (a resumed run continues it); the W&B run id
    dir: str  # local output: TensorBoard logs, W&B files, the default MLflow store
    params: dict[str, Any]  # the resolved config, flattened to dotted keys
    group: str  # the run's name (W&B group)
    job_type: str  # train | rm | compare
    mlflow_tracking_uri: str = ""
    mlflow_run_id: str = ""  # created (or found again) by the driver
    wandb_project: str = ""
    wandb_entity: Optional[str] = None
    wandb_mode: str = "offline"
    tags: dict[str, str] = field(default_factory=dict)


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config (dataclasses, dicts, lists of sections) as ``{"train.lr": 0.0005, ...}``: numbers,
    bools and strings stay as they are, None is "null", a list of plain values is its JSON text."""
    if dataclasses.is_dataclass(node) and not isinstance(node, type):
        node = {f.name: getattr(node, f.name) for f in dataclasses.fields(node)}
    if isinstance(node, Mapping) and node:
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    if isinstance(node, (list, tuple)) and node and any(
            isinstance(x, (Mapping, list, tuple)) or dataclasses.is_dataclass(x) for x in node):
        out = {}
        for i, value in enumerate(node):
            out.update(flatten(value, f"{prefix}{i}."))
        return out
    key = prefix.rstrip(".")
    if node is None:
        return {key: "null"}
    if isinstance(node, (bool, int, float, str)):
        return {key: node}
    return {key: json.dumps(node if isinstance(node, (list, tuple, Mapping)) else str(node), default=str)}


def job_name(work_dir: str) -> str:
    """The stage folder a work folder publishes to: ``.a_lol-s0.staging-<fp>`` (alol_ray.stage.staging_dir) ->
    ``a_lol-s0``; any other folder by its own name."""
    name = os.path.basename(os.path.abspath(work_dir))
    head, sep, _ = name.rpartition(".staging-")
    return head[1:] if sep and head.startswith(".") else name


def prepare(cfg, job: str, *, work_dir: Optional[str] = None, train_cfg=None,
            job_type: str = "train") -> Optional[TrackingSpec]:
    """The tracking spec of one run (None when ``tracking.backends`` is empty), made in the driver before any
    worker starts: every backend's package is imported (ConfigError naming the extra otherwise) and the MLflow
    run is created (or found again: a run's identity lives in ``work_dir``/.tracking.json), so a missing
    package, an unreachable server or a refused login stops the stage before training starts.
    ``train_cfg``: the train section this run trains with (the reference's, PPO's), recorded as ``train.*``."""
    tc = cfg.tracking
    if not tc.backends:
        return None
    _import_backends(list(tc.backends))
    with _prepare_lock:
        state_path = os.path.join(work_dir, STATE_FILE) if work_dir else None
        state = _read_state(state_path)
        config = dataclasses.asdict(cfg)
        if train_cfg is not None:
            config["train"] = dataclasses.asdict(train_cfg)
        directory = tc.dir or os.path.join(RunPaths.from_config(cfg).root, "tracking")
        os.makedirs(directory, exist_ok=True)
        key = state.setdefault("key", uuid.uuid4().hex[:16])  # random: two teams' runs never share an id
        spec = TrackingSpec(
            backends=list(tc.backends), run_name=f"{cfg.name}/{job}", key=key, dir=os.path.abspath(directory),
            params=flatten(config), group=cfg.name, job_type=job_type,
            tags={"alol.run": cfg.name, "alol.job": job, "alol.key": key},
            wandb_project=tc.wandb_project, wandb_entity=tc.wandb_entity or os.environ.get("WANDB_ENTITY") or None,
            wandb_mode=tc.wandb_mode)
        if "mlflow" in spec.backends:
            # Read in the driver: on a cluster the workers' environment may not have the variable.
            uri = tc.mlflow_tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or \
                f"sqlite:///{os.path.join(spec.dir, 'mlflow.db')}"
            spec.mlflow_tracking_uri = uri
            spec.mlflow_run_id = _mlflow_run(spec, tc.mlflow_experiment, state)
        if state_path:
            os.makedirs(work_dir, exist_ok=True)
            write_json(state_path, state)
    return spec


def _read_state(path: Optional[str]) -> dict:
    if path and os.path.exists(path):
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    return {}


def _mlflow_run(spec: TrackingSpec, experiment: str, state: dict) -> str:
    """The MLflow run of this spec: the one an earlier attempt created (same server and experiment), else a new
    one with the config as params. Errors (server unreachable, login refused) are user errors, raised now."""
    # lazy: mlflow is optional (alol-ray[tracking])
    from mlflow import MlflowClient
    from mlflow.entities import Param
    from mlflow.exceptions import MlflowException

    where = {"uri": spec.mlflow_tracking_uri, "experiment": experiment}
    try:
        client = MlflowClient(tracking_uri=spec.mlflow_tracking_uri)
        known = state.get("mlflow") or {}
        if {k: known.get(k) for k in where} == where and known.get("run_id"):
            return known["run_id"]
        found = client.get_experiment_by_name(experiment)
        if found is not None:
            experiment_id = found.experiment_id
        else:
            # A local database keeps its artifacts (the compare table) beside it, not in the working directory.
            local = spec.mlflow_tracking_uri.startswith("sqlite:")
            artifacts = "file://" + os.path.join(spec.dir, "mlflow-artifacts") if local else None
            experiment_id = client.create_experiment(experiment, artifact_location=artifacts)
        run = client.create_run(experiment_id, run_name=spec.run_name, tags=spec.tags)
        params = [Param(k, str(v)[:_MLFLOW_MAX_PARAM_LENGTH]) for k, v in sorted(spec.params.items())]
        for i in range(0, len(params), _MLFLOW_PARAMS_PER_CALL):
            client.log_batch(run.info.run_id, params=params[i:i + _MLFLOW_PARAMS_PER_CALL])
    except MlflowException as err:
        raise UserError(f"tracking: MLflow at {spec.mlflow_tracking_uri}: {str(err).splitlines()[0]}") from None
    except ImportError as err:  # a store whose driver is missing (sqlite needs sqlalchemy and alembic)
        raise ConfigError(f"tracking: MLflow at {spec.mlflow_tracking_uri} needs {err.name}: {INSTALL_HINT}") from None
    state["mlflow"] = {**where, "run_id": run.info.run_id}
    return run.info.run_id


# ------------------------------------------------------------------------------------------ backends


class TensorBoardBackend:
    """torch.utils.tensorboard's SummaryWriter in <dir>/tensorboard/<name>/<job>; the config as hparams."""

    def __init__(self, spec: TrackingSpec, first_step: int):
        # lazy: tensorboard is optional (alol-ray[tracking])
        from torch.utils.tensorboard import SummaryWriter

        logdir = os.path.join(spec.dir, TENSORBOARD_DIR, *spec.run_name.split("/"))
        # purge_step: TensorBoard drops what an earlier attempt logged from here on (a fresh run: everything).
        self.writer = SummaryWriter(log_dir=logdir, purge_step=first_step, flush_secs=10)
        if first_step == 0:
            # lazy: torch (the CLI starts without it)
            from torch.utils.tensorboard.summary import hparams

            for summary in hparams(spec.params, {}):
                self.writer.file_writer.add_summary(summary)

    def log(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, global_step=step)

    def log_table(self, name: str, frame, step: int) -> None:
        self.writer.add_text(name, _markdown(frame), global_step=step)

    def close(self) -> None:
        self.writer.close()


class MLflowBackend:
    """MlflowClient on the run the driver created: metrics by log_batch, a table as a JSON artifact."""

    def __init__(self, spec: TrackingSpec, first_step: int):
        # lazy: mlflow is optional (alol-ray[tracking])
        from mlflow import MlflowClient

        self.client = MlflowClient(tracking_uri=spec.mlflow_tracking_uri)
        self.run_id = spec.mlflow_run_id
        self.client.update_run(self.run_id, status="RUNNING")  # a resumed run was FINISHED by a stopped attempt

    def log(self, metrics: dict[str, float], step: int) -> None:
        # lazy: mlflow is optional (alol-ray[tracking])
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items()])

    def log_table(self, name: str, frame, step: int) -> None:
        self.client.log_table(self.run_id, data=frame, artifact_file=f"{name}.json")

    def close(self) -> None:
        self.client.set_terminated(self.run_id, status="FINISHED")


class WandBBackend:
    """wandb.init in ``tracking.wandb_mode`` (offline: files under <dir>/wandb for `wandb sync`)."""

    def __init__(self, spec: TrackingSpec, first_step: int):
        # lazy: wandb is optional (alol-ray[tracking])
        import wandb

        self.wandb = wandb
        os.makedirs(spec.dir, exist_ok=True)
        # console off: Ray already forwards the worker's output; reinit: a driver may log several runs.
        self.run = wandb.init(
            project=spec.wandb_project, entity=spec.wandb_entity, name=spec.run_name, id=spec.key, resume="allow",
            mode=spec.wandb_mode, dir=spec.dir, group=spec.group, job_type=spec.job_type, config=spec.params,
            reinit="create_new", settings=wandb.Settings(console="off", silent=True, disable_git=True))

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def log_table(self, name: str, frame, step: int) -> None:
        self.run.log({name: self.wandb.Table(dataframe=frame)}, step=step)

    def close(self) -> None:
        self.run.finish()


# ------------------------------------------------------------------------------------------- tracker


class Tracker:
    """Fans one metrics dict out to every open backend. With none it does nothing, so a loop calls it on
    every rank and only rank 0's writes anything."""

    def __init__(self, backends: dict[str, Any]):
        self.backends = backends  # name -> open backend object
        self._failed: set[str] = set()

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        """Every finite number of ``metrics`` under its own name, at ``step`` (other values are skipped).

        A backend that fails to log (a tracking server gone away mid-run) is reported once and training goes
        on: metrics.jsonl stays the record, and a long run is not lost to its dashboard."""
        if not self.backends:
            return
        values = {k: float(v) for k, v in metrics.items()
                  if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
        for name, backend in self.backends.items():
            try:
                backend.log(values, int(step))
            except Exception as err:  # noqa: BLE001 - any client error; the first one of each backend is shown
                if name not in self._failed:
                    self._failed.add(name)
                    # not print(): Ray Train patches it in workers, and the line would show twice
                    sys.stderr.write(f"[tracking] {name}: could not log step {step} ({type(err).__name__}: {err}); "
                                     "training goes on, metrics.jsonl has every step\n")
                    sys.stderr.flush()

    def log_table(self, name: str, frame, step: int = 0) -> None:
        """A pandas DataFrame: TensorBoard text (markdown), an MLflow JSON artifact, a W&B Table."""
        for backend in self.backends.values():
            backend.log_table(name, frame, int(step))

    def close(self) -> None:
        backends, self.backends = self.backends, {}
        for backend in backends.values():
            backend.close()

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def start(spec: Optional[TrackingSpec], *, first_step: int = 0) -> Tracker:
    """Open the spec's backends (in the process that logs: rank 0); ``None`` gives a tracker that does nothing.
    ``first_step``: the first step this attempt writes (0, or the resumed checkpoint's step + 1)."""
    if spec is None or not spec.backends:
        return Tracker({})
    opened: dict[str, Any] = {}
    for name in spec.backends:
        try:
            opened[name] = get_backend(name).load_class()(spec, first_step)
        except Exception as err:  # noqa: BLE001 - e.g. W&B online without an API key: one line, not a traceback
            Tracker(opened).close()
            raise UserError(f"tracking: {name} could not start the run {spec.run_name}: "
                            f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from None
    return Tracker(opened)


def _markdown(frame) -> str:
    """A DataFrame as a markdown table (TensorBoard's text plugin renders markdown)."""
    head = [str(c) for c in frame.columns]
    rows = [["" if v is None else str(v) for v in row] for row in frame.itertuples(index=False)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])
