"""Bad input and faults, by class, through the CLI as a user types them: every location the user names (files,
folders, --out, storage paths and buckets, the Ray address, the reward service's port), the data contract end to
end, what is checked before work, and the disk filling up. Each is one line and exit code 2 -- no traceback, no
hang, nothing accepted silently -- and nothing is trained first.

Read-only and full file systems are real: a small tmpfs mounted in a mount namespace of the command's own
(``unshare``; skipped where the machine allows none). An unreadable file is a file of mode 000 read by a process
without root's override of file permissions (``setpriv`` drops it).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from alol_ray.errors import ConfigError
from tests.test_bucket_storage import BUCKET, bucket_files, s3  # noqa: F401  (s3: the moto S3 server fixture)

REPO = Path(__file__).resolve().parents[1]
SMALL = ["data.builtin_train_prompts=40", "data.builtin_eval_prompts=8", "reference.train.steps=2"]


def alol(alol_cli, cwd, *args, env=None, timeout=180, wrap=()):
    full_env = {**os.environ, "RAY_ADDRESS": "local", "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run([*wrap, *alol_cli, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=full_env)


def one_line_error(proc, *needles):
    """Exit 2, no traceback, stderr one line holding every needle."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr[-3000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def write_lines(path: Path, *lines: str) -> Path:
    path.write_bytes("\n".join(lines).encode("utf-8", "surrogatepass") + b"\n")
    return path


def good(i: int, split: str = "train") -> str:
    return json.dumps({"prompt": f"question {i}?", "response": f"answer {i}", "reward": float(i % 3), "split": split})


# ------------------------------------------------------------------------------------- mount namespaces


def _unshare_prefix() -> list[str] | None:
    if shutil.which("unshare") is None:
        return None
    for prefix in (["unshare", "--mount", "--propagation", "private"],
                   ["unshare", "--user", "--map-root-user", "--mount", "--propagation", "private"]):
        probe = subprocess.run([*prefix, "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"], capture_output=True)
        if probe.returncode == 0:
            return prefix
    return None


UNSHARE = _unshare_prefix()
needs_mounts = pytest.mark.skipif(UNSHARE is None, reason="no mount namespace here (unshare): the read-only and "
                                                          "full-disk cases need a tmpfs of their own")


def with_tmpfs(folder: Path, options: str, after: str = "") -> list[str]:
    """A command prefix: run in a mount namespace of its own where ``folder`` is a fresh tmpfs (``options``, e.g.
    ``ro,size=1m``); ``after`` runs in the namespace once the command ended (its exit code is kept)."""
    folder.mkdir(parents=True, exist_ok=True)
    script = (f"mount -t tmpfs -o {options} tmpfs {shlex.quote(str(folder))} || exit 97; \"$@\"; rc=$?; "
              f"{after} exit $rc")
    return [*UNSHARE, "sh", "-c", script, "sh"]


