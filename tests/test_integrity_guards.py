"""What keeps results right, tested against the wrong versions a reviewer would write: stage publishing and
recovery (alol_ray.stage), bucket sync (alol_ray.storage, through file:// URIs), the run lock (alol_ray.runlock)
and content fingerprints (alol_ray.hashing). No Ray, no subprocess CLI: seconds in all, and the tests of
``bench/mutation.py --group integrity``.

Every fixture here is built so that the plausible wrong version gives another answer: several files in a
manifest (not one), an edit that keeps a file's size, a lock whose pid is alive but was reused, a lock of
another host, a staging folder without its marker.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import re
import socket
import subprocess
import sys
import shutil
import time
from pathlib import Path

import pytest

from alol_ray import hashing, runlock, stage, storage
from alol_ray.config_fields import path_field
from alol_ray.errors import UserError
from alol_ray.locations import mount_point
from alol_ray.runlock import LOCK_FILE, RunBusy, RunLock
from alol_ray.stage import STAGE_FILE, Unfinished, is_done, publish, read_marker, recover, run_stage, staging_dir

# ------------------------------------------------------------------------------------------- stages


def _files(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_build_that_crashed_half_way_is_rebuilt_on_the_rerun(tmp_path):
    """Nothing published yet; the first build dies after half a file. The rerun must build again (a marker
    written before the build would make recover promote the half-built staging folder as done)."""
    folder = tmp_path / "scored"
    calls = []

    def crash(out):
        calls.append("crash")
        (Path(out) / "table.parquet").write_text("half")
        raise RuntimeError("killed")

    def good(out):
        calls.append("good")
        (Path(out) / "table.parquet").write_text("the whole table")
        return {"rows": 3}

    for resumable in (False, True):
        calls.clear()
        with pytest.raises(RuntimeError, match="killed"):
            run_stage("score", str(folder), "fp1", crash, resumable=resumable)
        assert not folder.exists() and not is_done(str(folder), "fp1")
        assert run_stage("score", str(folder), "fp1", good, resumable=resumable) is True
        assert calls == ["crash", "good"]
        assert _files(folder) == {"stage.json": (folder / STAGE_FILE).read_text(), "table.parquet": "the whole table"}
        marker = read_marker(str(folder))
        assert marker["fingerprint"] == "fp1" and marker["rows"] == 3 and marker["manifest"] == {"table.parquet": 15}
        assert marker["seconds"] >= 0 and marker["finished_at"] <= time.time()
        assert run_stage("score", str(folder), "fp1", crash) is False  # up to date: the build is not called
        assert calls == ["crash", "good"]
        stage.discard(str(folder))
        assert not folder.exists()


def test_a_rerun_with_another_fingerprint_rebuilds_and_replaces(tmp_path, alol_log):
    folder = tmp_path / "out"

    def slow(out):
        time.sleep(0.05)
        (Path(out) / "a.txt").write_text("one")

    run_stage("s", str(folder), "fp1", slow)
    assert alol_log[0] == "[s] running ..." and re.fullmatch(r"\[s\] done in 0\.\ds", alol_log[1]), alol_log
    seconds = read_marker(str(folder))["seconds"]
    assert 0.04 <= seconds < 5 and seconds == round(seconds, 2)
    Path(staging_dir(str(folder), "fp-other")).mkdir()  # an attempt at another config, never finished
    assert run_stage("s", str(folder), "fp2", lambda out: (Path(out) / "b.txt").write_text("two") and None)
    assert sorted(os.listdir(tmp_path)) == ["out"]  # no staging or replaced folder left behind
    assert set(_files(folder)) == {"b.txt", STAGE_FILE} and stage.stage_fingerprint(str(folder)) == "fp2"
    assert is_done(str(folder), "fp2") and not is_done(str(folder), "fp1")
    assert run_stage("s", str(folder), "fp2", slow) is False
    assert alol_log[-1] == f"[s] up to date ({folder})"


def test_a_crash_between_publishs_renames_leaves_nothing_behind_once_recovered(tmp_path):
    """The process dies (os._exit, as kill -9) after the old output went aside and before the new one came in;
    a stale aside folder of an older crash is in the way too. Recovery puts the new output in place and
    leaves no folder behind."""
    folder = tmp_path / "out"
    # The old output is published in this process, before the fork: a mutation tool that maps tests to the code
    # they reach (mutmut records no call from a forked child) then sees this test reach publish.
    old = Path(staging_dir(str(folder), "fp0"))
    old.mkdir()
    (old / "a.txt").write_text("old")
    publish(str(old), str(folder), "fp0")
    staging = Path(staging_dir(str(folder), "fp"))
    for path, text in ((staging, "new"), (tmp_path / ".out.replaced", "older")):
        path.mkdir()
        (path / "a.txt").write_text(text)
    pid = os.fork()
    if pid == 0:  # the child publishes with the fault armed and dies at it
        os.environ.pop("ALOL_FAULTS_DIR", None)
        os.environ["ALOL_FAULTS"] = "publish=out"
        try:
            publish(str(staging), str(folder), "fp")
        finally:
            os._exit(0)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 1, "the fault did not fire while publishing"
    assert not folder.exists() and (tmp_path / ".out.replaced" / "a.txt").read_text() == "old"
    assert is_done(str(folder), "fp") and (folder / "a.txt").read_text() == "new"
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_folder_names_are_taken_as_given(tmp_path):
    """A trailing slash is not part of the name; a trailing X or space is."""
    for name in ("modelX", "model "):
        folder = tmp_path / name
        assert staging_dir(str(folder) + "/", "fp") == str(tmp_path / f".{name}.staging-fp")
        run_stage("s", str(folder) + "/", "fp", lambda out: (Path(out) / "w.bin").write_text("w") and None)
        assert is_done(str(folder) + "/", "fp") and sorted(os.listdir(tmp_path))[-1] == name
        run_stage("s", str(folder) + "/", "fp2", lambda out: (Path(out) / "w.bin").write_text("v") and None)
        assert (folder / "w.bin").read_text() == "v" and not (tmp_path / f".{name}.replaced").exists()
        (tmp_path / f".{name}.replaced").mkdir()
        recover(str(folder) + "/")
        assert not (tmp_path / f".{name}.replaced").exists()
        stage.discard(str(folder) + "/")
        assert not folder.exists()


def test_a_non_resumable_build_starts_empty_and_a_resumable_one_finds_its_files(tmp_path, alol_log):
    folder = tmp_path / "out"
    seen = []

    def stop_early(out):
        (Path(out) / "step-1.ckpt").write_text("1")
        return Unfinished("stopped at step 1")

    def look(out):
        seen.append(sorted(os.listdir(out)))
        (Path(out) / "final.txt").write_text("done")

    assert run_stage("train", str(folder), "fp", stop_early, resumable=True) is False
    assert alol_log[-1] == "[train] not finished: stopped at step 1"
    staging = Path(staging_dir(str(folder), "fp"))
    assert not folder.exists() and (staging / "step-1.ckpt").exists() and not (staging / STAGE_FILE).exists()
    assert not is_done(str(folder), "fp")  # an Unfinished build publishes nothing, and recover leaves it
    run_stage("train", str(folder), "fp", look, resumable=True)
    assert seen == [["step-1.ckpt"]]
    stage.discard(str(folder))
    run_stage("train", str(folder), "fp", stop_early, resumable=True)
    run_stage("train", str(folder), "fp", look)  # not resumable unless said so
    assert seen[-1] == []


def test_a_full_disk_is_one_line_and_only_a_resumable_build_keeps_its_checkpoints(tmp_path):
    """A build that runs out of space (ENOSPC or EDQUOT where the write failed, or wrapped by Ray in another
    error, or only in an error's text as safetensors says it): one UserError naming the file system and the
    stage. A build that starts from empty anyway leaves no staging folder; a resumable one keeps its checkpoints
    and says where. Any other failure goes on as it was, and still leaves no staging folder behind."""
    folder = tmp_path / "out"
    staging = Path(staging_dir(str(folder), "fp"))

    def writes_then(error):
        def build(out):
            (Path(out) / "ckpt").write_text("1")
            raise error
        return build

    def wrapped(out):
        try:
            writes_then(OSError(errno.ENOSPC, "No space left on device"))(out)
        except OSError as err:
            raise RuntimeError("the Train worker died") from err

    full = [writes_then(OSError(errno.ENOSPC, "No space left on device")), writes_then(OSError(errno.EDQUOT, "quota")),
            wrapped, writes_then(RuntimeError("SafetensorError: Error while serializing: IoError(Os { code: 28, "
                                              "kind: StorageFull, message: \"No space left on device\" })"))]
    said = f"no space left on the device holding {mount_point(str(folder))} while building train ({tmp_path})"
    for build in full:
        with pytest.raises(UserError) as err:
            run_stage("train", str(folder), "fp", build)
        assert str(err.value).startswith(said) and str(err.value).endswith("then rerun to go on"), err.value
        assert not staging.exists()
        with pytest.raises(UserError) as err:
            run_stage("train", str(folder), "fp", build, resumable=True)
        assert str(err.value).startswith(said), err.value
        assert str(err.value).endswith(f"then rerun to go on; its checkpoints in {staging} are kept for the rerun")
        assert (staging / "ckpt").read_text() == "1"
        shutil.rmtree(staging)
    for resumable in (False, True):
        with pytest.raises(RuntimeError, match="^boom$"):
            run_stage("train", str(folder), "fp", writes_then(RuntimeError("boom")), resumable=resumable)
        assert staging.exists() is resumable  # a resumable build's checkpoints stay for the rerun

    def removes_its_folder_then_fails(out):
        shutil.rmtree(out)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="^boom$"):  # the build's own error, not one from cleaning up after it
        run_stage("train", str(folder), "fp", removes_its_folder_then_fails)
    assert not folder.exists()


def test_discard_forgets_an_output_and_every_attempt_at_it_but_nothing_else(tmp_path):
    folder = tmp_path / "out"
    leftovers = [folder, tmp_path / ".out.replaced", Path(staging_dir(str(folder), "fp1")),
                 Path(staging_dir(str(folder), "fp2"))]
    kept = [tmp_path / "other", tmp_path / ".other.replaced", Path(staging_dir(str(tmp_path / "other"), "fp1"))]
    for path in leftovers + kept:
        path.mkdir()
        (path / "f.txt").write_text("x")
    stage.discard(str(folder) + "/")
    assert [p.exists() for p in leftovers] == [False] * 4 and all(p.exists() for p in kept)


def test_every_file_of_the_manifest_is_checked(tmp_path):
    """Three files, nested: truncating, growing or deleting any one of them (the last one included) makes
    the output incomplete."""
    folder = tmp_path / "out"
    staging = tmp_path / "build"
    (staging / "sub").mkdir(parents=True)
    contents = {"a.bin": b"a" * 10, "sub/b.bin": b"b" * 20, "z.bin": b"z" * 30}
    for rel, data in contents.items():
        (staging / rel).write_bytes(data)
    publish(str(staging), str(folder), "fp", {"note": "x"})
    marker = read_marker(str(folder))
    assert marker["manifest"] == {"a.bin": 10, "sub/b.bin": 20, "z.bin": 30} and marker["note"] == "x"
    assert is_done(str(folder), "fp") and stage.intact(str(folder), marker)
    for rel, data in contents.items():
        for broken in (data[:-1], data + b"!"):
            (folder / rel).write_bytes(broken)
            assert not is_done(str(folder), "fp"), f"{rel} with {len(broken)} bytes taken as complete"
        (folder / rel).unlink()
        assert not is_done(str(folder), "fp"), f"{rel} missing taken as complete"
        (folder / rel).write_bytes(data)
        assert is_done(str(folder), "fp")


def test_recover_never_promotes_a_staging_folder_without_its_marker(tmp_path):
    folder = tmp_path / "out"
    unfinished = Path(staging_dir(str(folder), "fpnew"))
    unfinished.mkdir()
    (unfinished / "a.txt").write_text("half")
    recover(str(folder))
    assert not folder.exists() and (unfinished / "a.txt").exists()
    assert not is_done(str(folder), "fpnew")
    # With the old output aside (killed between publish's renames, before the new one was marked): it comes back.
    (tmp_path / ".out.replaced").mkdir()
    (tmp_path / ".out.replaced" / "a.txt").write_text("old")
    recover(str(folder))
    assert (folder / "a.txt").read_text() == "old" and not (tmp_path / ".out.replaced").exists()
    assert (unfinished / "a.txt").read_text() == "half"  # left for a resumable rerun


def test_recover_promotes_the_newest_finished_staging_folder(tmp_path):
    folder = tmp_path / "out"
    for fp, age in (("fpold", 100), ("fpnew", 0)):
        staging = Path(staging_dir(str(folder), fp))
        staging.mkdir()
        (staging / "a.txt").write_text(fp)
        (staging / STAGE_FILE).write_text(json.dumps({"fingerprint": fp, "manifest": {"a.txt": len(fp)}}))
        os.utime(staging, (time.time() - age, time.time() - age))
    (tmp_path / ".out.replaced").mkdir()
    recover(str(folder))
    assert (folder / "a.txt").read_text() == "fpnew" and is_done(str(folder), "fpnew")
    assert not (tmp_path / ".out.replaced").exists()


def test_a_marker_that_is_not_an_object_is_no_marker(tmp_path):
    (tmp_path / STAGE_FILE).write_text(json.dumps(["fp"]))
    assert read_marker(str(tmp_path)) is None and stage.stage_fingerprint(str(tmp_path)) is None
    assert not is_done(str(tmp_path), "fp")
    assert stage.stage_fingerprint(str(tmp_path / "nothing")) is None


def test_staging_folders_sit_beside_the_output_named_by_fingerprint(tmp_path):
    folder = tmp_path / "train" / "a_lol-s0"
    assert staging_dir(str(folder) + "/", "0123456789abcdef0123") == \
        str(tmp_path / "train" / ".a_lol-s0.staging-0123456789abcdef")
    assert staging_dir(str(folder), "ab") == str(tmp_path / "train" / ".a_lol-s0.staging-ab")


# ------------------------------------------------------------------------------------------- bucket sync


def _uri(path: Path) -> str:
    return f"file://{path}"


def test_an_edit_that_keeps_the_size_is_pushed_and_pulled(tmp_path):
    local, remote = tmp_path / "local", tmp_path / "bucketX"
    local.mkdir()
    (local / "note.txt").write_text("v1")
    (local / "same.txt").write_text("kept")
    assert sorted(storage.push(str(local), _uri(remote))) == ["note.txt", "same.txt"]
    assert storage.push(str(local), _uri(remote)) == []  # nothing changed: nothing copied
    (local / "note.txt").write_text("v2")  # same size, newer content
    later = time.time() + 10
    os.utime(local / "note.txt", (later, later))
    assert storage.push(str(local), _uri(remote)) == ["note.txt"]
    assert (remote / "note.txt").read_text() == "v2"
    # The other way: the bucket's copy edited (same size, newer) reaches a mirror that holds the old one.
    mirror = tmp_path / "mirror"
    assert sorted(storage.pull(_uri(remote), str(mirror))) == ["note.txt", "same.txt"]
    (remote / "same.txt").write_text("KEPT")
    os.utime(remote / "same.txt", (later + 10, later + 10))
    assert storage.pull(_uri(remote), str(mirror)) == ["same.txt"]
    assert (mirror / "same.txt").read_text() == "KEPT"
    # An older copy on the source side never overwrites a newer one.
    (remote / "note.txt").write_text("v0")
    os.utime(remote / "note.txt", (1, 1))
    assert storage.pull(_uri(remote), str(mirror)) == [] and (mirror / "note.txt").read_text() == "v2"


def test_after_a_push_to_an_object_store_nothing_comes_back(tmp_path):
    """An object store stamps its own mtime on an upload; the pushed local file takes it, so the next pull
    finds both copies alike. pyarrow's in-memory filesystem stands in for the store (its clock is fixed)."""
    import datetime

    import pyarrow.fs as pafs

    store = pafs._MockFileSystem(current_time=datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone.utc))
    local = tmp_path / "run"
    (local / "sub").mkdir(parents=True)
    (local / "a.txt").write_text("a")
    (local / "sub" / "b.txt").write_text("b")
    disk = pafs.LocalFileSystem()
    assert storage.sync_dir(disk, str(local), store, "bucket/run") == ["a.txt", "sub/b.txt"]
    assert os.stat(local / "a.txt").st_mtime == datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone.utc).timestamp()
    assert storage.sync_dir(store, "bucket/run", disk, str(local)) == []
    assert storage.sync_dir(disk, str(local), store, "bucket/run") == []
    mirror = tmp_path / "mirror"
    assert storage.sync_dir(store, "bucket/run", disk, str(mirror)) == ["a.txt", "sub/b.txt"]
    assert os.stat(mirror / "sub" / "b.txt").st_mtime == os.stat(local / "sub" / "b.txt").st_mtime


