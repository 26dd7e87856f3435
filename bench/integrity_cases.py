"""The bad inputs and faults of the run-integrity issue, replayed through `alol` as a user types them.

Each case runs the literal commands (small sizes, `$B` below), from a temporary working directory, and
checks what must hold after the fix: the exit code, the error as one line naming the setting, file or row,
and that the earlier good output is still there. Prints one table row per case and, last, how many held.

    python bench/integrity_cases.py                 # ~10 min on 2 cores (small trainings, one value fit)
    python bench/integrity_cases.py --only early    # the config/data errors only (seconds each)
    python bench/integrity_cases.py --only input    # the bad-input classes of issue 28 (a minute or two)

The ``input`` group replays issue 28's classes: every location the user names (data files, --out, storage on a
read-only or full disk, a bucket, the Ray address, the reward service's port), the data contract (nesting,
surrogates, keys twice, invisible text, NUL), what is checked before work, the messages, and the noise of
another Ray on the machine. Read-only and full disks are small tmpfs mounts in a mount namespace of the
command's own (``unshare``); a bucket is moto's S3 server. A case whose tool is missing here is reported as
such, not as holding.
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


def alol(cwd: Path, *args: str, timeout: int = 900, env: dict | None = None, wrap: tuple = ()) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "alol"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "alol_ray.cli"]
    env = {**os.environ, "RAY_ADDRESS": "local", "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run([*wrap, *cmd, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


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


# ------------------------------------------------------------------------------ issue 28: bad input by class

SMALL = ["data.builtin_train_prompts=40", "data.builtin_eval_prompts=8", "reference.train.steps=2",
         "model.tiny.n_layer=2", "model.tiny.n_embd=64", "model.tiny.n_head=2", "model.tiny.vocab_size=512",
         "reference.train.eval_every=0"]
MISSING: dict[str, str] = {}  # tool -> why a case that needs it cannot run here


def _unshare() -> list[str]:
    for prefix in (["unshare", "--mount", "--propagation", "private"],
                   ["unshare", "--user", "--map-root-user", "--mount", "--propagation", "private"]):
        try:
            if subprocess.run([*prefix, "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"],
                              capture_output=True).returncode == 0:
                return prefix
        except FileNotFoundError:
            break
    MISSING["unshare"] = "no mount namespace here (unshare)"
    return []


def tmpfs(folder: Path, options: str, after: str = "") -> tuple:
    """Run in a mount namespace of its own where ``folder`` is a fresh tmpfs (``after`` runs there at the end)."""
    prefix = _unshare()
    if not prefix:
        return ()
    folder.mkdir(parents=True, exist_ok=True)
    return (*prefix, "sh", "-c", f"mount -t tmpfs -o {options} tmpfs {folder} || exit 97; \"$@\"; rc=$?; {after} "
            "exit $rc", "sh")


def _input(args: list[str], *needles: str, env: dict | None = None, wrap=None, max_s: float = 120,
           lines_ok: bool = False) -> Callable[[Path], tuple[bool, str]]:
    """A bad-input case: exit 2 with the error as the last line naming every needle, no traceback, within
    ``max_s`` seconds, nothing trained. ``wrap(cwd)`` gives a command prefix (a mount namespace); ``lines_ok``:
    one line per bad record (data validate) instead of one line in all."""
    def run(cwd: Path) -> tuple[bool, str]:
        prefix = wrap(cwd) if wrap else ()
        if wrap and not prefix:
            return False, f"not run: {'; '.join(MISSING.values())}"
        trained_before = set((cwd / "runs").glob("*/train/*-s*/best"))  # what earlier cases trained stays
        t0 = time.time()
        proc = alol(cwd, *args, env=env, wrap=prefix, timeout=int(max_s) + 60)
        took = time.time() - t0
        lines = proc.stderr.strip().splitlines()
        text = proc.stderr if lines_ok else (lines[-1] if lines else "")
        held = (proc.returncode == 2 and "Traceback" not in proc.stderr and all(n in text for n in needles)
                and (lines_ok or sum(": error: " in line for line in lines) == 1) and took < max_s
                and not set((cwd / "runs").glob("*/train/*-s*/best")) - trained_before)
        return held, f"exit {proc.returncode} in {took:.0f}s: {(lines[-1] if lines else '')[:150]}"
    return run


def same_prompt_in_train_and_val(cwd: Path) -> tuple[bool, str]:
    """No ids: the prompt text is the id, and the documented val-overlap drop applies (it said 'give ids')."""
    proc = alol(cwd, "data", "validate", "train.jsonl", "val_overlap.jsonl@val", "--json")
    filtered = json.loads(proc.stdout).get("filtered") if proc.returncode == 0 else None
    return proc.returncode == 0 and filtered == {"val_overlap": 1}, f"exit {proc.returncode}; filtered {filtered}"


def unknown_algo_imports_nothing(cwd: Path) -> tuple[bool, str]:
    script = ("import sys, time; t = time.time(); from alol_ray.cli import main; rc = main(['train', '--algo', "
              "'dpoo']); print(rc, 'torch' in sys.modules, round(time.time() - t, 1))")
    proc = subprocess.run([sys.executable, "-c", script], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "RAY_ADDRESS": "local"})
    rc, torch_loaded, took = (proc.stdout.split() + ["?", "?", "?"])[:3]
    return rc == "2" and torch_loaded == "False", f"exit {rc}, torch imported: {torch_loaded}, {took}s"


def full_disk(cwd: Path) -> tuple[bool, str]:
    """storage on a 3 MB tmpfs: the rows fit, the base policy's weights do not (safetensors' own error)."""
    disk = cwd / "disk"
    prefix = tmpfs(disk, "size=3m", f"find {disk} -name '.*staging*';")
    if not prefix:
        return False, f"not run: {'; '.join(MISSING.values())}"
    proc = alol(cwd, "train", "--algo", "nll", "--reference", "storage=disk/runs", *SMALL[:3], wrap=prefix)
    last = (proc.stderr.strip().splitlines() or [""])[-1]
    held = (proc.returncode == 2 and "Traceback" not in proc.stderr and f"no space left on the device holding {disk}"
            in last and "staging" not in proc.stdout)
    return held, f"exit {proc.returncode}; staging left: {'staging' in proc.stdout}; {last[:120]}"


def bucket_case(bucket_uri: str, *needles: str, dead_endpoint: bool = False) -> Callable[[Path], tuple[bool, str]]:
    def run(cwd: Path) -> tuple[bool, str]:
        endpoint = S3.get("endpoint")
        if not endpoint:
            return False, f"not run: {MISSING.get('moto', 'no S3 server')}"
        env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
               "AWS_ENDPOINT_URL": "http://127.0.0.1:1" if dead_endpoint else endpoint}
        return _input(["score", "--no-reference", f"storage={bucket_uri}", *SMALL], *needles, env=env, max_s=60)(cwd)
    return run


S3: dict[str, str] = {}


def start_s3() -> subprocess.Popen | None:
    """moto's S3 server on a free port with one bucket `alol` (None when moto is not installed)."""
    try:
        import boto3  # noqa: F401
        import moto  # noqa: F401
    except ImportError:
        MISSING["moto"] = "moto is not installed (pip install -e '.[dev]')"
        return None
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while socket.socket().connect_ex(("127.0.0.1", port)) != 0 and time.time() < deadline:
        time.sleep(0.3)
    S3["endpoint"] = f"http://127.0.0.1:{port}"
    import boto3

    boto3.client("s3", endpoint_url=S3["endpoint"], region_name="us-east-1", aws_access_key_id="testing",
                 aws_secret_access_key="testing").create_bucket(Bucket="alol")
    return server


