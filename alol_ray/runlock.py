"""One writer per run directory: ``<run>/.lock`` says which host and process holds the run.

Two commands on one run directory would train into the same checkpoints and append to the same logs.
The lock file is created with ``O_CREAT | O_EXCL`` (atomic on local and NFS-like filesystems) and holds
the holder's host, pid, process start time and command. A second command fails at once with one line
that names the holder. A lock left by a crash is taken over:

- same host: its process is gone (or the pid was reused by a process that started later);
- another host: the holder refreshes the file's mtime every ``HEARTBEAT_S``; a lock not refreshed for
  ``STALE_AFTER_S`` is stale.

The lock is re-entrant within a process (``alol compare`` runs many stages under one lock).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from typing import Optional

from alol_ray.errors import UserError

LOCK_FILE = ".lock"
HEARTBEAT_S = 30.0
STALE_AFTER_S = 300.0

_held: dict[str, int] = {}  # lock path -> depth, for this process
_guard = threading.Lock()


class RunBusy(UserError):
    """Another live command holds the run directory."""


def _process_start(pid: int) -> Optional[float]:
    """Start time of a process in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
            return float(fh.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _alive(pid: int, started: Optional[float]) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    now_started = _process_start(pid)
    return started is None or now_started is None or abs(now_started - started) < 1


def _describe(info: dict) -> str:
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("since", 0)))
    return f"pid {info.get('pid')} on {info.get('host')} since {since}: {info.get('command', '?')}"


class RunLock:
    """``with RunLock(run_dir, command): ...`` holds ``<run_dir>/.lock`` for the block."""

    def __init__(self, run_dir: str, command: str = ""):
        self.path = os.path.join(os.path.abspath(run_dir), LOCK_FILE)
        self.command = command or " ".join(["alol", *sys.argv[1:]])
        self._stop = threading.Event()
        self._beat: Optional[threading.Thread] = None

    def _stale(self, info: dict) -> bool:
        if info.get("host") == socket.gethostname():
            return not _alive(int(info.get("pid", -1)), info.get("start"))
        try:
            return time.time() - os.path.getmtime(self.path) > STALE_AFTER_S
        except OSError:
            return True

    def _try_create(self) -> bool:
        info = {"host": socket.gethostname(), "pid": os.getpid(), "start": _process_start(os.getpid()),
                "since": time.time(), "command": self.command}
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(info, fh)
        return True

    def acquire(self) -> None:
        with _guard:
            if self.path in _held:
                _held[self.path] += 1
                return
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            for _ in range(3):
                if self._try_create():
                    break
                try:
                    with open(self.path, encoding="utf-8") as fh:
                        info = json.load(fh)
                except (OSError, ValueError):
                    info = {}  # being written this instant, or left empty by a crash
                    if time.time() - os.path.getmtime(self.path) < 5:
                        time.sleep(0.5)
                        continue
                if info and not self._stale(info):
                    raise RunBusy(f"{os.path.dirname(self.path)} is in use by {_describe(info)}; wait for it to "
                                  f"finish (or stop it), then rerun")
                # Stale: move it aside atomically so that only one of two racing takers removes it.
                aside = f"{self.path}.stale-{os.getpid()}"
                try:
                    os.replace(self.path, aside)
                    os.remove(aside)
                except FileNotFoundError:
                    pass
            else:
                raise RunBusy(f"could not take the lock {self.path}; rerun")
            _held[self.path] = 1
        self._beat = threading.Thread(target=self._heartbeat, name="alol-run-lock", daemon=True)
        self._beat.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.path)
            except OSError:
                return

    def release(self) -> None:
        with _guard:
            depth = _held.get(self.path, 0) - 1
            if depth > 0:
                _held[self.path] = depth
                return
            _held.pop(self.path, None)
        self._stop.set()
        try:
            os.remove(self.path)
        except FileNotFoundError:
            pass

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def release_all() -> None:
    """Remove every lock file this process holds (a forced exit after Ctrl-C, which skips the ``with``)."""
    with _guard:
        paths = list(_held)
        _held.clear()
    for path in paths:
        try:
            os.remove(path)
        except FileNotFoundError:
            pass