def without_root_override() -> list[str]:
    """A command prefix under which file permissions apply (root drops CAP_DAC_OVERRIDE/READ_SEARCH)."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("root without setpriv: file permissions do not apply")
    return ["setpriv", "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search", "--"]


# ----------------------------------------------------------------------------------------- data files


def test_bad_records_are_one_line_each_in_every_reader(alol_cli, tmp_path):
    """Deep nesting (beyond Python's stack too), a lone surrogate, a key twice, text of only zero-width spaces or
    a BOM, NUL: one line per record naming file, line and field, strict or --skip-invalid, and through
    `alol score`."""
    write_lines(tmp_path / "bad.jsonl", good(1), good(2, "val"),
                '{"prompt": "q", "response": "good", "response": "evil"}',
                '{"prompt": "q", "response": "\\ud800"}',
                json.dumps({"prompt": "q", "response": "\u200b\u200b"}),
                json.dumps({"prompt": "\ufeff", "response": "r"}),
                json.dumps({"prompt": "q", "response": "a\x00b"}),
                '{"prompt": "q", "response": "r", "meta": ' + "[" * 5000 + "]" * 5000 + "}")
    strict = alol(alol_cli, tmp_path, "data", "validate", "bad.jsonl")
    assert strict.returncode == 2 and "Traceback" not in strict.stderr, strict.stderr[-3000:]
    for line, field, reason in ((3, "response", "duplicate_key"), (4, "response", "invalid_unicode"),
                                (5, "response", "empty_response"), (6, "prompt", "empty_prompt"),
                                (7, "response", "nul_character"), (8, "<json>", "too_deep")):
        assert f"bad.jsonl:{line}: {field}:" in strict.stderr and f"[{reason}]" in strict.stderr, (line, strict.stderr)
    assert "6 invalid row(s)" in strict.stderr
    kept = alol(alol_cli, tmp_path, "data", "validate", "bad.jsonl", "--skip-invalid", "--json")
    assert kept.returncode == 0, kept.stderr[-3000:]
    assert json.loads(kept.stdout)["rows"] == 2

    (tmp_path / "deep.json").write_text("[" + good(1) + ", " + "[" * 5000 + "]" * 5000 + "]")
    scored = alol(alol_cli, tmp_path, "score", "--no-reference", "data.sources=[{path: deep.json, format: rows}]")
    assert scored.returncode == 2 and "Traceback" not in scored.stderr, scored.stderr[-3000:]
    assert "deep.json:1: <json>: nested deeper than 64 levels [too_deep]" in scored.stderr


def test_a_prompts_file_with_a_lone_surrogate_is_one_line(alol_cli, tmp_path):
    write_lines(tmp_path / "prompts.jsonl", '{"prompt": "hello?"}', '{"prompt": "caf\\udce9"}')
    proc = alol(alol_cli, tmp_path, "eval", "--prompts", "prompts.jsonl", *SMALL)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "prompts.jsonl:2: prompt: lone surrogate U+DCE9" in proc.stderr
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").glob("*/train/*"))


def test_an_unreadable_data_file_is_one_line(alol_cli, tmp_path):
    write_lines(tmp_path / "secret.jsonl", good(1))
    (tmp_path / "secret.jsonl").chmod(0)
    wrap = without_root_override()
    proc = alol(alol_cli, tmp_path, "data", "validate", "secret.jsonl", wrap=wrap)
    one_line_error(proc, "secret.jsonl", "permission denied")
    proc = alol(alol_cli, tmp_path, "score", "--no-reference", "data.sources=[{path: secret.jsonl}]", wrap=wrap)
    one_line_error(proc, "data.sources.0.path", "cannot read", "permission denied")


def test_a_json_file_holding_one_object_is_one_line(alol_cli, tmp_path):
    (tmp_path / "wrapped.json").write_text(json.dumps({"data": [json.loads(good(i)) for i in range(5)]}, indent=2))
    proc = alol(alol_cli, tmp_path, "data", "validate", "wrapped.json")
    assert proc.returncode == 2 and proc.stderr.count("wrapped.json:") == 1, proc.stderr
    assert "one JSON object" in proc.stderr and "'data'" in proc.stderr


def test_the_same_prompt_in_a_train_and_a_val_source_is_the_val_overlap(alol_cli, tmp_path):
    """Without ids the prompt's text is its id: the documented val-overlap drop applies, as it does with ids."""
    write_lines(tmp_path / "train.jsonl", good(1), good(2))
    write_lines(tmp_path / "val.jsonl", json.dumps({"prompt": "question 1?", "response": "another answer"}))
    proc = alol(alol_cli, tmp_path, "data", "validate", "train.jsonl", "val.jsonl@val", "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout)
    assert summary["filtered"] == {"val_overlap": 1} and summary["splits"]["val"]["rows"] == 1
    two_train = alol(alol_cli, tmp_path, "data", "validate", "train.jsonl", "val.jsonl", "--json")
    one_line_error(two_train, "the prompt 'question 1?' occurs in sources ['train', 'val']")


# ----------------------------------------------------------------------------------- written locations


def test_out_that_is_a_file_under_a_file_or_a_uri_is_one_line(alol_cli, tmp_path):
    write_lines(tmp_path / "rows.jsonl", good(1))
    (tmp_path / "afile").write_text("x")
    one_line_error(alol(alol_cli, tmp_path, "data", "convert", "rows.jsonl", "--out", "afile"),
                   "--out", "afile is a file, not a folder")
    one_line_error(alol(alol_cli, tmp_path, "data", "convert", "rows.jsonl", "--out", "afile/sub"),
                   "--out", "afile is a file, not a folder")
    one_line_error(alol(alol_cli, tmp_path, "eval", "--out", "s3://bucket/out"), "--out", "'s3://bucket/out' is a URI")
    assert not (tmp_path / "s3:").exists()  # the URI was not taken as a local folder 's3:/bucket/out'


@needs_mounts
def test_out_and_storage_on_a_read_only_file_system_are_one_line(alol_cli, tmp_path):
    ro = tmp_path / "ro"
    write_lines(tmp_path / "rows.jsonl", good(1))
    proc = alol(alol_cli, tmp_path, "data", "convert", "rows.jsonl", "--out", "ro/out", wrap=with_tmpfs(ro, "ro"))
    one_line_error(proc, "--out", "the file system is read-only")
    proc = alol(alol_cli, tmp_path, "score", "--no-reference", "storage=ro/runs", *SMALL, wrap=with_tmpfs(ro, "ro"))
    one_line_error(proc, "storage", "the file system is read-only")


@needs_mounts
def test_a_full_disk_is_one_line_naming_it_and_leaves_no_staging_folder(alol_cli, tmp_path):
    """storage on a 3 MB tmpfs: the rows fit, the base policy's weights do not (safetensors' own error)."""
    disk = tmp_path / "disk"
    after = f"find {shlex.quote(str(disk))} -name '.*staging*';"
    proc = alol(alol_cli, tmp_path, "train", "--algo", "nll", "--reference", "storage=disk/runs", *SMALL,
                wrap=with_tmpfs(disk, "size=3m", after))
    assert proc.returncode == 2, proc.stderr[-3000:]
    error = proc.stderr.strip().splitlines()[-1]
    assert "Traceback" not in proc.stderr and proc.stderr.count(": error: ") == 1, proc.stderr[-3000:]
    assert f"no space left on the device holding {disk}" in error and "base policy" in error, error
    assert "staging" not in proc.stdout, proc.stdout[-2000:]  # `find` printed no leftover


# --------------------------------------------------------------------------------- endpoints and buckets


def test_a_ray_address_where_nothing_answers_fails_in_seconds(alol_cli, tmp_path):
    t0 = time.time()
    proc = alol(alol_cli, tmp_path, "score", "--no-reference", *SMALL, env={"RAY_ADDRESS": "127.0.0.1:1"}, timeout=90)
    one_line_error(proc, "RAY_ADDRESS=127.0.0.1:1", "nothing answers there")
    assert time.time() - t0 < 60 and not (tmp_path / "runs").exists()


def test_bucket_storage_is_checked_at_start(alol_cli, tmp_path, s3, monkeypatch):  # noqa: F811
    """A bucket that does not exist, an endpoint where nothing listens, a cloud that never answers: one line
    each, in seconds, before the run is touched."""
    from alol_ray.errors import StorageError
    from alol_ray.storage import check

    proc = alol(alol_cli, tmp_path, "score", "--no-reference", "storage=s3://nosuch/runs", *SMALL, env=s3)
    one_line_error(proc, "storage=s3://nosuch/runs", "the bucket 'nosuch' does not exist")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = sock.getsockname()[1]
    proc = alol(alol_cli, tmp_path, "score", "--no-reference", f"storage=s3://{BUCKET}/runs", *SMALL,
                env={**s3, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{dead}"})
    one_line_error(proc, f"storage=s3://{BUCKET}/runs", f"nothing answers at AWS_ENDPOINT_URL=127.0.0.1:{dead}")
    assert not (tmp_path / "runs").exists()
    for key, value in s3.items():
        monkeypatch.setenv(key, value)
    check(f"s3://{BUCKET}/checked", timeout=10)  # a bucket that answers passes, and keeps no probe file
    assert bucket_files(s3, "checked") == {}
    # A cloud bucket without credentials or network: Google's SDK waits for a metadata server; bounded.
    t0 = time.time()
    with pytest.raises(StorageError, match=r"storage=gs://alol-nosuch/runs: (no answer within 2 s|.*check the)"):
        check("gs://alol-nosuch/runs", timeout=2)
    assert time.time() - t0 < 10


def test_the_reward_service_port_in_use_is_one_line(alol_cli, tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = alol(alol_cli, tmp_path, "serve-rewards", f"serve.port={port}", *SMALL)
    one_line_error(proc, f"cannot listen on 127.0.0.1:{port}", "something else listens there")


# ------------------------------------------------------------------------------------ before any work


def test_what_can_be_checked_first_is_checked_first(alol_cli, tmp_path):
    """vLLM asked for but not installed, DPO on data with one reply per prompt: refused before pi_ref trains."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        proc = alol(alol_cli, tmp_path, "train", "--algo", "a_lol", "generation.engine=vllm", *SMALL)
        one_line_error(proc, "generation.engine=vllm but vllm is not installed")
    write_lines(tmp_path / "single.jsonl", *[good(i) for i in range(6)], good(7, "val"))
    proc = alol(alol_cli, tmp_path, "train", "--algo", "dpo", "data.sources=[{path: single.jsonl, format: rows}]")
    one_line_error(proc, "dpo trains on a preference pair per prompt", "no train prompt")
    assert not list((tmp_path / "runs").glob("*/train/*"))


def test_a_method_name_is_checked_without_importing_torch(tmp_path):
    script = ("import sys; from alol_ray.cli import main; rc = main(['train', '--algo', 'dpoo']); "
              "print(rc, 'torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "RAY_ADDRESS": "local", "PYTHONPATH": str(REPO)})
    assert proc.stdout.split() == ["2", "False"], (proc.stdout, proc.stderr[-2000:])
    assert "did you mean 'dpo'" in proc.stderr


def test_the_method_names_known_without_torch_are_the_registered_methods():
    from alol_ray.registry import BUILTIN, load_builtin_methods

    assert sorted(load_builtin_methods()) == sorted(BUILTIN)


# ------------------------------------------------------------------------------------------ messages


def test_messages_name_what_the_user_gave(alol_cli, tmp_path):
    write_lines(tmp_path / "rows.jsonl", good(1))
    one_line_error(alol(alol_cli, tmp_path, "data", "validate", "rows.jsonl", "--split", "foo"),
                   "--split must be one of train, val, test, got 'foo'")
    (tmp_path / "scalar.yaml").write_text("42\n")
    one_line_error(alol(alol_cli, tmp_path, "train", "--config", "scalar.yaml"),
                   "scalar.yaml: the top level must be a mapping", "got a int")
    # Overrides after a flag's value are overrides, not an argparse error: train.lr=-1 is read (and refused).
    one_line_error(alol(alol_cli, tmp_path, "train", "--algo", "a_lol", "--seed", "1", "train.lr=-1"), "train.lr")


# ----------------------------------------------------------------------- faults mid-run (e2e: minutes each)

TRAIN_SMALL = [*SMALL, "model.tiny.n_layer=2", "model.tiny.n_embd=64", "model.tiny.n_head=2",
               "model.tiny.vocab_size=512", "reference.train.eval_every=0"]


def _wait_for(predicate, timeout: float, what: str, proc=None) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the command ended (exit {proc.returncode}) before {what}")
        assert time.time() < deadline, f"no {what} within {timeout:.0f} s"
        time.sleep(0.5)


_NICENESS_PROBE = """
import os, ray
from alol_ray.ray_utils import init_ray
seen = []
for niceness, watcher in ((None, None), ("5", "1")):
    if niceness is not None:
        os.environ["RAY_worker_niceness"] = niceness
        os.environ["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] = watcher
    init_ray(num_cpus=1)
    seen += ray.get(ray.remote(lambda: [os.nice(0), os.environ.get("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER")]).remote())
    ray.shutdown()
print(os.nice(0), *seen)
"""


def test_local_ray_workers_run_at_the_drivers_priority_unless_the_user_says_otherwise(tmp_path):
    """Ray starts workers at niceness 15: under one busy loop per core (a shared CI machine) a Train worker got a
    few percent of a core and the suite crawled. alol's local Ray runs them at the driver's priority, and its
    workers (the Train controller among them) see RAY_TRAIN_ENABLE_PREEMPTION_WATCHER=0: no preemption-watcher
    process on a machine that is never drained. What the user set is kept."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_worker_niceness", "RAY_ADDRESS", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER")}
    proc = subprocess.run([sys.executable, "-c", _NICENESS_PROBE], cwd=tmp_path, capture_output=True, text=True,
                          env={**env, "PYTHONPATH": str(REPO)}, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    driver, default, default_watcher, user, user_watcher = proc.stdout.split()[-5:]
    assert (int(default), int(user)) == (int(driver), int(driver) + 5)
    assert (default_watcher, user_watcher) == ("0", "1")


@pytest.mark.e2e
def test_train_output_is_quiet_with_another_ray_on_the_machine(alol_cli, tmp_path):
    """A second local Ray on the same machine: Ray Train's placement-group cleaner would find two GCS processes
    and print `ConnectionError: Found multiple active Ray instances` with its traceback on every Train run."""
    other = subprocess.Popen([sys.executable, "-c", "import ray, time; ray.init(address='local', num_cpus=1, "
                              "include_dashboard=False); print('up', flush=True); time.sleep(900)"],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        assert other.stdout.readline().strip() == "up"
        proc = alol(alol_cli, tmp_path, "train", "--algo", "nll", "--reference", *TRAIN_SMALL, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "Found multiple active Ray instances" not in proc.stderr and "Traceback" not in proc.stderr, \
            proc.stderr[-3000:]
    finally:
        os.killpg(other.pid, 9)
        other.wait()


@pytest.mark.e2e
def test_a_killed_drivers_ray_is_ended_at_the_next_start(alol_cli, tmp_path, monkeypatch):
    """SIGKILL of the driver leaves its Ray's agents, workers and actors running for a while; the next start ends
    them (only sessions alol recorded: here a folder of the test's own)."""
    from alol_ray import ray_compat

    sessions = tmp_path / "sessions"
    monkeypatch.setenv(ray_compat.SESSIONS_ENV, str(sessions))
    args = ["train", "--algo", "nll", "--reference", *TRAIN_SMALL, "reference.train.steps=3000"]
    driver = subprocess.Popen([*alol_cli, *args], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True, env={**os.environ, "RAY_ADDRESS": "local"}, start_new_session=True)
    try:
        _wait_for(lambda: list(sessions.glob("*.json")), 300, "local Ray", driver)
        record = json.loads(next(sessions.glob("*.json")).read_text())
        _wait_for(lambda: (tmp_path / "runs" / "builtin" / "train").exists(), 300, "training", driver)
        time.sleep(5)
        left = ray_compat.session_processes(record["session"])
        assert len(left) > 3, left
        os.kill(driver.pid, 9)
        driver.wait()
        time.sleep(2)
        assert ray_compat.session_processes(record["session"])  # Ray's processes outlive their driver ...
        t0 = time.time()
        assert ray_compat.reap_orphaned_sessions() > 0  # ... until the next start ends them
        assert ray_compat.session_processes(record["session"]) == [] and time.time() - t0 < 15
        assert not list(sessions.glob("*.json"))
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, 9)


@pytest.fixture
def stoppable_s3(tmp_path):
    """moto's S3 server of the test's own (it is paused with SIGSTOP to make a bucket stop answering)."""
    pytest.importorskip("moto", reason="needs moto's server: pip install -e '.[dev]'")
    from tests.test_bucket_storage import _free_port, aws_env

    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = aws_env(f"http://127.0.0.1:{port}")
    try:
        _wait_for(lambda: socket.socket().connect_ex(("127.0.0.1", port)) == 0, 60, "S3 server")
        import boto3

        boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1", aws_access_key_id="testing",
                     aws_secret_access_key="testing").create_bucket(Bucket=BUCKET)
        yield env, server
    finally:
        server.send_signal(18)  # SIGCONT, in case the test stopped it
        server.terminate()
        server.wait(timeout=30)


def test_the_bucket_watch_tells_once_when_the_bucket_has_been_silent_past_its_deadline(stoppable_s3, monkeypatch):
    """What ends a bucket run whose bucket stops answering (an upload in a Train worker waits on such a bucket
    with no deadline of its own): nothing is told while the bucket answers, one call once it has been silent
    for ``silence`` seconds, none from a watch that was stopped."""
    from alol_ray import storage

    env, server = stoppable_s3
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    told, stopped_told = [], []
    stop = storage.watch(f"s3://{BUCKET}/watched", told.append, silence=3, every_s=0.5)
    stop_early = storage.watch(f"s3://{BUCKET}/watched", stopped_told.append, silence=3, every_s=0.5)
    try:
        time.sleep(5)  # past the deadline, with the bucket answering
        assert told == [] and stopped_told == []
        stop_early()
        server.send_signal(19)  # SIGSTOP: connections are accepted and never answered
        silent_since = time.monotonic()
        _wait_for(lambda: told, 60, "the watch to tell the silence")
        waited = time.monotonic() - silent_since
        time.sleep(2)
    finally:
        stop()
        server.send_signal(18)
    assert len(told) == 1 and told[0].startswith(f"s3://{BUCKET}/watched has not answered for 3 s"), told
    assert 3 <= waited < 30, waited
    assert stopped_told == []
    monkeypatch.setenv(storage.SILENCE_ENV, "soon")
    with pytest.raises(ConfigError, match=f"{storage.SILENCE_ENV}='soon': expected a number of seconds"):
        storage.watch(f"s3://{BUCKET}/watched", told.append)


@pytest.mark.e2e
def test_a_bucket_that_stops_answering_mid_training_is_one_line_and_the_rerun_resumes(alol_cli, tmp_path,
                                                                                       stoppable_s3):
    env, server = stoppable_s3
    # A silent bucket ends the run after ALOL_BUCKET_SILENCE_S (120 s by default), whatever waits on it.
    env = {**env, "ALOL_LOCAL_STORAGE": str(tmp_path / "cache"), "ALOL_BUCKET_SILENCE_S": "30"}
    args = ["train", "--algo", "nll", "--reference", f"storage=s3://{BUCKET}/mid", *TRAIN_SMALL,
            "reference.train.steps=400", "reference.train.checkpoint_every=5"]
    first = subprocess.Popen([*alol_cli, *args], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env={**os.environ, "RAY_ADDRESS": "local", **env}, start_new_session=True)
    try:
        # Two checkpoints in the bucket: the first is then registered (the second is being written, or done).
        _wait_for(lambda: len({m.group(0) for m in (re.search(r"checkpoint-\d+/", key) for key in
                                                      bucket_files(env, "mid")) if m}) >= 2, 400, "checkpoint", first)
        server.send_signal(19)  # SIGSTOP: the bucket stops answering (connections hang)
        out, err = first.communicate(timeout=300)
    finally:
        server.send_signal(18)
        if first.poll() is None:
            os.killpg(first.pid, 9)
    lines = err.strip().splitlines()
    assert first.returncode == 2, err[-4000:]
    assert sum(": error: " in line for line in lines) == 1 and ": error: " in lines[-1], err[-4000:]
    assert "storage" in lines[-1] and "rerun" in lines[-1], lines[-1]
    again = alol(alol_cli, tmp_path, *args, env=env, timeout=900)
    assert again.returncode == 0, again.stderr[-4000:]
    seen = [line for line in (again.stdout + again.stderr).splitlines() if "resum" in line or "step 5/" in line
            or "running" in line]
    assert any("resuming from the checkpoint" in line for line in seen), (lines[-1], seen)