def _dies_at(fault: str, sync) -> bool:
    """Whether ``sync()`` in a child process with ``fault`` armed dies at it (os._exit(1), as kill -9)."""
    pid = os.fork()
    if pid == 0:
        os.environ.pop("ALOL_FAULTS_DIR", None)
        os.environ["ALOL_FAULTS"] = fault
        try:
            sync()
        finally:
            os._exit(0)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 1


def test_the_push_fault_point_is_on_the_way_to_an_object_store_only(tmp_path):
    import pyarrow.fs as pafs

    (tmp_path / "run" / "sub").mkdir(parents=True)
    (tmp_path / "run" / "sub" / "b.txt").write_text("b")
    disk, store = pafs.LocalFileSystem(), pafs._MockFileSystem()
    # An empty folder copies nothing; synced in this process, so that a mutation tool that maps tests to the code
    # they reach (mutmut records no call from a forked child) sees this test reach sync_dir.
    (tmp_path / "empty").mkdir()
    assert storage.sync_dir(disk, str(tmp_path / "empty"), store, "bucket/none") == []
    assert _dies_at("push=sub/b.txt", lambda: storage.sync_dir(disk, str(tmp_path / "run"), store, "bucket/run"))
    assert not _dies_at("push=sub/b.txt", lambda: storage.sync_dir(disk, str(tmp_path / "run"), disk,
                                                                    str(tmp_path / "copy")))


