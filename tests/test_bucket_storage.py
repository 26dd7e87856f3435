"""Bucket storage (``storage=s3://...``) against a real S3-compatible server: moto's standalone server on
127.0.0.1, a random port, started per module and stopped after it.

- A stage pushed to the bucket sends its ``stage.json`` after every other file, and a stage whose push
  was cut short (the driver killed mid-push) is never taken as complete by the next machine.
- The built-in pipeline on a simulated two-node cluster (``ray.cluster_utils``) in which nothing but the
  bucket is shared: each node has its own cache folder (``ALOL_LOCAL_STORAGE``), and every driver command
  runs in a mount namespace of its own whose cache folder is a private tmpfs, empty at each start (a new
  machine each time) and invisible to the nodes. A Train worker dies in pi_ref's training and the group
  resumes from the checkpoint in the bucket; the driver is killed (SIGKILL) in the middle of A-LoL's
  training, and a second command on a "new machine" finds every finished stage in the bucket and resumes
  A-LoL from the bucket's checkpoint. With a driver-local mirror as Ray Train's storage (or a worker reading
  a path that only the driver has), the first command already fails.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BUCKET = "alol"
# The two-node run (a cluster of its own) is in the e2e tier, which CI runs; the push-order test is cheap.


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def aws_env(endpoint: str) -> dict[str, str]:
    """The variables pyarrow, boto3 and Ray read for an S3-compatible store."""
    return {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": endpoint}


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto's S3 server on 127.0.0.1 (random port) with one empty bucket; yields the AWS_* variables."""
    pytest.importorskip("moto", reason="the bucket tests need moto's server: pip install -e '.[dev]'")
    port = _free_port()
    log = tmp_path_factory.mktemp("moto") / "server.log"
    with open(log, "w") as out:
        server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                  stdout=out, stderr=subprocess.STDOUT)
    env = aws_env(f"http://127.0.0.1:{port}")
    try:
        deadline = time.time() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert server.poll() is None and time.time() < deadline, log.read_text()
                time.sleep(0.2)
        import boto3

        boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                     aws_access_key_id="testing", aws_secret_access_key="testing").create_bucket(Bucket=BUCKET)
        yield env
    finally:
        server.terminate()
        server.wait(timeout=30)


def bucket_files(env: dict, prefix: str) -> dict[str, int]:
    """relative path -> size of every object under s3://BUCKET/prefix."""
    import pyarrow.fs as pafs

    fs = pafs.S3FileSystem(endpoint_override=env["AWS_ENDPOINT_URL"], access_key="testing", secret_key="testing",
                           region="us-east-1")
    root = f"{BUCKET}/{prefix.strip('/')}"
    if fs.get_file_info(root).type == pafs.FileType.NotFound:
        return {}
    return {i.path[len(root) + 1:]: i.size for i in fs.get_file_info(pafs.FileSelector(root, recursive=True))
            if i.type == pafs.FileType.File}


def read_object_bytes(env: dict, key: str) -> bytes:
    import pyarrow.fs as pafs

    fs = pafs.S3FileSystem(endpoint_override=env["AWS_ENDPOINT_URL"], access_key="testing", secret_key="testing",
                           region="us-east-1")
    with fs.open_input_stream(f"{BUCKET}/{key}") as fh:
        return fh.read()


def read_object(env: dict, key: str) -> str:
    return read_object_bytes(env, key).decode("utf-8")


# ---------------------------------------------------------------------------------------- push order

PUSH_SCRIPT = """
import os, sys
from alol_ray import stage, storage
from alol_ray.config import load_config

cfg = load_config(None, ["storage=s3://{bucket}/unit", "name=r"])
with storage.synced(cfg, cache_dir=sys.argv[1]) as local:
    folder = os.path.join(local.storage, "r", "out")

    def build(staging):
        for name, size in (("best/model.bin", 300_000), ("summary.json", 10), ("val.jsonl", 20)):
            os.makedirs(os.path.dirname(os.path.join(staging, name)), exist_ok=True)
            with open(os.path.join(staging, name), "wb") as fh:
                fh.write(os.urandom(size))
        return {{}}

    print("published" if stage.run_stage("out", folder, "fp1", build) else "up to date", flush=True)
"""


