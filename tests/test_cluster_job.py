"""`ray job submit` against a real local Ray cluster (`ray start --head`), with the shipped runtime_env.

The cluster is this module's own: its own ports and --temp-dir, so it does not meet the session's
in-process Ray (fixture ray_local). Token authentication stays on (Ray 2.60's default for `ray start`):
the head and the job client get the same random token through RAY_AUTH_MODE=token + RAY_AUTH_TOKEN,
so nothing is read from or written to ~/.ray. The cluster is stopped whatever happens, by the pids of
the processes it started (never `ray stop`, which would also stop other Ray instances on the machine).
"""

from __future__ import annotations

import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

# A cluster of its own (`ray start --head`) costs minutes on 2 cores: the e2e tier, which CI runs.
pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RAY = str(BIN / "ray")


def free_ports(n: int) -> list[int]:
    """n distinct ports that are free right now (bound together so none repeats)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _pids_under(marker: str) -> list[int]:
    """Processes whose command line names ``marker`` (the cluster's unique temp dir): ours alone."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                if marker.encode() in fh.read():
                    pids.append(int(entry))
        except OSError:
            continue
    return pids


class LocalCluster:
    """`ray start --head --block` bound to 127.0.0.1 (dashboard) with 2 CPUs, ports and temp dir of its own."""

    def __init__(self, num_cpus: int = 2):
        # A short temp dir: Ray's unix sockets live under it and socket paths are limited to ~107 bytes.
        self.temp_dir = tempfile.mkdtemp(prefix="alolray-", dir="/tmp")
        self.job_storage = os.path.join(self.temp_dir, "jobs")  # where jobs' relative outputs go
        (self.gcs_port, self.dashboard_port, agent_http, agent_grpc, runtime_env_port, metrics_port,
         client_port, node_manager_port, object_manager_port) = free_ports(9)
        self.token = secrets.token_hex(16)
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token,
                   OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", RAY_USAGE_STATS_ENABLED="0",
                   ALOL_JOB_STORAGE=self.job_storage)
        self.env = env
        self.log_path = os.path.join(self.temp_dir, "ray_start.log")
        cmd = [RAY, "start", "--head", "--block", f"--num-cpus={num_cpus}", "--node-ip-address=127.0.0.1",
               "--dashboard-host=127.0.0.1", f"--port={self.gcs_port}", f"--dashboard-port={self.dashboard_port}",
               f"--dashboard-agent-listen-port={agent_http}", f"--dashboard-agent-grpc-port={agent_grpc}",
               f"--runtime-env-agent-port={runtime_env_port}", f"--metrics-export-port={metrics_port}",
               f"--ray-client-server-port={client_port}", f"--node-manager-port={node_manager_port}",
               f"--object-manager-port={object_manager_port}", f"--temp-dir={self.temp_dir}", "--disable-usage-stats"]
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def client_env(self) -> dict:
        return {**self.env, "RAY_ADDRESS": self.dashboard_url}

    def wait_started(self, timeout: float = 150.0) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            text = Path(self.log_path).read_text()
            if "block forever" in text:
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited with {self.proc.returncode}:\n{text[-3000:]}")
            time.sleep(0.5)
        raise TimeoutError(f"ray start did not come up in {timeout}s:\n{Path(self.log_path).read_text()[-3000:]}")

    def job(self, *args: str, timeout: float = 300.0) -> subprocess.CompletedProcess:
        return subprocess.run([RAY, "job", *args], cwd=REPO, env=self.client_env(), capture_output=True,
                              text=True, timeout=timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # --block: ray start shuts its node down on SIGTERM
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for _ in range(20):  # what outlived it (workers, agents) named our temp dir on their command line
            pids = _pids_under(self.temp_dir)
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.5)
        self._log.close()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def local_cluster():
    # Three tries: on a loaded machine the raylet can miss Ray's fixed 30 s registration deadline ("Failed to
    # get node info ... timed out during startup"); a failed try's processes are killed before the next.
    for attempt in (1, 2, 3):
        cluster = LocalCluster(num_cpus=2)
        try:
            start = time.time()
            cluster.wait_started()
            print(f"ray start --head: {time.time() - start:.1f}s")
        except (RuntimeError, TimeoutError):
            cluster.stop()
            if attempt == 3:
                raise
            continue
        try:
            yield cluster
        finally:
            cluster.stop()
            assert not _pids_under(cluster.temp_dir), "cluster processes survived the teardown"
        return


def submit(cluster: LocalCluster, submission_id: str, entrypoint: list[str], attempts: int = 20):
    """`ray job submit` (blocking: tails the logs until the job ends), retried while the head's job agent
    is still registering ("No available agent to submit job")."""
    start = time.time()
    for _ in range(attempts):
        out = cluster.job("submit", "--submission-id", submission_id, "--runtime-env", "cluster/runtime_env.yaml",
                          "--", *entrypoint)
        if "No available agent" not in out.stdout + out.stderr:
            return out, time.time() - start
        time.sleep(2)
    raise TimeoutError(f"the job agent never became available:\n{out.stderr[-2000:]}")


