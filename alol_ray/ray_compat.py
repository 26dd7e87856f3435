"""Every workaround for Ray's internals, in one place. Each names the Ray version it was written for and
what breaks without it; ``pyproject.toml`` pins ray to that minor version (2.60).

Code elsewhere calls these functions and never imports ``ray.*._internal`` or ``ray._private`` itself.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from typing import Iterator, Optional

# Ray 2.60, Train v2: a worker's ``ray.train.report`` is handed to the controller through a queue of size
# one that the controller empties only when it polls its workers, every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S
# (default 2 s). Without a shorter interval every report blocks up to 2 s (bench/train_report.py: a tiny
# fit of 20 reports took 65 s instead of 22 s). Ray passes the variable from the driver to the controller.
TRAIN_POLL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"

# Ray 2.60, Train v2: messages that do not change a run's outcome, each with a traceback or every few seconds,
# which a local Ray would stream to the user's terminal: the placement-group cleaner's "State API unavailable"
# (a local Ray runs without a dashboard), and the controller's "Failed to send resource request ... safe to
# ignore" when its request to the autoscaling coordinator times out on a loaded machine. In a local Ray's
# workers they go to a file in Ray's own log folder (``quiet_local_ray``) instead.
NOISY_LOGGERS = ("ray.train.v2._internal.execution.controller.placement_group_cleaner",
                 "ray.train.v2._internal.execution.scaling_policy.autoscaling_coordinator_client")


def set_train_poll_interval(seconds: float) -> None:
    """The Train controller's worker-poll interval for Train jobs this process starts (see TRAIN_POLL_ENV)."""
    os.environ[TRAIN_POLL_ENV] = str(seconds)


def quiet_local_ray() -> None:
    """``worker_process_setup_hook`` of a local Ray: NOISY_LOGGERS write to ``alol-quiet-<pid>.log`` in Ray's log
    folder of the session rather than to the terminal, and this Ray's own GCS is every worker's RAY_ADDRESS
    (see ``own_address_for_state_api``)."""
    # lazy: ray (called in Ray workers only)
    import ray

    logs = ray._private.worker._global_node.get_logs_dir_path()
    handler = logging.FileHandler(os.path.join(logs, f"alol-quiet-{os.getpid()}.log"), delay=True)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in NOISY_LOGGERS:
        logging.getLogger(name).addFilter(_ToFileOnly(handler))
    own_address_for_state_api()


class _ToFileOnly(logging.Filter):
    """A logger filter that writes each record to ``handler`` and lets none through to the logger's (or its
    parents') handlers. A filter, not a handler with ``propagate=False``: Ray Train configures its loggers with
    ``dictConfig`` when a run starts, which resets the handlers and propagation of every ``ray.train.*`` logger
    but keeps their filters."""

    def __init__(self, handler: logging.Handler):
        super().__init__()
        self.handler = handler

    def filter(self, record: logging.LogRecord) -> bool:
        self.handler.handle(record)
        return False


def own_address_for_state_api() -> None:
    """Ray 2.60, Train v2: the placement-group cleaner (a detached actor of every Train run) asks the State API
    whether the controller lives with ``get_actor(id)`` and no address. Without RAY_ADDRESS the State API looks
    for the cluster by the GCS processes running on the machine; with a second Ray on the same machine (other
    users, other jobs) it finds several and raises ``ConnectionError: Found multiple active Ray instances``,
    which ends the cleaner's thread and prints its traceback to the user's terminal on every Train run (the run
    itself succeeds). A local Ray's workers (RAY_ADDRESS unset, or ``local`` as the driver had it) are given
    this Ray's own GCS address."""
    # lazy: ray (called in Ray workers only)
    import ray

    os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address


def quiet_train_reports() -> None:
    """Ray 2.60, Train v2 logs every ``ray.train.report`` call in full at INFO, one long line per call from
    every worker; a training loop that prints its own one-line progress calls this first."""
    # lazy: ray (the CLI starts without it)
    from ray.train.v2._internal.execution import context as train_context

    logging.getLogger(train_context.__file__).setLevel(logging.WARNING)


@contextlib.contextmanager
def no_data_progress_bars() -> Iterator[None]:
    """Ray 2.60, Data: ``from_pandas`` and every operator print their own progress lines; a pass that shows
    one tqdm bar of its own turns them off while it builds its dataset."""
    # lazy: ray (the CLI starts without it)
    import ray

    ctx = ray.data.DataContext.get_current()
    bars = ctx.enable_progress_bars
    ctx.enable_progress_bars = False
    try:
        yield
    finally:
        ctx.enable_progress_bars = bars


# Ray 2.60, Data: when a map function raises, these loggers print the failure (and an abbreviated stack
# trace) at ERROR in the driver before the exception reaches the caller, which reports it itself: a user
# error would show as a screen of Ray output around the one line that matters.
DATA_ERROR_LOGGERS = ("ray.data._internal.execution.streaming_executor_state", "ray.data.exceptions")


