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
so a stage that changed one file pushes one file. Credentials come from the environment the way pyarrow reads them (AWS_* variables or the
instance profile for S3, GOOGLE_APPLICATION_CREDENTIALS or the VM's service account for GCS).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
from typing import Any, Iterator, Optional

from alol_ray.errors import ConfigError

log = logging.getLogger("alol")

CACHE_ENV = "ALOL_LOCAL_STORAGE"  # where local copies of remote run dirs live (default ~/.cache/alol-ray/runs)
_SCHEMES = ("s3", "gs", "gcs", "file", "hdfs", "viewfs", "abfs", "abfss", "az")


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


def sync_dir(src_fs, src: str, dst_fs, dst: str) -> list[str]:
    """Copy every file under ``src`` that ``dst`` lacks, or holds with another size or an older mtime.

    Files only in ``dst`` are kept (a sync never deletes). Returns the relative paths copied.
    """
    # lazy: pyarrow (the CLI starts without it)
    import pyarrow.fs as pafs

    src_files = _listing(src_fs, src)
    dst_files = _listing(dst_fs, dst)
    copied = []
    for rel, info in sorted(src_files.items()):
        if not _stale(info, dst_files.get(rel)):
            continue
        target = f"{dst.rstrip('/')}/{rel}" if rel else dst
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


def pull(uri: str, local_dir: str) -> list[str]:
    """Copy a remote folder (or what is newer of it) into ``local_dir``; nothing if it does not exist."""
    # lazy: pyarrow (the CLI starts without it)
    import pyarrow.fs as pafs

    remote_fs, remote_path = resolve(uri)
    os.makedirs(local_dir, exist_ok=True)
    return sync_dir(remote_fs, remote_path, pafs.LocalFileSystem(), os.path.abspath(local_dir))


def push(local_dir: str, uri: str) -> list[str]:
    """Copy ``local_dir`` (what changed of it) to a remote folder."""
    # lazy: pyarrow (the CLI starts without it)
    import pyarrow.fs as pafs

    remote_fs, remote_path = resolve(uri)
    if not os.path.isdir(local_dir):
        return []
    return sync_dir(pafs.LocalFileSystem(), os.path.abspath(local_dir), remote_fs, remote_path)


def localize(cfg, cache_dir: Optional[str] = None):
    """A copy of ``cfg`` whose ``storage`` is a local folder holding the run dir pulled from the URI.

    A local ``storage`` is returned unchanged. Pair with ``push(run dir, join(uri, cfg.name))`` or use
    ``synced``.
    """
    if not is_uri(cfg.storage):
        return cfg
    local = cache_dir or local_cache_dir(cfg.storage)
    pull(join(cfg.storage, cfg.name), os.path.join(local, cfg.name))
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
    finally:
        copied = push(run_dir, remote)
        log.info(f"[storage] pushed {len(copied)} file(s) to {remote}")
