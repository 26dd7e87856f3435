"""alol_ray.storage: a run dir synced with a storage URI through pyarrow's filesystems (file:// here;
s3:// and gs:// go through the same code path with another pyarrow FileSystem)."""

from __future__ import annotations

import os
import time

import pandas as pd
import pytest

from alol_ray import storage
from alol_ray.config import load_config
from alol_ray.errors import ConfigError


def test_is_uri_and_join():
    assert storage.is_uri("s3://bucket/runs") and storage.is_uri("gs://b/r") and storage.is_uri("file:///tmp/x")
    assert not storage.is_uri("runs") and not storage.is_uri("/abs/runs") and not storage.is_uri("http://x/y")
    assert storage.join("s3://bucket/runs/", "name", "scored") == "s3://bucket/runs/name/scored"
    assert storage.join("runs", "name") == os.path.join("runs", "name")
    with pytest.raises(ConfigError, match="not a URI"):
        storage.resolve("runs")


def test_synced_round_trip_is_incremental(tmp_path, alol_log):
    remote_root = tmp_path / "bucket"
    uri = f"file://{remote_root}/runs"
    cfg = load_config(None, [f"storage={uri}", "name=exp1"])
    logs = alol_log

    # First stage: nothing remote yet; writes a parquet file and a nested file locally.
    with storage.synced(cfg, cache_dir=str(tmp_path / "cache1")) as local_cfg:
        assert not storage.is_uri(local_cfg.storage) and local_cfg.name == "exp1"
        run_dir = os.path.join(local_cfg.storage, "exp1")
        assert not os.path.exists(os.path.join(run_dir, "data"))
        os.makedirs(os.path.join(run_dir, "data"))
        pd.DataFrame({"a": [1, 2, 3]}).to_parquet(os.path.join(run_dir, "data", "rows.parquet"))
        with open(os.path.join(run_dir, "note.txt"), "w") as fh:
            fh.write("v1")
    assert (remote_root / "runs" / "exp1" / "data" / "rows.parquet").exists()
    assert logs[-1].startswith("[storage] pushed 2 file(s)")

    # Second stage on another "machine" (empty cache): it sees the first stage's outputs.
    with storage.synced(cfg, cache_dir=str(tmp_path / "cache2")) as local_cfg:
        run_dir = os.path.join(local_cfg.storage, "exp1")
        assert pd.read_parquet(os.path.join(run_dir, "data", "rows.parquet"))["a"].tolist() == [1, 2, 3]
        time.sleep(0.01)  # a strictly newer mtime for the changed file
        with open(os.path.join(run_dir, "note.txt"), "w") as fh:
            fh.write("v2 longer")
    assert logs[-1].startswith("[storage] pushed 1 file(s)")  # only what changed
    assert (remote_root / "runs" / "exp1" / "note.txt").read_text() == "v2 longer"

    # The first machine's stale copy is refreshed on its next pull.
    assert storage.pull(f"{uri}/exp1", str(tmp_path / "cache1" / "exp1")) == ["note.txt"]
    assert (tmp_path / "cache1" / "exp1" / "note.txt").read_text() == "v2 longer"


def test_synced_pushes_partial_work_when_the_stage_fails(tmp_path):
    uri = f"file://{tmp_path}/bucket"
    cfg = load_config(None, [f"storage={uri}", "name=exp2"])
    with pytest.raises(RuntimeError, match="boom"):
        with storage.synced(cfg, cache_dir=str(tmp_path / "cache")) as local_cfg:
            part = os.path.join(local_cfg.storage, "exp2", "scored", "cache", "part-0.parquet")
            os.makedirs(os.path.dirname(part))
            pd.DataFrame({"x": [0.5]}).to_parquet(part)
            raise RuntimeError("boom")
    assert (tmp_path / "bucket" / "exp2" / "scored" / "cache" / "part-0.parquet").exists()


def test_local_storage_is_untouched(tmp_path):
    cfg = load_config(None, [f"storage={tmp_path}/runs"])
    with storage.synced(cfg) as local_cfg:
        assert local_cfg is cfg


def test_cli_session_runs_a_real_stage_against_a_file_uri(tmp_path, monkeypatch):
    """The CLI's session around a command: the stage (the real rows stage) sees its config with the local
    mirror as storage, writes there, and its output lands in the bucket."""
    import argparse

    from alol_ray.cli import session_for

    monkeypatch.setenv(storage.CACHE_ENV, str(tmp_path / "mirror"))
    uri = f"file://{tmp_path}/bucket/runs"
    args = argparse.Namespace(config=None, overrides=[f"storage={uri}", "name=cli", "data.builtin_train_prompts=8",
                                                     "data.builtin_eval_prompts=2"])
    module = argparse.Namespace(USES_RUN=True)
    with session_for(args, module, "alol test") as session:
        seen = session.cfg.storage
        rows_path = session.pipeline.rows()
    assert not storage.is_uri(seen) and seen.startswith(str(tmp_path / "mirror"))
    remote = tmp_path / "bucket" / "runs" / "cli" / "data" / "rows.parquet"
    assert remote.exists() and pd.read_parquet(remote).equals(pd.read_parquet(rows_path))
