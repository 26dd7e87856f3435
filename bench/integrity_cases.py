"""The bad inputs and faults of the run-integrity issue, replayed through `alol` as a user types them.

Each case runs the literal commands (small sizes, `$B` below), from a temporary working directory, and
checks what must hold after the fix: the exit code, the error as one line naming the setting, file or row,
and that the earlier good output is still there. Prints one table row per case and, last, how many held.

    python bench/integrity_cases.py                 # ~6 min on 2 cores (two small trainings, one value fit)
    python bench/integrity_cases.py --only early    # the config/data errors only (seconds each)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

B = ["data.builtin_train_prompts=200", "data.builtin_eval_prompts=20", "reference.train.steps=5", "train.steps=5",
     "train.eval_every=5", "train.eval_prompts=8", "eval.max_prompts=8", "value.epochs=2",
     "generation.max_new_tokens=16"]


def alol(cwd: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "alol"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "alol_ray.cli"]
    env = {**os.environ, "RAY_ADDRESS": "local", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([*cmd, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def last_line(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.strip().splitlines()
    return lines[-1] if lines else ""


def one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> bool:
    """Exit 2, no traceback, and the last stderr line is the error naming every needle (`alol data validate`
    prints one line per bad row, then a count: the needles may be on any of its lines)."""
    text = proc.stderr if "validate" in proc.args else last_line(proc)
    return proc.returncode == 2 and "Traceback" not in proc.stderr and all(n in text for n in needles)


@dataclass
class Case:
    name: str
    run: Callable[[Path], tuple[bool, str]]  # (held, what was seen)
    group: str = "early"


def _early(args: list[str], *needles: str) -> Callable[[Path], tuple[bool, str]]:
    def run(cwd: Path) -> tuple[bool, str]:
        before = set((cwd / "runs").glob("*/train/*"))
        t0 = time.time()
        proc = alol(cwd, *args)
        trained = set((cwd / "runs").glob("*/train/*")) - before  # nothing new was trained
        held = one_line_error(proc, *needles) and not trained
        return held, f"exit {proc.returncode} in {time.time() - t0:.0f}s: {last_line(proc)[:150]}"
    return run


def failed_rerun_keeps_model(override: str) -> Callable[[Path], tuple[bool, str]]:
    """Case 1: a finished a_lol run, then a rerun with a bad setting: the model must survive."""
    def run(cwd: Path) -> tuple[bool, str]:
        run_dir = cwd / "runs" / "builtin" / "train" / "a_lol-s0"
        if not (run_dir / "best").exists():
            first = alol(cwd, "train", "--algo", "a_lol", *B)
            if first.returncode != 0:
                return False, f"first run failed: {last_line(first)[:150]}"
        before = sorted(p.name for p in run_dir.iterdir())
        proc = alol(cwd, "train", "--algo", "a_lol", *B, override)
        after = sorted(p.name for p in run_dir.iterdir())
        held = proc.returncode == 2 and after == before and (run_dir / "best" / "config.json").exists()
        return held, f"exit {proc.returncode}; run dir unchanged: {after == before}; {last_line(proc)[:120]}"
    return run


def failed_value_keeps_table(cwd: Path) -> tuple[bool, str]:
    """Case 2: a finished value stage, then a rerun with value.max_value=nan: the table stays whole."""
    first = alol(cwd, "value", *B)
    if first.returncode != 0:
        return False, f"first value run failed: {last_line(first)[:150]}"
    table = cwd / "runs" / "builtin" / "value" / "table.parquet"
    if not table.exists():
        table = cwd / "runs" / "builtin" / "scored" / "table.parquet"
    before = pd.read_parquet(table)
    proc = alol(cwd, "value", *B, "value.max_value=nan")
    after = pd.read_parquet(table)
    again = alol(cwd, "value", *B)
    held = (proc.returncode == 2 and after.equals(before) and bool(after["advantage"].notna().all())
            and again.returncode == 0 and "up to date" in again.stdout)
    return held, f"bad rerun exit {proc.returncode}; table unchanged: {after.equals(before)}; {last_line(proc)[:100]}"


def edited_data_is_read(cwd: Path) -> tuple[bool, str]:
    """Case 3: score a 6-row file, replace it with 10 other rows, score again."""
    def write(n: int, offset: int) -> None:
        rows = [{"prompt": f"question {i}?", "response": f"answer {i}", "reward": float(i % 3),
                 "split": "val" if i % 5 == 0 else "train"} for i in range(offset, offset + n)]
        (cwd / "rows.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    args = ["score", "--no-reference", "name=edited", "data.sources=[{path: rows.jsonl, format: rows}]"]
    write(6, 0)
    first = alol(cwd, *args)
    write(10, 100)
    second = alol(cwd, *args)
    rows = len(pd.read_parquet(cwd / "runs" / "edited" / "scored" / "table.parquet"))
    held = first.returncode == 0 and second.returncode == 0 and rows == 10
    return held, f"rows after the edit: {rows} (was 6)"


def two_commands_one_run(cwd: Path) -> tuple[bool, str]:
    """Case 4: two `alol train` on one run directory at once: the second refuses at once, naming the holder."""
    exe = Path(sys.executable).parent / "alol"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "alol_ray.cli"]
    args = ["train", "--algo", "a_lol", "name=busy", *B, "train.steps=400", "train.checkpoint_every=50"]
    env = {**os.environ, "RAY_ADDRESS": "local"}
    first = subprocess.Popen([*cmd, *args], cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)
    try:
        deadline = time.time() + 300
        while not (cwd / "runs" / "busy" / ".lock").exists() and time.time() < deadline and first.poll() is None:
            time.sleep(0.5)
        t0 = time.time()
        second = alol(cwd, *args)
        waited = time.time() - t0
        held = one_line_error(second, "in use by pid", str(first.pid))
        return held, f"second: exit {second.returncode} after {waited:.0f}s: {last_line(second)[:110]}"
    finally:
        first.kill()
        first.wait()


TRAIN_ONLY = "data.sources=[{path: train.jsonl, format: rows}]"
NO_MODULE = "reward.components=[{name: x, kind: python, function: nosuch.mod:fn}]"
CASES = [
    Case("1. failed rerun (train.alol.clip_eps=-1) keeps the finished model",
         failed_rerun_keeps_model("train.alol.clip_eps=-1"), "stages"),
    Case("1. failed rerun (train.lr=-1) keeps the finished model", failed_rerun_keeps_model("train.lr=-1"), "stages"),
    Case("2. failed value rerun (value.max_value=nan) keeps the table", failed_value_keeps_table, "stages"),
    Case("3. edited data is read again", edited_data_is_read, "stages"),
    Case("4. two commands on one run", two_commands_one_run, "stages"),
    Case("5. data without a val split", _early(["train", "--algo", "a_lol", TRAIN_ONLY], "needs val prompts")),
    Case("late: train.alol.clip_eps=-1", _early(["train", "--algo", "a_lol", "train.alol.clip_eps=-1"], "clip_eps")),
    Case("late: train.lr=-1", _early(["train", "--algo", "a_lol", "train.lr=-1"], "train.lr")),
    Case("late: train.lr=nan", _early(["train", "--algo", "a_lol", "train.lr=nan"], "train.lr")),
    Case("late: train.lr=inf", _early(["train", "--algo", "a_lol", "train.lr=inf"], "train.lr")),
    Case("late: train.dpo.beta=-1", _early(["train", "--algo", "dpo", "train.dpo.beta=-1"], "dpo.beta")),
    Case("late: model.max_prompt_tokens=-1", _early(["train", "--algo", "a_lol", "model.max_prompt_tokens=-1"],
                                                     "model.max_prompt_tokens")),
    Case("late: train.num_workers=0", _early(["train", "--algo", "a_lol", "train.num_workers=0"],
                                             "train.num_workers")),
    Case("late: data.sources=[]", _early(["train", "--algo", "a_lol", "data.sources=[]"], "data.sources")),
    Case("late: missing local model folder", _early(["train", "--algo", "a_lol", "model.init=pretrained",
                                                     "model.name_or_path=./no/such/model"], "model.name_or_path")),
    Case("late: hub model with no network", _early(["train", "--algo", "a_lol", "model.init=pretrained",
                                                    "model.name_or_path=EleutherAI/pythia-1b"],
                                                   "model.name_or_path")),
    Case("late: python reward, no such module", _early(["score", "reward.rescore=true", NO_MODULE], "nosuch.mod")),
    Case("late: reward near the float limit", _early(["data", "validate", "huge.jsonl"], "huge.jsonl",
                                                     "reward_out_of_range")),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=["early", "stages"], default=None)
    args = parser.parse_args()
    cwd = Path(tempfile.mkdtemp(prefix="alol-integrity-"))
    rows = [{"prompt": f"q {i}?", "response": f"a {i}", "reward": 1.0, "split": "train"} for i in range(20)]
    (cwd / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (cwd / "huge.jsonl").write_text(json.dumps({"prompt": "p", "response": "r", "reward": 1e300}) + "\n")
    results = []
    try:
        for case in CASES:
            if args.only and case.group != args.only:
                continue
            t0 = time.time()
            try:
                held, seen = case.run(cwd)
            except Exception as err:  # noqa: BLE001 - a crashing case is a case that did not hold
                held, seen = False, f"{type(err).__name__}: {err}"
            results.append(held)
            print(f"| {case.name} | {'holds' if held else 'FAILS'} | {seen} | {time.time() - t0:.0f}s |", flush=True)
    finally:
        shutil.rmtree(cwd, ignore_errors=True)
    print(f"{sum(results)}/{len(results)} cases hold")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