def _push(tmp_path, env, cache: str, faults: str = "") -> subprocess.CompletedProcess:
    run_env = {**os.environ, **env, "PYTHONPATH": str(REPO), "ALOL_FAULTS": faults}
    run_env.pop("ALOL_FAULTS_DIR", None)
    return subprocess.run([sys.executable, "-c", PUSH_SCRIPT.format(bucket=BUCKET), str(tmp_path / cache)],
                          env=run_env, capture_output=True, text=True, timeout=120, check=False)


def test_a_stage_reaches_the_bucket_marker_last_and_a_cut_push_is_not_done(s3, tmp_path):
    # The driver dies as it is about to push stage.json: every other file of the folder is already there
    # (summary.json and val.jsonl sort after stage.json, so a plain sorted push would not have sent them).
    cut = _push(tmp_path, s3, "machine1", faults="push=stage.json")
    assert cut.returncode == 1, cut.stderr
    assert sorted(bucket_files(s3, "unit/r/out")) == ["best/model.bin", "summary.json", "val.jsonl"]
    # Killed earlier, mid-folder: the next machine pulls a folder without a marker and builds it again.
    shutil.rmtree(tmp_path / "machine1")
    again = _push(tmp_path, s3, "machine2")
    assert again.returncode == 0 and again.stdout.strip() == "published", again.stderr
    files = bucket_files(s3, "unit/r/out")
    assert sorted(files) == ["best/model.bin", "stage.json", "summary.json", "val.jsonl"]
    # A third machine finds it complete in the bucket.
    done = _push(tmp_path, s3, "machine3")
    assert done.returncode == 0 and done.stdout.strip() == "up to date", done.stderr


def test_a_finished_scoring_part_is_in_the_bucket_before_the_next_is_scored(s3, tmp_path, monkeypatch):
    """A driver that dies mid-pass loses at most the part in flight: each part goes up as it is written."""
    import pandas as pd

    from alol_ray import storage
    from alol_ray.config import load_config
    from alol_ray.scoring.table import ScoreCache

    for key, value in s3.items():
        monkeypatch.setenv(key, value)
    cfg = load_config(None, [f"storage=s3://{BUCKET}/parts", "name=r"])
    with storage.synced(cfg, cache_dir=str(tmp_path / "cache")) as local:
        cache = ScoreCache(os.path.join(local.storage, "r", "cache", "scores"))
        cache.describe("k", {"scorer": "x"})
        part = cache.write_part("k", pd.DataFrame({"row_key": ["a", "b"], "score": [0.5, 1.0]}))
        in_bucket = bucket_files(s3, "parts/r/cache/scores/k")  # before the command ends (and pushes all)
    assert sorted(in_bucket) == sorted([os.path.basename(part), "scorer.json"])
    assert in_bucket[os.path.basename(part)] == os.path.getsize(part)


# ------------------------------------------------------------------------------ two nodes, one bucket

SIZES = [
    "data.builtin_train_prompts=120", "data.builtin_eval_prompts=12",
    "model.tiny.n_layer=2", "model.tiny.n_embd=64", "model.tiny.n_head=2", "model.tiny.vocab_size=512",
    "reference.train.steps=8", "reference.train.checkpoint_every=3", "reference.train.eval_every=0",
    "train.steps=24", "train.checkpoint_every=3", "train.eval_every=0", "train.scale_steps_by_positive=false",
    "eval.max_prompts=8", "eval.bootstrap_samples=100", "generation.max_new_tokens=8",
    "compare.methods=[a_lol]", "compare.seeds=1",
    # one Train worker per 1-CPU node: checkpoints and logs from two machines
    "train.num_workers=2", "train.cpus_per_worker=1", "reference.train.num_workers=2",
    "reference.train.cpus_per_worker=1", "train.max_failures=1", "reference.train.max_failures=1",
    "scoring.reference_pool.max_actors=2",
]


def _outcome(returncode: int, log: str) -> dict:
    """A command's exit code, its stage and resume lines, and the end of its output (for failures)."""
    keep = ("up to date", "running ...", "resuming from the checkpoint")
    return {"returncode": returncode, "lines": [line for line in log.splitlines() if any(k in line for k in keep)],
            "tail": log[-8000:]}