def busy_port_case(cwd: Path) -> tuple[bool, str]:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        return _input(["serve-rewards", f"serve.port={port}", *SMALL], f"cannot listen on 127.0.0.1:{port}")(cwd)


def unreadable(cwd: Path) -> tuple[bool, str]:
    (cwd / "secret.jsonl").write_text(json.dumps({"prompt": "q", "response": "r"}) + "\n")
    (cwd / "secret.jsonl").chmod(0)
    args = (["data", "validate", "secret.jsonl"], "secret.jsonl", "permission denied")
    if os.geteuid() != 0:
        return _input(*args, max_s=60)(cwd)
    if shutil.which("setpriv") is None:
        return False, "not run: root, and no setpriv to drop root's override of file permissions"
    without_override = ["setpriv", "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search", "--"]
    return _input(*args, wrap=lambda _: without_override, max_s=60)(cwd)


def quiet_beside_another_ray(cwd: Path) -> tuple[bool, str]:
    other = subprocess.Popen([sys.executable, "-c", "import ray, time; ray.init(address='local', num_cpus=1, "
                              "include_dashboard=False); print('up', flush=True); time.sleep(900)"],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        other.stdout.readline()
        proc = alol(cwd, "train", "--algo", "nll", "--reference", "name=quiet", *SMALL)
        noisy = "Found multiple active Ray instances" in proc.stderr or "Traceback" in proc.stderr
        return proc.returncode == 0 and not noisy, f"exit {proc.returncode}; Ray traceback on stderr: {noisy}"
    finally:
        os.killpg(other.pid, 9)
        other.wait()


def empty_reward_request(cwd: Path) -> tuple[bool, str]:
    """`alol serve-rewards`, then POST an empty prompt and a reply of zero-width spaces: HTTP 400, one line."""
    import socket
    import urllib.error
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    exe = Path(sys.executable).parent / "alol"
    server = subprocess.Popen([str(exe), "serve-rewards", f"serve.port={port}", "name=serve", *SMALL], cwd=cwd,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True,
                              env={**os.environ, "RAY_ADDRESS": "local", "HF_HUB_OFFLINE": "1"})
    try:
        for line in server.stdout:
            if line.startswith("serving rewards"):
                break
        answers = []
        for body in ({"prompt": "", "response": "hi"}, {"prompt": "hi", "response": "\u200b\u200b"}):
            request = urllib.request.Request(f"http://127.0.0.1:{port}/rewards", data=json.dumps(body).encode())
            try:
                with urllib.request.urlopen(request, timeout=60) as r:
                    answers.append((r.status, r.read().decode()))
            except urllib.error.HTTPError as err:
                answers.append((err.code, err.read().decode()))
        held = all(code == 400 and "\n" not in text.strip() and "empty" in text for code, text in answers)
        return held, "; ".join(f"HTTP {code} {text.strip()[:60]}" for code, text in answers)
    finally:
        os.killpg(server.pid, 2)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, 9)