def test_a_missing_mtime_always_copies():
    from types import SimpleNamespace as File

    assert storage._stale(File(size=1, mtime_ns=None), File(size=1, mtime_ns=5))
    assert storage._stale(File(size=1, mtime_ns=5), File(size=1, mtime_ns=None))
    assert storage._stale(File(size=1, mtime_ns=5), None)
    assert storage._stale(File(size=2, mtime_ns=5), File(size=1, mtime_ns=9))
    assert storage._stale(File(size=1, mtime_ns=6), File(size=1, mtime_ns=5))
    assert not storage._stale(File(size=1, mtime_ns=5), File(size=1, mtime_ns=5))
    assert not storage._stale(File(size=1, mtime_ns=4), File(size=1, mtime_ns=5))


def test_markers_are_pushed_after_every_other_file_and_checkpoints_can_stay_behind(tmp_path):
    local, remote = tmp_path / "run", tmp_path / "bucket"
    for rel in ("a/stage.json", "a/z.parquet", "b/stage.json", "b/a.txt", "stage.json", "train/checkpoints/c/w.pt",
                "zz.txt"):
        (local / rel).parent.mkdir(parents=True, exist_ok=True)
        (local / rel).write_text(rel)
    copied = storage.push(str(local), _uri(remote))
    assert copied[:4] == sorted(["a/z.parquet", "b/a.txt", "train/checkpoints/c/w.pt", "zz.txt"])
    assert copied[4:] == ["a/stage.json", "b/stage.json", "stage.json"]
    assert all((remote / rel).read_text() == rel for rel in copied)
    mirror = tmp_path / "mirror"
    pulled = storage.pull(_uri(remote), str(mirror), checkpoints=False)
    assert "train/checkpoints/c/w.pt" not in pulled and len(pulled) == 6
    assert not (mirror / "train" / "checkpoints").exists()
    assert storage.pull(_uri(remote), str(mirror)) == ["train/checkpoints/c/w.pt"]
    assert storage._in_checkpoints("x/checkpoints/y") and not storage._in_checkpoints("x/checkpoints")
    # One file, and nothing at all.
    assert storage.push(str(local / "zz.txt"), _uri(tmp_path / "one" / "zz.txt")) == [""]
    assert (tmp_path / "one" / "zz.txt").read_text() == "zz.txt"
    assert storage.push(str(tmp_path / "absent"), _uri(remote)) == []
    assert storage.pull(_uri(tmp_path / "absent"), str(tmp_path / "empty")) == []