def run_two_node_bucket_checks(out_path: str, work: str) -> None:
    """The subprocess: a 2-node cluster whose nodes share only the bucket; the driver commands below."""
    import ray
    from ray.cluster_utils import Cluster

    work_dir = Path(work)
    faults_file = work_dir / "faults"
    faults_file.write_text("train.step=4")  # the first Train job to reach step 4: pi_ref's
    node_env = lambda i: {"ALOL_LOCAL_STORAGE": str(work_dir / f"node{i}-cache"), "ALOL_FAULTS": f"@{faults_file}",  # noqa: E731
                          "ALOL_FAULTS_DIR": str(work_dir / "fired"), "OMP_NUM_THREADS": "1"}
    ports = [_free_port() for _ in range(4)]
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "include_dashboard": False, "dashboard_agent_listen_port": ports[0],
        "metrics_export_port": ports[1], "env_vars": node_env(0)})
    cluster.add_node(num_cpus=1, dashboard_agent_listen_port=ports[2], metrics_export_port=ports[3],
                     env_vars=node_env(1))
    cluster.wait_for_nodes()
    findings: dict = {"commands": []}
    driver_cache = work_dir / "driver-cache"
    driver_cache.mkdir()
    argv = [sys.executable, "-m", "alol_ray.cli", "demo", f"storage=s3://{BUCKET}/runs", "name=nodes", *SIZES]
    # A new machine each time: the driver's cache is a tmpfs that only its own mount namespace sees.
    wrapped = ["unshare", "-m", "--propagation", "private", "sh", "-c",
               f'mount -t tmpfs tmpfs "{driver_cache}" && exec "$@"', "driver", *argv]
    env = {**os.environ, "RAY_ADDRESS": cluster.address, "ALOL_LOCAL_STORAGE": str(driver_cache),
           "ALOL_FAULTS": ""}
    try:
        # 1. pi_ref loses a worker at step 4 and resumes; the driver is killed while A-LoL trains, once its
        #    first checkpoint is in the bucket (with the logs that rank 0 pushed next to it).
        log1 = open(work_dir / "first.log", "w")
        first = subprocess.Popen(wrapped, env=env, stdout=log1, stderr=subprocess.STDOUT, start_new_session=True)
        killed_at = None
        deadline = time.time() + 600
        while first.poll() is None and time.time() < deadline:
            files = bucket_files(env, "runs/nodes/train")
            staged = [f for f in files if f.startswith(".a_lol-s0.staging-") and f.endswith("/metrics.jsonl")]
            # Ray registers a checkpoint (its snapshot file) once it is uploaded: a rerun restores from it.
            snapshot = any(f.startswith(".a_lol-s0") and f.endswith("/checkpoint_manager_snapshot.json") for f in files)
            if staged and snapshot:
                killed_at = sorted(f for f in files if "/checkpoints/checkpoint-" in f and f.startswith(".a_lol-s0"))
                first_checkpoint = min(f.split("/checkpoints/")[1].split("/")[0] for f in killed_at)
                findings["checkpoint_bytes"] = sum(size for f, size in files.items()
                                                   if f"/checkpoints/{first_checkpoint}/" in f)
                os.killpg(first.pid, signal.SIGKILL)
                break
            time.sleep(0.5)
        first.wait(timeout=60)
        log1.close()
        findings["commands"].append(_outcome(first.returncode, (work_dir / "first.log").read_text()))
        findings["killed_with_checkpoints"] = killed_at
        findings["fired"] = sorted(os.listdir(work_dir / "fired")) if (work_dir / "fired").exists() else []
        findings["bucket_after_kill"] = sorted(bucket_files(env, "runs/nodes"))
        faults_file.write_text("")
        # 2. The same command on a new machine: the finished stages come from the bucket, A-LoL resumes.
        second = subprocess.run(wrapped, env=env, capture_output=True, text=True, timeout=900, check=False)
        findings["commands"].append(_outcome(second.returncode, second.stdout + second.stderr))
        findings["bucket"] = bucket_files(env, "runs/nodes")
        metrics = "train/a_lol-s0/metrics.jsonl"
        findings["a_lol_steps"] = [json.loads(line)["train/step"] for line in read_object(
            env, f"runs/nodes/{metrics}").splitlines() if line.strip()] if metrics in findings["bucket"] else None
        ray.init(address=cluster.address)
        findings["nodes"] = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])
        ray.shutdown()
    finally:
        cluster.shutdown()
    findings["node_caches"] = {i: sorted(str(p.relative_to(work_dir / f"node{i}-cache"))
                                         for p in (work_dir / f"node{i}-cache").rglob("*") if p.is_file())
                               for i in (0, 1) if (work_dir / f"node{i}-cache").exists()}
    findings["driver_cache_on_host"] = sorted(os.listdir(driver_cache))
    with open(out_path, "w", encoding="utf-8") as fh:
        json.dump(findings, fh, indent=2)