TINY = ["data.builtin_train_prompts=24", "data.builtin_eval_prompts=4", "model.tiny.n_layer=1", "model.tiny.n_embd=32",
        "model.tiny.n_head=2", "model.tiny.vocab_size=300", "reference.train.steps=4", "train.steps=4",
        "train.eval_every=0", "generation.max_new_tokens=8", "scoring.reward_pool.num_cpus=0.5",
        "scoring.reference_pool.num_cpus=0.5"]


@pytest.mark.timeout(1200)
def test_pipeline_submitted_with_ray_job_submit(local_cluster, tmp_path):
    """cluster/runtime_env.yaml's header example, as written (relative settings: the default `storage: runs`,
    a relative --out), then a training stage and the reward service, as one submitted job. Relative outputs
    of a job go to ALOL_JOB_STORAGE (the job's working directory is deleted with it); the driver joins the
    cluster through the RAY_ADDRESS Ray sets for job drivers. The rows are rescored with a reward other than
    the one they carry, so a table that kept the data's rewards, or a pass that never ran, fails."""
    serve_port = free_ports(1)[0]
    rescore = ["reward.rescore=true", "reward.components.0.name=words", "reward.components.0.kind=length",
               "reward.components.0.params={min_words: 20, max_words: 30}"]
    # `ray job submit` shell-quotes its arguments, so the `&&` goes through sh -c; the last stage leaves the
    # reward service running on the cluster after the job ends.
    settings = " ".join(shlex.quote(x) for x in TINY + rescore)
    stages = (f"alol data convert builtin --out converted && "
              f"alol score --config configs/builtin.yaml {settings} && "
              f"alol train --config configs/builtin.yaml --algo nll {settings} && "
              f"alol serve-rewards --config configs/builtin.yaml --detach serve.port={serve_port} "
              "serve.num_cpus=0.25 serve.max_replicas=1")
    submission_id = f"alol-test-{secrets.token_hex(4)}"
    out, seconds = submit(local_cluster, submission_id, ["sh", "-c", stages])
    logs = out.stdout + out.stderr
    print(f"ray job submit wall time: {seconds:.1f}s")
    assert out.returncode == 0, logs[-4000:]
    status = local_cluster.job("status", submission_id)
    assert re.search(r"\bsucceeded\b", status.stdout, re.I), status.stdout + status.stderr
    assert "is relative and this is a Ray job" in logs  # the user is told where the run went

    # The driver joined this cluster (the GCS on our port), it did not start a Ray of its own.
    joined = [line for line in logs.splitlines() if "Connecting to existing Ray cluster at address" in line]
    assert joined and f":{local_cluster.gcs_port}" in joined[0], logs[-4000:]
    storage = Path(local_cluster.job_storage)

    # Stage 1: the converted rows, kept although the job's working directory is gone.
    converted = pd.read_parquet(storage / "converted" / "rows.parquet")
    assert len(converted) > 100 and {"prompt", "response", "reward"} <= set(converted.columns)

    # Stage 2: every row rescored by the actor pool with the length reward, not the data's own reward.
    from alol_ray import columns as C
    from alol_ray.scoring.scorers import BUILTIN_SCORERS

    run = storage / "runs" / "builtin"
    table = pd.read_parquet(run / "scored" / "table.parquet")
    rows = pd.read_parquet(run / "data" / "rows.parquet")
    assert len(table) == len(rows) > 50
    expected = BUILTIN_SCORERS["length"](table[C.PROMPT].tolist(), table[C.RESPONSE].tolist(), min_words=20,
                                         max_words=30)
    np.testing.assert_allclose(table[C.REWARD].to_numpy(), expected, rtol=0, atol=1e-12)
    assert not np.allclose(table[C.REWARD].to_numpy(), rows[C.REWARD].to_numpy())
    assert list((run / "cache" / "scores").glob("length-*/part-*.parquet"))  # the pass ran on the actor pool

    # Stage 3: the trained policy, an HF folder.
    assert (run / "train" / "nll-s0" / "best" / "config.json").exists()

    # Stage 4: the detached reward service (configs/builtin.yaml's reward: the built-in task's scorer) answers
    # on the head's loopback.
    import json
    import urllib.request

    prompt, response = table[C.PROMPT].iloc[0], table[C.RESPONSE].iloc[0]
    req = urllib.request.Request(f"http://127.0.0.1:{serve_port}/rewards", method="POST",
                                 data=json.dumps({"prompt": prompt, "response": response}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        answer = json.loads(r.read())
    builtin_reward = BUILTIN_SCORERS["builtin_task"]([prompt], [response])[0]
    assert answer[C.REWARD] == pytest.approx(builtin_reward, abs=1e-12)


def test_a_dashboard_address_in_the_shell_is_a_one_line_error(local_cluster, tmp_path):
    """With RAY_ADDRESS=http://... exported (cluster/README.md's step 6 for `ray job submit`), a stage run in
    that shell says what to set instead of crashing with a traceback."""
    proc = subprocess.run([str(BIN / "alol"), "score", "--no-reference", *TINY], cwd=tmp_path,
                          env=local_cluster.client_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert "dashboard" in proc.stderr and "ray job submit" in proc.stderr and "RAY_ADDRESS=auto" in proc.stderr