BAD_LINES = {
    "deep.jsonl": '{"prompt": "q", "response": "r", "meta": ' + "[" * 5000 + "]" * 5000 + "}",
    "surrogate.jsonl": '{"prompt": "q", "response": "caf\\udce9"}',
    "twice.jsonl": '{"prompt": "q", "response": "good", "response": "evil"}',
    "zero_width.jsonl": json.dumps({"prompt": "q", "response": "\u200b\u200b"}),
    "bom_only.jsonl": json.dumps({"prompt": "\ufeff", "response": "r"}),
    "nul.jsonl": json.dumps({"prompt": "q", "response": "a\u0000b"}),
}
ISSUE28 = [
    Case("28/1. deeply nested JSON (jsonl)", _input(["data", "validate", "deep.jsonl"], "deep.jsonl:2: <json>",
                                                    "too_deep", lines_ok=True), "input"),
    Case("28/1. deeply nested JSON, --skip-invalid", (lambda cwd: (
        (p := alol(cwd, "data", "validate", "deep.jsonl", "--skip-invalid")).returncode == 0
        and "1 too_deep" in p.stdout, (p.stdout.strip().splitlines() or [""])[-1][:120])), "input"),
    Case("28/1. deeply nested JSON array through `alol score`",
         _input(["score", "--no-reference", "data.sources=[{path: deep_array.json, format: rows}]"],
                "deep_array.json:1: <json>: nested deeper", lines_ok=True), "input"),
    Case("28/1. lone surrogate in a data file", _input(["data", "validate", "surrogate.jsonl"], "surrogate.jsonl:2:",
                                                       "invalid_unicode", lines_ok=True), "input"),
    Case("28/1. lone surrogate in a --prompts file", _input(["eval", "--prompts", "surrogate.jsonl", *SMALL],
                                                            "surrogate.jsonl:2: response", "invalid_unicode",
                                                            lines_ok=True), "input"),
    Case("28/1. unreadable data file", unreadable, "input"),
    Case("28/1. --out is an existing file", _input(["data", "convert", "train.jsonl", "--out", "afile"],
                                                   "--out", "is a file, not a folder"), "input"),
    Case("28/1. --out under a file", _input(["data", "convert", "train.jsonl", "--out", "afile/x"], "--out",
                                            "afile is a file"), "input"),
    Case("28/1. --out on a read-only file system", _input(["data", "convert", "train.jsonl", "--out", "ro/x"], "--out",
                                                          "read-only", wrap=lambda cwd: tmpfs(cwd / "ro", "ro")),
         "input"),
    Case("28/1. storage on a read-only file system", _input(["score", "--no-reference", "storage=ro/runs", *SMALL],
                                                            "storage", "read-only",
                                                            wrap=lambda cwd: tmpfs(cwd / "ro", "ro")), "input"),
    Case("28/1. storage=s3:// bucket that does not exist", bucket_case("s3://nosuch/runs", "bucket 'nosuch' does not "
                                                                       "exist"), "input"),
    Case("28/1. storage=s3:// endpoint where nothing listens", bucket_case("s3://alol/runs", "nothing answers at "
                                                                           "AWS_ENDPOINT_URL", dead_endpoint=True),
         "input"),
    Case("28/1. full disk during `alol train`: one line, no staging left", full_disk, "input"),
    Case("28/1. RAY_ADDRESS where nothing listens, in seconds",
         _input(["score", "--no-reference", *SMALL], "RAY_ADDRESS=127.0.0.1:1", env={"RAY_ADDRESS": "127.0.0.1:1"},
                max_s=30), "input"),
    Case("28/1. reward service port in use", busy_port_case, "input"),
    Case("28/2. a key given twice", _input(["data", "validate", "twice.jsonl"], "twice.jsonl:2: response",
                                           "duplicate_key", lines_ok=True), "input"),
    Case("28/2. reply of zero-width spaces only", _input(["data", "validate", "zero_width.jsonl"],
                                                         "zero_width.jsonl:2: response", "empty_response",
                                                         lines_ok=True), "input"),
    Case("28/2. prompt of a BOM only", _input(["data", "validate", "bom_only.jsonl"], "bom_only.jsonl:2: prompt",
                                              "empty_prompt", lines_ok=True), "input"),
    Case("28/2. NUL in a reply", _input(["data", "validate", "nul.jsonl"], "nul.jsonl:2: response", "nul_character",
                                        lines_ok=True), "input"),
    Case("28/3. generation.engine=vllm without vLLM, before pi_ref",
         _input(["train", "--algo", "a_lol", "generation.engine=vllm", *SMALL], "vllm is not installed"), "input"),
    Case("28/3. dpo on one reply per prompt, before pi_ref",
         _input(["train", "--algo", "dpo", "data.sources=[{path: train.jsonl, format: rows}, {path: val.jsonl, "
                 "format: rows, split: val}]", *SMALL], "dpo trains on a preference pair"), "input"),
    Case("28/3. unknown --algo without importing torch", unknown_algo_imports_nothing, "input"),
    Case("28/4. reward service: empty prompt, zero-width reply", empty_reward_request, "input"),
    Case("28/m. same prompt in a train and a val source, no ids", same_prompt_in_train_and_val, "input"),
    Case("28/m. a JSON file holding one object", (lambda cwd: (
        (p := alol(cwd, "data", "validate", "wrapped.json")).returncode == 2 and p.stderr.count("wrapped.json:") == 1
        and "one JSON object" in p.stderr, p.stderr.strip().splitlines()[0][:140])), "input"),
    Case("28/m. --split foo", _input(["data", "validate", "train.jsonl", "--split", "foo"], "--split must be one of"),
         "input"),
    Case("28/m. a scalar YAML file", _input(["train", "--config", "scalar.yaml"], "top level must be a mapping"),
         "input"),
    Case("28/m. an s3:// --out is not mangled into a folder", (lambda cwd: (
        (p := alol(cwd, "eval", "--out", "s3://x/out")).returncode == 2 and "'s3://x/out' is a URI" in p.stderr
        and not (cwd / "s3:").exists(), (p.stderr.strip().splitlines() or [""])[-1][:140])), "input"),
    Case("28/m. overrides after a flag", _input(["train", "--algo", "a_lol", "--seed", "1", "train.lr=-1"],
                                                "train.lr"), "input"),
    Case("28/7. no Ray traceback with another Ray on the machine", quiet_beside_another_ray, "input"),
]


