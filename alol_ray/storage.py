"""Run storage: stages always write to a local folder; a cloud ``storage`` URI is synced to and from it.

``cfg.storage`` is either a local folder (``runs``) or a URI that pyarrow's filesystems understand
(``s3://bucket/runs``, ``gs://bucket/runs``, ``file:///abs/path`` for tests). On a cluster, a job's
driver and workers may sit on machines with no shared disk, so the run directory lives in the bucket
and each stage works on a local copy:

    with storage.synced(cfg) as local_cfg:     # pulls <storage>/<name>/ into a local cache folder
        Pipeline(local_cfg).scored()           # writes locally, exactly as for a local `storage`
                                               # on exit (also on failure: finished parts resume) pushes back

Every `alol` command that works on a run gets this from ``alol_ray.cli``: the stages see
``storage=<local mirror>`` and never know about the bucket.

Sync is incremental by file size and modification time (after a copy both sides carry the same mtime),
so a stage that changed one file pushes one file. A stage's ``stage.json`` is pushed after every other file
of its folder, so a bucket never holds a marker whose files are still on their way.

The mirror is the driver's alone. What runs elsewhere never reads it:

- Ray Train jobs get the bucket itself as their storage (``train_storage``): every worker writes its
  checkpoints there and a rerun restores from there, whichever node it runs on;
- a folder the driver hands to workers or actors (the starting policy, pi_ref, a policy to evaluate) is
  pushed and passed as its URI (``shared``), and the remote side opens it through ``node_local``, which
  pulls it into that node's own cache folder (``ALOL_LOCAL_STORAGE``);
- a finished stage is pushed when it is published and a finished scoring part when it is written
  (``persist``), so a driver that dies mid-command loses at most the part in flight.

Credentials and endpoints come from the environment the way pyarrow reads them: ``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` (or the instance profile), ``AWS_DEFAULT_REGION``, and ``AWS_ENDPOINT_URL`` for an
S3-compatible store (MinIO, Ceph); ``GOOGLE_APPLICATION_CREDENTIALS`` or the VM's service account for GCS.
Ray passes the driver's environment to nothing by itself: set them on every node (the cluster launcher's
or KubeRay's env), as Ray Train's own bucket access needs anyway.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import logging
import os
import re
from typing import Any, Callable, Iterator, Optional

from alol_ray import faults
from alol_ray.errors import ConfigError, StorageError
from alol_ray.locations import ENVIRONMENT_ERRNOS, check_writable_folder, endpoint_problem

log = logging.getLogger("alol")

CACHE_ENV = "ALOL_LOCAL_STORAGE"  # where local copies of remote run dirs live (default ~/.cache/alol-ray/runs)
_SCHEMES = ("s3", "gs", "gcs", "file", "hdfs", "viewfs", "abfs", "abfss", "az")
MARKER = "stage.json"  # alol_ray.stage.STAGE_FILE: pushed after the rest of its folder
# Ray Train writes these straight into the bucket; the driver's mirror never pulls them.
TRAIN_CHECKPOINTS = "checkpoints"

# This process's mirrors: local folder (absolute) -> the storage URI it mirrors (set by ``synced``).
_MIRRORS: dict[str, str] = {}


def is_uri(storage: str) -> bool:
    """True for ``scheme://...`` storage that pyarrow resolves (s3, gs, file, hdfs, abfs)."""
    scheme, sep, _ = storage.partition("://")
    return bool(sep) and scheme.lower() in _SCHEMES


def resolve(uri: str):
    """(pyarrow FileSystem, path inside it) for a URI; ConfigError when pyarrow cannot open it."""
    # lazy: pyarrow (the CLI starts without it)
    import pyarrow.fs as pafs

    if not is_uri(uri):
        raise ConfigError(f"storage '{uri}' is not a URI with one of the schemes {list(_SCHEMES)}")
    try:
        return pafs.FileSystem.from_uri(uri)
    except Exception as exc:  # ArrowInvalid / ArrowNotImplementedError / credential errors
        raise ConfigError(f"storage '{uri}': pyarrow cannot open it: {exc}") from None


# ------------------------------------------------------------------------------- reaching the bucket

CHECK_TIMEOUT_S = 20.0  # the start check's bound: a bucket that has not answered by then is reported
CHECK_FILE = ".alol-write-check"