def test_a_mirrored_run_persists_shares_and_removes_through_the_bucket(tmp_path, monkeypatch):
    from alol_ray.config import load_config

    monkeypatch.setenv(storage.CACHE_ENV, str(tmp_path / "node-cache"))
    bucket = tmp_path / "bucket"
    cfg = load_config(None, [f"storage={_uri(bucket)}/runs", "name=exp"])
    with storage.synced(cfg, cache_dir=str(tmp_path / "driver")) as local_cfg:
        run = Path(local_cfg.storage) / "exp"
        assert storage.mirrored(str(run)) == f"{_uri(bucket)}/runs/exp"
        assert storage.mirrored(local_cfg.storage) == f"{_uri(bucket)}/runs"
        assert storage.mirrored(str(tmp_path / "elsewhere")) is None
        (run / "ref").mkdir(parents=True)
        (run / "ref" / "model.bin").write_text("weights")
        shared = storage.shared(str(run / "ref"))
        assert shared == f"{_uri(bucket)}/runs/exp/ref" and (bucket / "runs" / "exp" / "ref" / "model.bin").exists()
        on_node = storage.node_local(shared)
        assert on_node == storage.local_cache_dir(shared) and on_node.startswith(str(tmp_path / "node-cache"))
        assert Path(on_node, "model.bin").read_text() == "weights"
        path, filesystem = storage.train_storage(str(run / "train"))
        assert path == str(bucket / "runs" / "exp" / "train") and filesystem is not None
        storage.remove_remote(str(run / "ref"))
        assert not (bucket / "runs" / "exp" / "ref").exists()
        work = storage.worker_folder(f"{_uri(bucket)}/runs/exp/logs")
        Path(work, "metrics.jsonl").write_text("{}")
        storage.push_back(work, f"{_uri(bucket)}/runs/exp/logs")
        assert (bucket / "runs" / "exp" / "logs" / "metrics.jsonl").exists()
    assert storage.mirrored(str(run)) is None  # the mirror ends with the session
    # Local storage: every helper is the identity and touches nothing.
    assert storage.shared(str(tmp_path / "x")) == str(tmp_path / "x") and storage.persist(str(tmp_path)) is None
    assert storage.node_local("gpt2") == "gpt2"
    assert storage.train_storage(str(tmp_path / "w")) == (str(tmp_path / "w"), None)
    assert storage.worker_folder(str(tmp_path / "logs")) == str(tmp_path / "logs") and (tmp_path / "logs").is_dir()
    storage.remove_remote(str(tmp_path / "logs"))
    assert (tmp_path / "logs").is_dir()