def write_issue28_files(cwd: Path) -> None:
    good = json.dumps({"prompt": "q 0?", "response": "a 0", "reward": 1.0})
    for name, line in BAD_LINES.items():
        (cwd / name).write_bytes(f"{good}\n{line}\n".encode("utf-8", "surrogatepass"))
    (cwd / "deep_array.json").write_text("[" + good + ", " + "[" * 5000 + "]" * 5000 + "]")
    (cwd / "wrapped.json").write_text(json.dumps({"data": [json.loads(good)] * 3}, indent=2))
    (cwd / "val.jsonl").write_text(json.dumps({"prompt": "v 0?", "response": "a", "reward": 1.0}) + "\n")
    (cwd / "val_overlap.jsonl").write_text(json.dumps({"prompt": "q 0?", "response": "other", "reward": 1.0}) + "\n")
    (cwd / "afile").write_text("x")
    (cwd / "scalar.yaml").write_text("42\n")


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
    *ISSUE28,
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=["early", "stages", "input"], default=None)
    args = parser.parse_args()
    cwd = Path(tempfile.mkdtemp(prefix="alol-integrity-"))
    rows = [{"prompt": f"q {i}?", "response": f"a {i}", "reward": 1.0, "split": "train"} for i in range(20)]
    (cwd / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (cwd / "huge.jsonl").write_text(json.dumps({"prompt": "p", "response": "r", "reward": 1e300}) + "\n")
    write_issue28_files(cwd)
    s3 = start_s3() if args.only in (None, "input") else None
    print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
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
        if s3 is not None:
            s3.terminate()
            s3.wait(timeout=30)
        shutil.rmtree(cwd, ignore_errors=True)
    print(f"{sum(results)}/{len(results)} cases hold")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