def _endpoint(uri: str) -> Optional[tuple[str, str, int]]:
    """(setting, host, port) of an S3-compatible endpoint the URI would use (``?endpoint_override=`` or
    ``AWS_ENDPOINT_URL``); None for the cloud's own endpoints."""
    # lazy: urllib.parse (the CLI starts without it)
    from urllib.parse import parse_qs, urlsplit

    parts = urlsplit(uri)
    if parts.scheme.lower() != "s3":
        return None
    override = parse_qs(parts.query).get("endpoint_override", [None])[0]
    setting, value = ("endpoint_override", override) if override else ("AWS_ENDPOINT_URL",
                                                                        os.environ.get("AWS_ENDPOINT_URL"))
    if not value:
        return None
    endpoint = urlsplit(value if "://" in value else f"http://{value}")
    try:
        port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    except ValueError:
        return setting, value, -1
    return setting, endpoint.hostname or "", port


def _within(seconds: float, call: Callable[[], Any]) -> tuple[bool, Any]:
    """``(True, call())`` when it returns (or raises) within ``seconds``, else ``(False, None)``; the call goes
    on in a daemon thread that the process does not wait for (a hung SDK cannot hold the command up)."""
    # lazy: threading (the CLI starts without it)
    import threading

    outcome: list = []

    def run() -> None:
        try:
            outcome.append((True, call()))
        except BaseException as exc:  # noqa: BLE001 -- handed to the caller
            outcome.append((False, exc))

    worker = threading.Thread(target=run, name="alol-storage-check", daemon=True)
    worker.start()
    worker.join(seconds)
    if not outcome:
        return False, None
    ok, value = outcome[0]
    if not ok:
        raise value
    return True, value


def _first_line(exc: BaseException) -> str:
    text = (str(exc).splitlines() or [type(exc).__name__])[0]
    return text if len(text) <= 240 else text[:240] + " ..."


_CREDENTIALS = ("the credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or the instance profile for s3://, "
                "GOOGLE_APPLICATION_CREDENTIALS for gs://)")


def check(uri: str, key: str = "storage", timeout: float = CHECK_TIMEOUT_S) -> None:
    """Before a run touches bucket storage: its endpoint answers, the bucket exists, and a file can be written
    and deleted there, each within ``timeout`` seconds. StorageError naming ``key`` and what to do otherwise."""
    scheme = uri.partition("://")[0].lower()
    if scheme == "file":
        check_writable_folder(uri.partition("://")[2] or "/", key)
        return
    endpoint = _endpoint(uri)
    if endpoint:
        setting, host, port = endpoint
        problem = endpoint_problem(host, port, timeout=min(timeout, 5.0)) if port > 0 else "not a host:port"
        if problem:
            raise StorageError(f"{key}={uri}: nothing answers at {setting}={host}:{port} ({problem}): start the "
                               f"S3 server, or fix {setting}")

    def probe() -> Optional[str]:
        filesystem, path = resolve(uri)
        bucket = path.strip("/").split("/")[0]
        # lazy: pyarrow (the CLI starts without it)
        import pyarrow.fs as pafs

        if filesystem.get_file_info(bucket).type == pafs.FileType.NotFound:
            return (f"the bucket {bucket!r} does not exist, or cannot be seen with these credentials: create it, "
                    f"or fix the URI or {_CREDENTIALS}")
        probe_file = f"{path.rstrip('/')}/{CHECK_FILE}-{os.getpid()}"
        with filesystem.open_output_stream(probe_file) as fh:
            fh.write(b"ok")
        filesystem.delete_file(probe_file)
        return None

    try:
        answered, problem = _within(timeout, probe)
    except ConfigError:
        raise
    except Exception as exc:  # pyarrow's OSError (network, access denied) and ArrowInvalid
        raise StorageError(f"{key}={uri}: {_first_line(exc)}: check the URI, the network and {_CREDENTIALS}") from None
    if not answered:
        raise StorageError(f"{key}={uri}: no answer within {timeout:g} s: check the network and {_CREDENTIALS} "
                           "(without them a cloud SDK may wait for a metadata server that is not there)")
    if problem:
        raise StorageError(f"{key}={uri}: {problem}")