@contextlib.contextmanager
def quiet_data_errors() -> Iterator[None]:
    """Raise DATA_ERROR_LOGGERS above ERROR while a pass runs (the exception itself still propagates)."""
    loggers = [logging.getLogger(name) for name in DATA_ERROR_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def fit(trainer):
    """``trainer.fit()`` where Ctrl-C raises KeyboardInterrupt, as everywhere else in a stage.

    Ray 2.60, Train v2: ``fit()`` installs its own SIGINT handler (and never restores the previous one).
    It aborts the run "gracefully" and ``fit()`` then returns a result holding the last checkpoint as if
    training had ended: the caller would export and publish a half-trained policy, and the process would
    go on ignoring Ctrl-C. Without that handler, Ctrl-C interrupts the ``ray.get`` that ``fit()`` waits in;
    the CLI stops the local Ray (the controller and workers with it) and the checkpoints already written
    let a rerun resume.
    """
    # lazy: ray (the CLI starts without it)
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    DataParallelTrainer._register_sigint_handler = lambda self, controller: None
    return trainer.fit()


_REMOTE_ERROR = re.compile(r"^alol_ray\.errors\.(\w+): (.+)$", re.MULTILINE)


def remote_error(exc: BaseException) -> Optional[tuple[str, str]]:
    """(class name, message) of an ``alol_ray.errors`` exception raised in a Ray task or actor whose object
    did not survive the trip back. Ray 2.60, Data: an exception in a map function reaches the driver as
    ``RayTaskError(UserCodeException)`` whose cause is only the message "UDF failed"; the original exception
    is left only in the remote traceback that its text carries."""
    for err in wrapped_errors(exc):
        match = _REMOTE_ERROR.search(str(err))
        if match:
            return match.group(1), match.group(2)
    return None


def wrapped_errors(exc: BaseException) -> list[BaseException]:
    """``exc`` and the errors Ray wrapped inside it (Ray 2.60): task/actor errors (``RayTaskError.cause``),
    Train v2's ``WorkerGroupError.worker_failures`` and ``ControllerError.controller_failure``, and the
    ``__cause__`` / ``__context__`` chain of each."""
    seen: list[BaseException] = []
    todo: list[Optional[BaseException]] = [exc]
    while todo:
        err = todo.pop()
        if err is None or any(err is s for s in seen):
            continue
        seen.append(err)
        todo += [getattr(err, "cause", None), getattr(err, "controller_failure", None), err.__cause__,
                 err.__context__]
        todo += list((getattr(err, "worker_failures", None) or {}).values())
    return seen


# Ray 2.60: when the driver that started a local Ray dies without ``ray.shutdown()`` (SIGKILL, the OOM killer),
# its raylet and GCS go within seconds, but the raylet's agents (``ray::DashboardAgent``,
# ``ray::RuntimeEnvAgent``), Train workers and actors linger for up to a minute or more, holding memory and
# CPU. Each local Ray that ``init_ray`` starts is recorded here (driver pid and start time, session folder);
# the next start ends what is left of the recorded sessions whose driver is gone. Only sessions this user's
# alol commands started are touched.
SESSIONS_ENV = "ALOL_RAY_SESSIONS"  # where the records live (default ~/.cache/alol-ray/ray-sessions)


def _sessions_dir() -> str:
    return os.environ.get(SESSIONS_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "alol-ray", "ray-sessions")


def _start_time(pid: int) -> Optional[str]:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
            return fh.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def record_local_session() -> None:
    """Remember this process's local Ray (called right after it started)."""
    # lazy: ray (called after ray.init only)
    import json

    import ray

    session = ray._private.worker._global_node.get_session_dir_path()
    os.makedirs(_sessions_dir(), exist_ok=True)
    with open(os.path.join(_sessions_dir(), os.path.basename(session) + ".json"), "w", encoding="utf-8") as fh:
        json.dump({"driver": os.getpid(), "start": _start_time(os.getpid()), "session": session}, fh)


def session_processes(session: str) -> list[int]:
    """The processes of a Ray session: those naming its folder on their command line (raylet, GCS, dashboard) or
    holding a file open in it (agents and workers, whose command line is their title)."""
    found = []
    named = re.compile(re.escape(session) + r"(?=[/\x00\s=,]|$)")  # not a session whose name starts like it
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmdline = fh.read().decode("utf-8", "replace")
            if named.search(cmdline):
                found.append(int(entry))
                continue
            if "ray" not in cmdline:
                continue
            if any(os.readlink(f"/proc/{entry}/fd/{fd}").startswith(session + "/")
                   for fd in os.listdir(f"/proc/{entry}/fd")):
                found.append(int(entry))
        except OSError:  # gone meanwhile, or another user's
            continue
    return found


def reap_orphaned_sessions() -> int:
    """End what is left of recorded local Rays whose driver is gone; returns how many processes were ended."""
    # lazy: json, signal, time (only when a local Ray starts)
    import json
    import signal
    import time

    ended = 0
    folder = _sessions_dir()
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        path = os.path.join(folder, name)
        try:
            with open(path, encoding="utf-8") as fh:
                record = json.load(fh)
            if _start_time(int(record["driver"])) == record["start"]:
                continue  # its driver still runs
            session = str(record["session"])
        except (OSError, ValueError, KeyError, TypeError):
            session = ""
        pids = session_processes(session) if session.startswith("/") else []
        ended += len(pids)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in pids:
                with contextlib.suppress(OSError):
                    os.kill(pid, sig)
            deadline = time.time() + 3
            while pids and time.time() < deadline:
                pids = [p for p in pids if _start_time(p) is not None and not _zombie(p)]
                time.sleep(0.1)
            if not pids:
                break
        with contextlib.suppress(OSError):
            os.remove(path)
    return ended


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True