def test_a_run_is_mirrored_from_the_bucket_without_checkpoints_or_other_runs(tmp_path, monkeypatch):
    from alol_ray.config import load_config

    monkeypatch.setenv(storage.CACHE_ENV, str(tmp_path / "mirrors"))
    bucket = tmp_path / "bucket"
    for rel in ("runs/exp/data/rows.parquet", "runs/exp/train/a/checkpoints/c/w.pt", "runs/other/x.txt"):
        (bucket / rel).parent.mkdir(parents=True, exist_ok=True)
        (bucket / rel).write_text(rel)
    uri = f"{_uri(bucket)}/runs/"  # as typed, with a trailing slash
    local_cfg = storage.localize(load_config(None, [f"storage={uri}", "name=exp"]))
    try:
        assert local_cfg.storage == storage.local_cache_dir(uri) and local_cfg.storage.startswith(str(tmp_path))
        assert _files(Path(local_cfg.storage)) == {"exp/data/rows.parquet": "runs/exp/data/rows.parquet"}
        assert storage.mirrored(local_cfg.storage) == f"{_uri(bucket)}/runs"
        spaced = Path(local_cfg.storage, "exp", "my model")
        assert storage.mirrored(str(spaced)) == f"{_uri(bucket)}/runs/exp/my model"
    finally:
        storage._MIRRORS.clear()
    work = storage.worker_folder(f"{_uri(bucket)}/runs/exp/train/a")  # a Train worker's logs: no checkpoints
    assert os.listdir(work) == [] and storage.worker_folder(work) == work == storage.worker_folder(work)
    assert storage.node_local(f"{_uri(bucket)}/runs/other") == storage.node_local(f"{_uri(bucket)}/runs/other/")


def test_removing_a_bucket_copy_that_is_gone_or_not_a_folder_is_no_error(tmp_path):
    storage._MIRRORS[str(tmp_path / "local")] = _uri(tmp_path / "bucket")
    try:
        (tmp_path / "bucket").mkdir()
        (tmp_path / "bucket" / "a_file").write_text("x")
        storage.remove_remote(str(tmp_path / "local" / "never_pushed"))
        storage.remove_remote(str(tmp_path / "local" / "a_file"))
    finally:
        storage._MIRRORS.clear()