@contextlib.contextmanager
def _reaching(uri: str, action: str) -> Iterator[None]:
    """A failure of the bucket (network, server gone, access denied) during a run becomes one StorageError
    line; a failure of this machine's disk (an errno of ``locations``) stays what it is."""
    try:
        yield
    except (StorageError, ConfigError):
        raise
    except OSError as exc:
        if exc.errno in ENVIRONMENT_ERRNOS:
            raise
        raise StorageError(f"storage {uri}: cannot {action}: {_first_line(exc)}. Finished work is kept in the "
                           "bucket and in this machine's copy: rerun the command once the bucket answers") from None


# A bucket run ends (one line, exit code 2) once its bucket has not answered for this long: a stopped server
# holds connections open, and an upload that waits on one (Ray Train's, in a worker) has no deadline of its own.
# ALOL_BUCKET_SILENCE_S sets it (a network that drops out for minutes, a test that stops its server).
SILENCE_S = 120.0
SILENCE_ENV = "ALOL_BUCKET_SILENCE_S"
PROBE_EVERY_S = 10.0


def silence_s() -> float:
    """How long a bucket run waits for a silent bucket: ALOL_BUCKET_SILENCE_S, else SILENCE_S."""
    text = os.environ.get(SILENCE_ENV, "").strip()
    if not text:
        return SILENCE_S
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise ConfigError(f"{SILENCE_ENV}={text!r}: expected a number of seconds above 0")
    return value


def watch(uri: str, on_silence: Callable[[str], None], silence: Optional[float] = None,
          every_s: float = PROBE_EVERY_S) -> Callable[[], None]:
    """Probe ``uri`` (one metadata request, bounded) every ``every_s`` seconds in a daemon thread; once nothing
    has answered for ``silence`` seconds (default: ``silence_s()``), call ``on_silence(why)`` there, once.
    Returns the function that stops the watch."""
    # lazy: threading, time (the CLI starts without them)
    import threading
    import time

    silence = silence_s() if silence is None else silence
    every_s = min(every_s, silence / 2)
    filesystem, path = resolve(uri)
    stop = threading.Event()

    def probe() -> Optional[str]:
        try:
            answered, _ = _within(every_s * 2, lambda: filesystem.get_file_info(path))
        except Exception as exc:  # noqa: BLE001 -- refused, reset, access denied: not usable either
            return _first_line(exc)
        return None if answered else f"no answer within {every_s * 2:g} s"

    def run() -> None:
        last_answer = time.monotonic()
        while not stop.wait(every_s):
            why = probe()
            if why is None:
                last_answer = time.monotonic()
            elif time.monotonic() - last_answer >= silence and not stop.is_set():
                on_silence(f"{uri} has not answered for {silence:g} s: {why}")
                return

    threading.Thread(target=run, name="alol-bucket-watch", daemon=True).start()
    return stop.set


# How a bucket's failure reads when it arrives as text (raised in Ray Train's own checkpoint upload, in a worker):
# pyarrow's S3 and GCS errors.
_BUCKET_FAILURE = re.compile(r"^.*(AWS Error [A-Z_]+|google::cloud::Status).*$", re.MULTILINE)


def bucket_failure(errors) -> Optional[str]:
    """The line of pyarrow's bucket error among ``errors`` (an error and those wrapped in it), or None."""
    for err in errors:
        match = _BUCKET_FAILURE.search(str(err))
        if match:
            return _first_line(match.group(0).strip())
    return None


def join(storage: str, *parts: str) -> str:
    """``storage`` joined with path parts, for folders and URIs alike."""
    if is_uri(storage):
        return "/".join([storage.rstrip("/")] + [p.strip("/") for p in parts])
    return os.path.join(storage, *parts)


def local_cache_dir(uri: str) -> str:
    """The local folder mirroring a storage URI (stable per URI, so a rerun reuses what it has)."""
    root = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "alol-ray", "runs")
    return os.path.join(root, hashlib.sha256(uri.rstrip("/").encode()).hexdigest()[:16])


def _listing(filesystem, path: str) -> dict[str, Any]:
    """relative path -> FileInfo of every file under ``path`` (empty if it does not exist)."""
    # lazy: pyarrow (the CLI starts without it)
    import pyarrow.fs as pafs

    info = filesystem.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        return {}
    if info.type == pafs.FileType.File:
        return {"": info}
    out = {}
    for item in filesystem.get_file_info(pafs.FileSelector(path, recursive=True)):
        if item.type == pafs.FileType.File:
            out[item.path[len(path.rstrip("/")) + 1:]] = item
    return out


