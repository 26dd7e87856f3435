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

# Ray 2.60, Train v2: the placement-group cleaner warns every few seconds that the State API is
# unavailable when Ray runs without a dashboard (a local run), flooding the console.
NOISY_LOGGERS = ("ray.train.v2._internal.execution.controller.placement_group_cleaner",)


def set_train_poll_interval(seconds: float) -> None:
    """The Train controller's worker-poll interval for Train jobs this process starts (see TRAIN_POLL_ENV)."""
    os.environ[TRAIN_POLL_ENV] = str(seconds)


def quiet_local_ray() -> None:
    """``worker_process_setup_hook`` of a local Ray: raise NOISY_LOGGERS to ERROR in every worker."""
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


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
