"""Nothing lost, nothing stale, nothing late: staged publishing, the run lock, content fingerprints, and user
errors found before any work starts (each one line, exit 2), through the CLI as a user types it.

The per-stage fault sequence (kill at several points, rerun, identical output) is in test_compare.py, next
to the uninterrupted run it is compared with.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from alol_ray.runlock import LOCK_FILE, RunBusy, RunLock
from alol_ray.stage import STAGE_FILE, is_done, publish, recover, run_stage, staging_dir, stage_fingerprint


def _alol(alol_cli, cwd, *args, env=None, timeout=300):
    full_env = {**os.environ, "RAY_ADDRESS": "local", **(env or {})}
    return subprocess.run([*alol_cli, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env)


def _one_line_error(proc, *needles, ray_ran: bool = False):
    """Exit 2 and the error as one line. Before Ray starts that line is all of stderr; once Ray ran, its own
    log lines may come first (Ray prints them), but the error is the last line and comes once."""
    assert proc.returncode == 2, (proc.stdout[-2000:], proc.stderr[-2000:])
    lines = proc.stderr.strip().splitlines()
    if ray_ran:
        assert sum(": error: " in line for line in lines) == 1 and ": error: " in lines[-1], proc.stderr[-3000:]
    else:
        assert "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr[-3000:]
    for needle in needles:
        assert needle in lines[-1], lines[-1]


# ------------------------------------------------------------------------------------------- stages


def test_a_failed_build_leaves_the_published_output_alone(tmp_path):
    folder = tmp_path / "out"

    def good(out):
        (Path(out) / "a.txt").write_text("v1")
        return {"n": 1}

    assert run_stage("s", str(folder), "fp1", good)
    assert (folder / "a.txt").read_text() == "v1" and stage_fingerprint(str(folder)) == "fp1"

    def bad(out):
        (Path(out) / "a.txt").write_text("half")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        run_stage("s", str(folder), "fp2", bad)
    assert (folder / "a.txt").read_text() == "v1" and stage_fingerprint(str(folder)) == "fp1"
    assert is_done(str(folder), "fp1") and not is_done(str(folder), "fp2")


def test_a_crash_between_the_renames_is_finished_by_recover(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "a.txt").write_text("old")
    staging = Path(staging_dir(str(folder), "fpnew"))
    staging.mkdir()
    (staging / "a.txt").write_text("new")
    # As publish leaves it when killed after the first rename: the old output aside, the new one complete.
    os.replace(folder, tmp_path / ".out.replaced")
    (staging / STAGE_FILE).write_text(json.dumps({"fingerprint": "fpnew", "manifest": {"a.txt": 3}}))
    recover(str(folder))
    assert (folder / "a.txt").read_text() == "new" and not (tmp_path / ".out.replaced").exists()
    # Killed before the new output was complete: the old one comes back.
    os.replace(folder, tmp_path / ".out.replaced")
    recover(str(folder))
    assert (folder / "a.txt").read_text() == "new"


def test_a_truncated_or_missing_file_is_never_taken_as_complete(tmp_path):
    folder = tmp_path / "out"
    staging = tmp_path / "staging"
    staging.mkdir()
    (staging / "table.parquet").write_bytes(b"x" * 100)
    publish(str(staging), str(folder), "fp")
    assert is_done(str(folder), "fp")
    with open(folder / "table.parquet", "r+b") as fh:
        fh.truncate(50)
    assert not is_done(str(folder), "fp")
    (folder / "table.parquet").unlink()
    assert not is_done(str(folder), "fp")


# ------------------------------------------------------------------------------------------- the lock


def test_the_lock_names_its_holder_and_a_dead_holder_is_taken_over(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        (tmp_path / LOCK_FILE).write_text(json.dumps({"host": socket.gethostname(), "pid": holder.pid,
                                                      "since": time.time(), "command": "alol train --algo a_lol"}))
        with pytest.raises(RunBusy, match=rf"in use by pid {holder.pid} on .*alol train --algo a_lol"):
            RunLock(str(tmp_path)).acquire()
    finally:
        holder.kill()
        holder.wait()
    with RunLock(str(tmp_path), "alol score"):  # the holder is gone: a stale lock is taken over
        held = json.loads((tmp_path / LOCK_FILE).read_text())
        assert held["pid"] == os.getpid() and held["command"] == "alol score"
        with RunLock(str(tmp_path)):  # re-entrant in one process
            pass
        assert (tmp_path / LOCK_FILE).exists()
    assert not (tmp_path / LOCK_FILE).exists()


def _as_in_a_terminal() -> None:
    """Child-side: SIGINT back to its default, as for a command started in a terminal. A process started in
    the background by a non-interactive shell (`cmd &`, as CI harnesses do) inherits SIGINT ignored, and
    Python then installs no KeyboardInterrupt handler: Ctrl-C could not be tested at all."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_a_second_command_on_a_busy_run_fails_at_once_and_ctrl_c_stops_everything(alol_cli, tmp_path):
    """Two `alol train` on one run: the second says who holds the run and exits 2 in seconds. Ctrl-C on the
    first exits 130 with a line saying what to rerun, releases the lock, and leaves no process behind (the
    local Ray and its workers included)."""
    args = ["train", "--algo", "nll", "data.builtin_train_prompts=200", "data.builtin_eval_prompts=20",
            "reference.train.steps=2000", "reference.train.eval_every=0"]
    env = {**os.environ, "RAY_ADDRESS": "local"}
    first = subprocess.Popen([*alol_cli, *args], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True, preexec_fn=_as_in_a_terminal)
    try:
        deadline = time.time() + 240
        lock = tmp_path / "runs" / "builtin" / LOCK_FILE
        while not (lock.exists() and (tmp_path / "runs" / "builtin" / "base").exists()) and time.time() < deadline:
            assert first.poll() is None, first.communicate()
            time.sleep(0.5)
        t0 = time.time()
        second = _alol(alol_cli, tmp_path, *args)
        _one_line_error(second, "is in use by pid", f"pid {first.pid}", "alol train --algo nll")
        assert time.time() - t0 < 60
        time.sleep(15)  # well into the reference training (Ray Train workers running)
        os.killpg(first.pid, signal.SIGINT)  # what Ctrl-C in the terminal does: the whole foreground group
        _, err = first.communicate(timeout=120)
        assert first.returncode == 130, err[-3000:]
        assert "interrupted" in err and "rerun `alol train --algo nll" in err
        assert not lock.exists()
        for _ in range(90):  # Ray's processes go with it (slower on a loaded machine)
            left = [pid for pid in _session_pids(first.pid)]
            if not left:
                break
            time.sleep(1)
        assert not left, [open(f"/proc/{p}/cmdline").read().replace("\0", " ")[:200] for p in left]
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)