def _stale(src, dst) -> bool:
    if dst is None or src.size != dst.size:
        return True
    # A missing mtime (some object stores) cannot prove the copy is current: copy again.
    return src.mtime_ns is None or dst.mtime_ns is None or src.mtime_ns > dst.mtime_ns


def _push_order(rel: str) -> tuple:
    """Sort key: a folder's ``stage.json`` after every other file (a marker never arrives before its files)."""
    return (os.path.basename(rel) == MARKER, rel)


def _in_checkpoints(rel: str) -> bool:
    return TRAIN_CHECKPOINTS in rel.split("/")[:-1]


def sync_dir(src_fs, src: str, dst_fs, dst: str, skip: Optional[Callable[[str], bool]] = None) -> list[str]:
    """Copy every file under ``src`` that ``dst`` lacks, or holds with another size or an older mtime
    (``stage.json`` files last; ``skip(rel)`` true: left out).

    Files only in ``dst`` are kept (a sync never deletes). Returns the relative paths copied.
    """
    # lazy: pyarrow (the CLI starts without it)
    import pyarrow.fs as pafs

    src_files = _listing(src_fs, src)
    dst_files = _listing(dst_fs, dst)
    copied = []
    for rel in sorted(src_files, key=_push_order):
        info = src_files[rel]
        if (skip and skip(rel)) or not _stale(info, dst_files.get(rel)):
            continue
        target = f"{dst.rstrip('/')}/{rel}" if rel else dst
        if not isinstance(dst_fs, pafs.LocalFileSystem):
            faults.hit("push", rel)  # tests: the driver dies mid-push
        dst_fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
        pafs.copy_files(info.path, target, source_filesystem=src_fs, destination_filesystem=dst_fs)
        _align_mtime(info, src_fs, target, dst_fs)
        copied.append(rel)
    return copied


def _align_mtime(src_info, src_fs, target: str, dst_fs) -> None:
    """Give both copies one mtime (the local side is set), so the next sync either way skips the file."""
    # lazy: pyarrow (the CLI starts without it)
    import pyarrow.fs as pafs

    if isinstance(dst_fs, pafs.LocalFileSystem) and src_info.mtime_ns is not None:
        os.utime(target, ns=(src_info.mtime_ns, src_info.mtime_ns))  # pulled: local copy takes the remote mtime
    elif isinstance(src_fs, pafs.LocalFileSystem):
        new = dst_fs.get_file_info(target)
        if new.mtime_ns is not None:
            os.utime(src_info.path, ns=(new.mtime_ns, new.mtime_ns))  # pushed: local file takes the remote mtime


def pull(uri: str, local_dir: str, *, checkpoints: bool = True) -> list[str]:
    """Copy a remote folder (or what is newer of it) into ``local_dir``; nothing if it does not exist.
    ``checkpoints=False`` leaves Ray Train's checkpoint folders in the bucket (Ray restores from there)."""
    # lazy: pyarrow (the CLI starts without it)
    import pyarrow.fs as pafs

    remote_fs, remote_path = resolve(uri)
    os.makedirs(local_dir, exist_ok=True)
    with _reaching(uri, "read from it"):
        return sync_dir(remote_fs, remote_path, pafs.LocalFileSystem(), os.path.abspath(local_dir),
                        skip=None if checkpoints else _in_checkpoints)


def push(local_dir: str, uri: str) -> list[str]:
    """Copy ``local_dir`` (what changed of it; or one file) to a remote folder (or that file's URI)."""
    # lazy: pyarrow (the CLI starts without it)
    import pyarrow.fs as pafs

    remote_fs, remote_path = resolve(uri)
    if not os.path.exists(local_dir):
        return []
    with _reaching(uri, "write to it"):
        return sync_dir(pafs.LocalFileSystem(), os.path.abspath(local_dir), remote_fs, remote_path)


def localize(cfg, cache_dir: Optional[str] = None):
    """A copy of ``cfg`` whose ``storage`` is a local folder holding the run dir pulled from the URI.

    A local ``storage`` is returned unchanged. Pair with ``push(run dir, join(uri, cfg.name))`` or use
    ``synced``.
    """
    if not is_uri(cfg.storage):
        return cfg
    local = cache_dir or local_cache_dir(cfg.storage)
    pull(join(cfg.storage, cfg.name), os.path.join(local, cfg.name), checkpoints=False)
    _MIRRORS[os.path.abspath(local)] = cfg.storage.rstrip("/")
    return dataclasses.replace(cfg, storage=local)