def test_storage_that_pyarrow_cannot_open_is_a_config_error_naming_it():
    from alol_ray.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^storage 'runs' is not a URI with one of the schemes \['s3', 'gs'"):
        storage.resolve("runs")
    with pytest.raises(ConfigError, match=r"^storage 'az://c/runs': pyarrow cannot open it: .*az://"):
        storage.resolve("az://c/runs")


def test_join_makes_one_path_of_folders_and_uris():
    assert storage.join("s3://bucket/runs/", "/name/", "scored/") == "s3://bucket/runs/name/scored"
    assert storage.join("s3://bucket/runX", "X name ") == "s3://bucket/runX/X name "  # only slashes are trimmed
    assert storage.join("file:///abs/runs", "name") == "file:///abs/runs/name"
    assert storage.join("runs", "name", "scored") == os.path.join("runs", "name", "scored")


def test_each_storage_uri_gets_its_own_stable_cache_folder(tmp_path, monkeypatch):
    monkeypatch.setenv(storage.CACHE_ENV, str(tmp_path))
    a = storage.local_cache_dir("s3://bucket/runs")
    assert a == storage.local_cache_dir("s3://bucket/runs/") and a.startswith(str(tmp_path) + os.sep)
    assert a != storage.local_cache_dir("s3://bucket/other") and len(os.path.basename(a)) == 16
    assert storage.local_cache_dir("s3://bucket/runX") != storage.local_cache_dir("s3://bucket/run")
    monkeypatch.delenv(storage.CACHE_ENV)
    assert storage.local_cache_dir("s3://b").startswith(os.path.join(os.path.expanduser("~"), ".cache", "alol-ray",
                                                                     "runs"))
    assert storage.is_uri("GS://b/x") and storage.is_uri("hdfs://n/x") and not storage.is_uri("ftp://h/x")
    assert storage.is_uri("s3://bucket/odd://name") and not storage.is_uri("runs/odd://name")


# ------------------------------------------------------------------------------------------- the run lock


def _write_lock(folder: Path, **info) -> None:
    (folder / LOCK_FILE).write_text(json.dumps({"since": time.time(), "command": "alol train", **info}))


@pytest.fixture
def live_process():
    """A live process that is not this one (its Popen), and its real start time."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        for _ in range(100):
            if runlock._process_start(proc.pid) is not None:
                break
            time.sleep(0.01)
        yield proc, runlock._process_start(proc.pid)
    finally:
        proc.kill()
        proc.wait()


def test_a_live_holder_is_busy_but_a_reused_pid_is_not(tmp_path, live_process):
    proc, started = live_process
    pid = proc.pid
    assert started is not None
    _write_lock(tmp_path, host=socket.gethostname(), pid=pid, start=started)
    with pytest.raises(RunBusy, match=rf"in use by pid {pid} on {socket.gethostname()}"):
        RunLock(str(tmp_path)).acquire()
    with pytest.raises(subprocess.TimeoutExpired):  # asking whether the holder lives never signals it
        proc.wait(timeout=0.5)
    # The same pid, but the lock was written by a process that started earlier: the pid was reused.
    _write_lock(tmp_path, host=socket.gethostname(), pid=pid, start=started - 500)
    old_umask = os.umask(0o022)
    try:
        with RunLock(str(tmp_path), "alol score") as lock:
            held = json.loads((tmp_path / LOCK_FILE).read_text())
            assert held["pid"] == os.getpid() and held["command"] == "alol score"
            assert held["start"] == runlock._process_start(os.getpid()) and held["host"] == socket.gethostname()
            assert abs(held["since"] - time.time()) < 60 and os.stat(tmp_path / LOCK_FILE).st_mode & 0o777 == 0o644
            assert lock._beat.daemon  # the heartbeat never keeps a finished command alive
    finally:
        os.umask(old_umask)
    assert not (tmp_path / LOCK_FILE).exists()


def test_a_lock_names_the_command_line_by_default(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["/venv/bin/alol", "train", "--algo", "a_lol"])
    assert RunLock("runs/x").command == "alol train --algo a_lol"


def test_another_hosts_lock_is_stale_only_when_its_heartbeat_stopped(tmp_path):
    _write_lock(tmp_path, host="node-b", pid=os.getpid(), start=1.0)
    with pytest.raises(RunBusy, match="in use by pid .* on node-b"):
        RunLock(str(tmp_path)).acquire()
    old = time.time() - runlock.STALE_AFTER_S + 30  # refreshed 30 s before it would be stale
    os.utime(tmp_path / LOCK_FILE, (old, old))
    with pytest.raises(RunBusy):
        RunLock(str(tmp_path)).acquire()
    old = time.time() - runlock.STALE_AFTER_S - 30
    os.utime(tmp_path / LOCK_FILE, (old, old))
    with RunLock(str(tmp_path)):
        assert json.loads((tmp_path / LOCK_FILE).read_text())["host"] == socket.gethostname()


def test_the_holder_refreshes_its_lock_while_it_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(runlock, "HEARTBEAT_S", 0.05)
    lock = RunLock(str(tmp_path))
    with lock:
        old = time.time() - 1000
        os.utime(tmp_path / LOCK_FILE, (old, old))
        deadline = time.time() + 10
        while os.path.getmtime(tmp_path / LOCK_FILE) < time.time() - 60 and time.time() < deadline:
            time.sleep(0.05)
        assert os.path.getmtime(tmp_path / LOCK_FILE) > time.time() - 60, "the heartbeat did not refresh the lock"
    lock._beat.join(timeout=5)
    assert not lock._beat.is_alive()  # released: the heartbeat stops with it


def test_a_corrupt_lock_is_waited_for_while_fresh_and_taken_when_old(tmp_path, monkeypatch):
    waits = []
    monkeypatch.setattr(runlock.time, "sleep", waits.append)  # what acquire waits, without waiting
    (tmp_path / LOCK_FILE).write_text("{not json")
    with pytest.raises(RunBusy, match="could not take the lock"):
        RunLock(str(tmp_path)).acquire()
    assert waits == [0.5, 0.5, 0.5]  # three looks, half a second apart, then it gives up
    monkeypatch.undo()
    old = time.time() - 5.5  # a corrupt lock older than 5 s is a crash's leftover
    os.utime(tmp_path / LOCK_FILE, (old, old))
    with RunLock(str(tmp_path)):
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()


def test_the_lock_is_reentrant_and_release_all_frees_it(tmp_path):
    RunLock(str(tmp_path / "never")).release()  # releasing a lock never taken is harmless
    for _ in range(2):  # released, it is taken afresh
        with RunLock(str(tmp_path)):
            assert (tmp_path / LOCK_FILE).exists()
        assert not (tmp_path / LOCK_FILE).exists()
    outer, inner = RunLock(str(tmp_path)), RunLock(str(tmp_path))
    outer.acquire()
    inner.acquire()
    inner.release()
    assert (tmp_path / LOCK_FILE).exists()  # the outer holder still has it
    outer.release()
    assert not (tmp_path / LOCK_FILE).exists()
    RunLock(str(tmp_path / "run")).acquire()
    assert (tmp_path / "run" / LOCK_FILE).exists()
    runlock.release_all()
    assert not (tmp_path / "run" / LOCK_FILE).exists()
    with RunLock(str(tmp_path / "run")):  # nothing of the released lock is left in this process
        pass


def test_process_start_tells_processes_apart(live_process, monkeypatch):
    proc, started = live_process
    pid = proc.pid
    assert started == runlock._process_start(pid) and started >= runlock._process_start(os.getpid())
    assert runlock._process_start(2**22 + 12345) is None
    assert runlock._alive(pid, started) and runlock._alive(pid, None)
    assert not runlock._alive(pid, started + 1) and not runlock._alive(pid, started - 1)  # one clock tick apart
    assert not runlock._alive(2**22 + 12345, None)
    with pytest.raises(subprocess.TimeoutExpired):  # alive after all those questions: none of them signalled it
        proc.wait(timeout=0.5)

    def not_yours(pid, sig):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(runlock.os, "kill", not_yours)  # another user's process: it exists
    assert runlock._alive(pid, None)


def test_process_start_reads_the_right_field_whatever_the_process_name(tmp_path):
    """/proc/<pid>/stat puts the process name in parentheses, and a name may hold ')' itself. The start time
    (clock ticks since boot) agrees with psutil's reading of the same process."""
    import psutil

    odd = tmp_path / "a) b (c"
    odd.symlink_to(sys.executable)
    proc = subprocess.Popen([str(odd), "-c", "import time; time.sleep(60)"])
    try:
        for _ in range(100):
            if psutil.Process(proc.pid).name() == odd.name:
                break
            time.sleep(0.01)
        ticks = (psutil.Process(proc.pid).create_time() - psutil.boot_time()) * os.sysconf("SC_CLK_TCK")
        assert runlock._process_start(proc.pid) == pytest.approx(ticks, abs=2)
    finally:
        proc.kill()
        proc.wait()


def test_the_busy_message_names_the_holder():
    since = 1_700_000_000.0
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since))
    info = {"pid": 42, "host": "node-b", "since": since, "command": "alol train --algo a_lol"}
    assert runlock._describe(info) == f"pid 42 on node-b since {stamp}: alol train --algo a_lol"
    epoch = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(0))
    assert runlock._describe({}) == f"pid None on None since {epoch}: ?"