@pytest.mark.e2e
@pytest.mark.timeout(1500)
def test_two_nodes_share_only_the_bucket_a_worker_and_the_driver_die_and_the_run_resumes(s3, tmp_path):
    if shutil.which("unshare") is None or subprocess.run(
            ["unshare", "-m", "true"], capture_output=True, check=False).returncode != 0:
        pytest.fail("this test needs `unshare -m` (util-linux, run as root) to give the driver a disk of its own",
                    pytrace=False)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "ALOL_FAULTS", "ALOL_FAULTS_DIR")}
    env.update(s3, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
               RAY_USAGE_STATS_ENABLED="0")
    out = tmp_path / "findings.json"
    work = tmp_path / "work"
    work.mkdir()
    proc = subprocess.run([sys.executable, __file__, str(out), str(work)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=1400, check=False)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-6000:])
    found = json.loads(out.read_text())
    first, second = found["commands"]
    print(json.dumps({k: v for k, v in found.items() if k != "commands"}, indent=1)[:4000])

    assert len(found["nodes"]) == 2
    # pi_ref's training lost a worker at step 4 and the group resumed from the step-3 checkpoint in the bucket.
    assert found["fired"] == ["train.step=4.fired"], first["tail"]
    assert any(line.endswith("[train] nll: resuming from the checkpoint at step 3/8") for line in first["lines"]), first
    # The driver was killed in A-LoL's training, with a checkpoint of it in the bucket and nothing published.
    assert first["returncode"] == -signal.SIGKILL and found["killed_with_checkpoints"], first["tail"]
    assert not any(f.startswith("train/a_lol-s0/") for f in found["bucket_after_kill"])
    # The second command (a new machine, empty cache) found every finished stage in the bucket and resumed
    # A-LoL from the checkpoint it had reached.
    assert second["returncode"] == 0, second["tail"]
    for stage in ("rows", "base policy", "train reference-s0", "scored", "value", "eval reference-s0"):
        assert any(line.startswith(f"[{stage}] up to date") for line in second["lines"]), (stage, second["lines"])
    resumed = [line for line in second["lines"] if "[train] a_lol: resuming from the checkpoint at step" in line]
    assert len(resumed) == 1 and not resumed[0].endswith(" 0/24"), second["lines"]
    bucket = found["bucket"]
    # Every step of A-LoL logged once across the two commands; the outputs and the report are in the bucket.
    assert "train/a_lol-s0/stage.json" in bucket and "train/a_lol-s0/best/model.safetensors" in bucket
    assert found["a_lol_steps"] == list(range(1, 25)), found["a_lol_steps"]
    assert "report.md" in bucket and "eval/a_lol-s0/stage.json" in bucket
    # Ray's checkpoints went to the bucket and were dropped with the staging folder once published; the
    # driver never held them, and its cache was not on the nodes' disk.
    assert not any("/checkpoints/" in f or ".staging-" in f for f in bucket), sorted(bucket)
    assert found["driver_cache_on_host"] == []
    # Each node read what it needed (the starting policy, pi_ref) through its own cache folder.
    for i in ("0", "1"):
        assert any(f.endswith("model.safetensors") for f in found["node_caches"].get(i, [])), found["node_caches"]
    print(f"one checkpoint of this policy in the bucket: {found['checkpoint_bytes']:,d} bytes")


if __name__ == "__main__":
    run_two_node_bucket_checks(sys.argv[1], sys.argv[2])