@contextlib.contextmanager
def synced(cfg, cache_dir: Optional[str] = None) -> Iterator[Any]:
    """Work on a local copy of the run dir; push it back on exit, also when the stage fails (its
    finished parts and checkpoints let a rerun resume)."""
    if not is_uri(cfg.storage):
        yield cfg
        return
    local_cfg = localize(cfg, cache_dir)
    run_dir = os.path.join(local_cfg.storage, cfg.name)
    remote = join(cfg.storage, cfg.name)
    log.info(f"[storage] working in {run_dir}, synced with {remote}")
    try:
        yield local_cfg
    except BaseException:
        # The command failed (or was interrupted): push what it finished, but its own error is the one to tell;
        # a bucket that fails now as well (the server gone) is one more line, not a second traceback.
        try:
            copied = push(run_dir, remote)
            log.info(f"[storage] pushed {len(copied)} file(s) to {remote}")
        except Exception as err:  # noqa: BLE001 -- the command's own error follows
            log.info(f"[storage] could not push to {remote} either ({err}); this machine's copy {run_dir} keeps it")
        raise
    else:
        copied = push(run_dir, remote)
        log.info(f"[storage] pushed {len(copied)} file(s) to {remote}")
    finally:
        _MIRRORS.pop(os.path.abspath(local_cfg.storage), None)


# ------------------------------------------------------------------------------- what runs off the driver


def mirrored(path: str) -> Optional[str]:
    """The storage URI of a local path inside one of this process's mirrors (None: not mirrored)."""
    full = os.path.abspath(path)
    for local, uri in _MIRRORS.items():
        if full == local or full.startswith(local + os.sep):
            rel = os.path.relpath(full, local)
            return uri if rel == "." else join(uri, *rel.split(os.sep))
    return None


def train_storage(work_dir: str) -> tuple[str, Any]:
    """``(storage_path, storage_filesystem)`` for a Ray Train job working in ``work_dir``: the bucket
    location itself when ``work_dir`` is in a mirror (checkpoints go there from every node and a rerun
    restores from there), else the absolute local folder and None."""
    uri = mirrored(work_dir)
    if uri is None:
        return os.path.abspath(work_dir), None
    filesystem, path = resolve(uri)
    return path, filesystem


def shared(path: str) -> str:
    """``path`` as every node can open it: a folder (or file) in a mirror is pushed and named by its URI;
    anything else (a local folder outside the run, a Hub name) is returned unchanged."""
    return persist(path) or path


def persist(path: str) -> Optional[str]:
    """Push one finished file or folder of a mirrored run now, so a driver that dies later does not lose it.
    Returns its URI (None, and nothing done, for local storage)."""
    uri = mirrored(path)
    if uri is not None:
        push(path, uri)
    return uri


def node_local(path: str) -> str:
    """What ``shared`` returned, as a local path on this node: a URI is pulled (what is newer of it) into
    this node's cache folder, under a file lock so that the workers of one node pull it once; a local path
    or a Hub name is returned unchanged."""
    if not is_uri(path):
        return path
    local = local_cache_dir(path)
    os.makedirs(os.path.dirname(local), exist_ok=True)
    with open(local + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            pull(path, local)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return local


def worker_folder(path: str) -> str:
    """Where a Train worker writes its run folder's logs (metrics.jsonl, val.jsonl): ``path`` itself, or for
    a URI this node's copy of it, holding what reached the bucket (checkpoints left out); ``push_back``
    sends it on."""
    if not is_uri(path):
        os.makedirs(path, exist_ok=True)
        return path
    local = local_cache_dir(path)
    pull(path, local, checkpoints=False)
    return local


def push_back(local: str, path: str) -> None:
    """Push a ``worker_folder`` to its URI (a no-op when ``path`` is local)."""
    if is_uri(path):
        push(local, path)


def remove_remote(path: str) -> None:
    """Delete the bucket copy of a mirrored local folder (a no-op for local storage or a missing copy)."""
    uri = mirrored(path)
    if uri is None:
        return
    filesystem, remote = resolve(uri)
    with contextlib.suppress(FileNotFoundError, OSError):  # a leftover in the bucket costs space, never results
        filesystem.delete_dir(remote)