def test_a_lock_that_cannot_be_checked_is_respected_and_a_vanished_one_is_stale(tmp_path):
    """A same-host lock without a pid cannot be checked: it is held (the safe side). A lock of another host
    that is gone by the time its age is read is stale."""
    _write_lock(tmp_path, host=socket.gethostname())
    with pytest.raises(RunBusy, match="in use by pid None"):
        RunLock(str(tmp_path)).acquire()
    lock = RunLock(str(tmp_path / "elsewhere"))
    assert lock._stale({"host": "node-b"})


# ------------------------------------------------------------------------------------------- fingerprints


@pytest.fixture
def hash_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(hashing.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(hashing, "_MEMO", {})
    return tmp_path / "cache"


def _write(path: Path, data: bytes, mtime: float) -> None:
    """An edit with its own mtime: the file-hash cache keys on (size, mtime), and two writes within one clock
    tick of the filesystem can carry the same mtime."""
    path.write_bytes(data)
    os.utime(path, (mtime, mtime))


def _model_folder(path: Path) -> Path:
    (path / "sub").mkdir(parents=True)
    (path / "config.json").write_text('{"n_layer": 2}')
    (path / "sub" / "weights.bin").write_bytes(b"\x00" * 64)
    return path


def test_a_model_folder_edited_in_place_changes_its_hash(tmp_path, hash_cache):
    folder = _model_folder(tmp_path / "model")
    before = hashing.folder_hash(str(folder))
    assert before == hashing.folder_hash(str(folder)) and len(before) == 24
    _write(folder / "sub" / "weights.bin", b"\x01" * 64, time.time() + 5)  # same name, same size, new content
    assert hashing.folder_hash(str(folder)) != before
    _write(folder / "sub" / "weights.bin", b"\x00" * 64, time.time() + 10)
    assert hashing.folder_hash(str(folder)) == before
    (folder / "sub" / "weights.bin").rename(folder / "sub" / "weights2.bin")  # a renamed file: another folder
    assert hashing.folder_hash(str(folder)) != before
    (folder / "sub" / "weights2.bin").rename(folder / "sub" / "weights.bin")
    # What a folder *is* ignores bookkeeping: hidden entries, stage markers, __pycache__, and a reward model's
    # evaluation report (timings that change with every training of the same weights).
    for rel in (".lock", ".staging/x", "stage.json", "__pycache__/m.pyc", "sub/.hidden", "alol_rm_eval.json"):
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text("noise")
    assert hashing.folder_hash(str(folder)) == before
    # Moved elsewhere: the same content, the same hash.
    os.rename(folder, tmp_path / "moved")
    assert hashing.folder_hash(str(tmp_path / "moved")) == before


def test_a_retrained_reward_model_with_the_same_weights_keeps_its_identity(tmp_path, hash_cache):
    """The judge folder's identity is its weights, tokenizer and input rendering: the evaluation report that
    ``alol rm train`` writes beside them (its name is the reward model's own constant) holds timings, and a rerun
    of the same training must not make every stage that the judge feeds out of date."""
    from alol_ray.rm.backbone import EVAL_FILE

    folder = _model_folder(tmp_path / "rm")
    (folder / "alol_reward.json").write_text('{"input": "prompt_response"}')
    (folder / EVAL_FILE).write_text('{"pearson": 0.66, "seconds": 501.2}')
    before = hashing.model_identity(str(folder))
    (folder / EVAL_FILE).write_text('{"pearson": 0.66, "seconds": 88.9}')  # another size: no stat-cache hit
    assert hashing.model_identity(str(folder)) == before
    (folder / "alol_reward.json").write_text('{"input": "response"}')  # another input rendering: another judge
    assert hashing.model_identity(str(folder)) != before


def test_fingerprints_leave_out_runtime_fields_and_fields_added_later_at_their_default():
    from alol_ray.config_fields import added_field, runtime_field

    @dataclasses.dataclass
    class Before:
        lr: float = 1e-3

    @dataclasses.dataclass
    class After:  # the added field first: the fields after it must still enter
        strategy: str = added_field("ddp")
        workers: int = runtime_field(1)
        lr: float = 1e-3

    @dataclasses.dataclass
    class OtherDefault:
        lr: float = 9.0

    assert hashing.fingerprint(After()) == hashing.fingerprint(Before())
    assert hashing.fingerprint(After(workers=4)) == hashing.fingerprint(Before())  # runtime: never enters
    assert hashing.fingerprint(After(strategy="fsdp")) != hashing.fingerprint(Before())
    assert hashing.fingerprint(After(lr=2e-3)) == hashing.fingerprint(Before(lr=2e-3)) != hashing.fingerprint(Before())
    # A plain field enters at its default too: by its value, whatever the default is.
    assert hashing.fingerprint(OtherDefault(lr=1e-3)) == hashing.fingerprint(Before())


def test_the_hashing_scheme_is_stable_across_releases(tmp_path, hash_cache):
    """Fingerprints and folder hashes are stored in every stage.json: a change of the scheme makes every existing
    run out of date. These literals change only with the scheme, on purpose (and with a README note)."""
    folder = _model_folder(tmp_path / "model")
    assert hashing.folder_hash(str(folder)) == GOLDEN_FOLDER_HASH
    assert hashing.fingerprint({"b": [1, 2.5, "x"], "a": None}, "tag") == GOLDEN_FINGERPRINT


GOLDEN_FOLDER_HASH = "ced81f755ef0b3f22e1cc73c"
GOLDEN_FINGERPRINT = "9e268ba1c9695f79b30f"


def test_the_hash_cache_lives_in_the_users_cache_folder_unless_told(tmp_path, monkeypatch):
    monkeypatch.setenv(hashing.CACHE_ENV, str(tmp_path))
    assert hashing.cache_dir() == str(tmp_path)
    monkeypatch.delenv(hashing.CACHE_ENV)
    assert hashing.cache_dir() == os.path.join(os.path.expanduser("~"), ".cache", "alol-ray")


def test_identities_name_the_kind_of_content(tmp_path, hash_cache, monkeypatch):
    folder = _model_folder(tmp_path / "model")
    assert hashing.model_identity(str(folder)) == f"dir:{hashing.folder_hash(str(folder))}"
    file = folder / "config.json"
    assert hashing.path_identity(str(file)) == f"file:{hashing.file_sha(str(file))[:24]}"
    assert hashing.file_sha(str(file)) == __import__("hashlib").sha256(file.read_bytes()).hexdigest()
    assert hashing.path_identity(str(tmp_path / "none")) == f"missing:{tmp_path / 'none'}"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert hashing.model_identity("org/model") == "hub:org/model@unresolved"
    assert hashing.model_identity("org/model", "abc123") == "hub:org/model@abc123"
    ref = tmp_path / "hub" / "models--org--model" / "refs" / "main"
    ref.parent.mkdir(parents=True)
    ref.write_text("deadbeef\n")
    assert hashing.model_identity("org/model") == "hub:org/model@deadbeef"
    assert hashing.hub_revision("org/model", kind="dataset") is None
    assert hashing.module_identity("alol_ray.hashing") == hashing.path_identity(hashing.__file__)
    assert hashing.module_identity("alol_ray").startswith("dir:")
    assert hashing.module_identity("no_such_module_here") == "unknown"
    assert hashing.module_identity("no_such_package.sub") == "unknown" and hashing.module_identity("") == "unknown"
    assert hashing.module_identity("sys") == "unknown"  # built in: no source file
    (tmp_path / "namespace_pkg").mkdir()  # a folder without __init__.py: no origin
    monkeypatch.syspath_prepend(str(tmp_path))
    assert hashing.module_identity("namespace_pkg") == "unknown"


def test_file_hashes_are_cached_on_disk_by_file_status(tmp_path, hash_cache):
    data = tmp_path / "data.bin"
    data.write_bytes(b"abc")
    other = tmp_path / "other.bin"
    other.write_bytes(b"xyz")
    hashing.file_sha(str(other))
    (entry_other,) = list((hash_cache / "hashes").iterdir())
    digest = hashing.file_sha(str(data))
    assert hashing.file_sha(str(data)) == digest  # from memory
    (entry,) = [e for e in (hash_cache / "hashes").iterdir() if e != entry_other]
    assert entry.read_text() == digest and len(entry.name) == 32
    entry.write_text("f" * 64)  # what the cache says is what a later process believes, while the status holds
    hashing._MEMO.clear()
    assert hashing.file_sha(str(data)) == "f" * 64 == hashing.file_sha(str(data))
    entry.write_text("short")  # a damaged entry is ignored
    hashing._MEMO.clear()
    assert hashing.file_sha(str(data)) == digest
    _write(data, b"abd", time.time() + 5)  # a new status: hashed again
    assert hashing.file_sha(str(data)) != digest


@dataclasses.dataclass
class _Section:
    data: str = path_field("", "data")
    out: str = path_field("", "output")
    store: str = path_field("", "storage")
    model: str = path_field("none", "model", "none")
    lr: float = 1e-3


def test_fingerprints_follow_content_not_spelling(tmp_path, hash_cache, monkeypatch):
    data = tmp_path / "rows.jsonl"
    data.write_text('{"prompt": "a"}\n')
    base = hashing.fingerprint(_Section(data=str(data), out="runs/a", store="runs"))
    assert len(base) == 20
    assert base == hashing.fingerprint(_Section(data=str(data), out="runs/b", store="s3://b/runs"))  # where to: no
    # A keyword is itself, never a path, even when a file of that name happens to exist.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "none").write_text("1")
    keyword = hashing.fingerprint(_Section(model="none"))
    _write(tmp_path / "none", b"2", time.time() + 5)
    assert hashing.fingerprint(_Section(model="none")) == keyword
    assert base != hashing.fingerprint(_Section(data=str(data), lr=2e-3))
    assert hashing.fingerprint(_Section(model="none")) != hashing.fingerprint(_Section(model=str(data)))
    os.rename(data, tmp_path / "moved.jsonl")
    assert hashing.fingerprint(_Section(data=str(tmp_path / "moved.jsonl"))) == base  # moved: the same content
    _write(tmp_path / "moved.jsonl", b'{"prompt": "b"}\n', time.time() + 5)  # edited in place, same size
    assert hashing.fingerprint(_Section(data=str(tmp_path / "moved.jsonl"))) != base
    # Mappings by content, not key order; sequences in order.
    assert hashing.fingerprint({"a": 1, "b": [1, 2]}) == hashing.fingerprint({"b": [1, 2], "a": 1})
    assert hashing.fingerprint({"a": 1, "b": [1, 2]}) != hashing.fingerprint({"a": 1, "b": [2, 1]})
    assert hashing.fingerprint("x", 1) != hashing.fingerprint(1, "x")
    assert hashing.fingerprint({"a": 1, "b": 2}) != hashing.fingerprint({"a": 2, "b": 2})
    assert hashing.fingerprint({1: "a", "b": 2}) == hashing.fingerprint({"b": 2, "1": "a"})  # keys of any type


def test_fingerprints_are_stable_across_releases():
    """Every finished stage of every user's runs is found by its fingerprint: a change to how fingerprints are
    computed makes every rerun rebuild everything. This value may only change on purpose (and say so)."""
    import pathlib

    parts = ({"b": [1, 2.5, "x", None, True], "a": {"nested": 1}}, "tag", pathlib.PurePosixPath("/x/y"))
    assert hashing.fingerprint(*parts) == "c2287501cbb479574971"