def _session_pids(sid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="utf-8") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
                if int(fields[3]) == sid and fields[0] != "Z":  # session id; zombies hold nothing
                    pids.append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    return pids


# -------------------------------------------------------------------------------- content, early errors


def _jsonl(path: Path, n: int, offset: int = 0) -> None:
    rows = [{"prompt": f"question {i}?", "response": f"answer number {i}", "reward": float(i % 3), "split":
             "val" if i % 5 == 0 else "train"} for i in range(offset, offset + n)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def test_edited_data_is_read_again(alol_cli, tmp_path):
    """The rows stage fingerprints its source files by content: a file replaced in place is read again."""
    _jsonl(tmp_path / "rows.jsonl", 6)
    args = ["score", "--no-reference", "data.sources=[{path: rows.jsonl, format: rows}]"]
    assert _alol(alol_cli, tmp_path, *args).returncode == 0
    table = tmp_path / "runs" / "builtin" / "scored" / "table.parquet"
    assert len(pd.read_parquet(table)) == 6
    _jsonl(tmp_path / "rows.jsonl", 10, offset=100)
    done = _alol(alol_cli, tmp_path, *args)
    assert done.returncode == 0 and "[rows] running" in done.stdout
    assert sorted(pd.read_parquet(table)["prompt"]) == sorted(f"question {i}?" for i in range(100, 110))


def test_user_errors_are_found_before_any_work(alol_cli, tmp_path):
    """Each one line, exit 2, in seconds: before Ray starts or any stage runs."""
    _jsonl(tmp_path / "train_only.jsonl", 20)
    rows = [json.loads(line) for line in (tmp_path / "train_only.jsonl").read_text().splitlines()]
    (tmp_path / "train_only.jsonl").write_text("\n".join(json.dumps({**r, "split": "train"}) for r in rows) + "\n")
    (tmp_path / "huge.jsonl").write_text(json.dumps({"prompt": "p", "response": "r", "reward": 1e300}) + "\n")
    cases = [
        (["train", "--algo", "a_lol", "data.sources=[{path: train_only.jsonl, format: rows}]"],
         ["needs val prompts", "data.holdout_fraction"]),
        (["train", "--algo", "a_lol", "model.init=pretrained", "model.name_or_path=EleutherAI/pythia-1b"],
         ["model.name_or_path", "not in the local Hugging Face cache"]),
        (["score", "reward.rescore=true", "reward.components=[{name: x, kind: python, function: nosuch.mod:fn}]"],
         ["cannot import nosuch.mod"]),
        (["data", "validate", "huge.jsonl"], ["reward 1e+300 is beyond", "reward_out_of_range"]),
        (["train", "--algo", "a_lol", "--init", "runs/x/best"], ["--init: 'runs/x/best' is not a file or folder"]),
        (["compare", "compare.methods=[a_lol,dpoo]"], ["compare.methods", "did you mean 'dpo'"]),
    ]
    for args, needles in cases:
        t0 = time.time()
        proc = _alol(alol_cli, tmp_path, *args, env={"HF_HUB_OFFLINE": "1"})
        if args[0] == "data":
            assert proc.returncode == 2 and all(n in proc.stderr for n in needles), proc.stderr
        else:
            _one_line_error(proc, *needles)
        assert time.time() - t0 < 60, args
        assert not list((tmp_path / "runs").glob("*/train/*")), args  # nothing was trained


def test_a_user_error_raised_in_a_ray_actor_reaches_the_user_as_one_line(alol_cli, tmp_path):
    """A python reward function (imported from the working directory) that returns the wrong number of
    scores: the UserError is raised inside a Ray Data actor and reaches the user unwrapped."""
    (tmp_path / "myreward.py").write_text("def score(prompts, responses):\n    return [1.0]\n")
    proc = _alol(alol_cli, tmp_path, "score", "--no-reference", "data.builtin_train_prompts=20",
                 "data.builtin_eval_prompts=4", "reward.rescore=true",
                 "reward.components=[{name: mine, kind: python, function: myreward:score}]")
    _one_line_error(proc, "reward component 'mine'", "returned shape", "one number per row", ray_ran=True)


def test_ctrl_c_ends_a_command_that_swallows_the_interrupt(tmp_path):
    """The CLI's watchdog: a command whose main thread never lets KeyboardInterrupt through (as when it is
    blocked inside Ray's C++ code, or a Ray call swallows it) still exits 130 after the grace period, and its
    run lock is gone.

    The child swallows the interrupt with a SIGINT handler of its own, installed before it says "ready": a
    ``try/except KeyboardInterrupt`` around a loop leaves gaps (the loop's own condition, the except clause)
    where an interrupt that arrives on a loaded machine escapes, and the child dies of it instead."""
    lock = tmp_path / "run" / LOCK_FILE
    script = f"""
import signal, time
from alol_ray import cli
from alol_ray.runlock import RunLock
cli.INTERRUPT_GRACE_S = 1.0
disarm = cli._interrupt_watchdog("alol train")
RunLock({str(lock.parent)!r}, "alol train").acquire()
signal.signal(signal.SIGINT, lambda signum, frame: None)  # swallowed; the C handler still wakes the watchdog
print("ready", flush=True)
deadline = time.time() + 60
while time.time() < deadline:
    time.sleep(0.1)
print("not stopped", flush=True)
"""
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
                            preexec_fn=_as_in_a_terminal)
    assert proc.stdout.readline().strip() == "ready"
    assert lock.exists()
    t0 = time.time()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and "not stopped" not in out, (out, err)
    assert time.time() - t0 < 20 and "rerun `alol train`" in err
    assert not lock.exists()
