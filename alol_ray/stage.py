"""Stage outputs: built aside, published in one step, marked done last.

A stage writes one output folder (``<run>/scored``, ``<run>/train/a_lol-s0``, ...). It never builds in
that folder. It builds in a **staging** folder next to it, named after the fingerprint of what it is
building (``.scored.staging-<fp>``), and only a finished build is **published**:

1. ``stage.json`` is written into the staging folder last: the fingerprint plus a manifest of every
   file with its size (the marker covers exactly what was written);
2. the old output is renamed aside (``.scored.replaced``), the staging folder renamed into place, the
   old output removed.

So a failed or interrupted stage leaves the previous good output and its marker untouched; a rerun with
the same config finds its staging folder again (training resumes from the checkpoints in it); a rerun
with another config builds in another staging folder and replaces the old output only once it is done.
A crash between the renames is finished by ``recover`` the next time the folder is used. ``is_done``
checks the manifest, so an output whose files were deleted or truncated is not taken as complete.
"""

from __future__ import annotations

import glob
import logging
import os
import shutil
import time
from typing import Callable, Optional, Union

from alol_ray import faults, storage
from alol_ray.atomic import read_json, write_json
from alol_ray.errors import UserError
from alol_ray.locations import is_disk_full, mount_point
from alol_ray.ray_compat import wrapped_errors

log = logging.getLogger("alol")

STAGE_FILE = "stage.json"
MANIFEST = "manifest"


class Unfinished:
    """Returned by a build that stopped on purpose before the end (e.g. ``--stop-at-step``): nothing is
    published, the staging folder is kept, and a rerun continues from it."""

    def __init__(self, reason: str):
        self.reason = reason


BuildResult = Union[dict, None, Unfinished]


def _aside(folder: str, tag: str) -> str:
    parent, name = os.path.split(os.path.abspath(folder.rstrip("/")))
    return os.path.join(parent, f".{name}.{tag}")


def staging_dir(folder: str, fp: str) -> str:
    """Where the output of fingerprint ``fp`` is built before it replaces ``folder``."""
    return _aside(folder, f"staging-{fp[:16]}")


def _manifest(folder: str) -> dict[str, int]:
    out = {}
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(dirs)
        for name in sorted(files):
            path = os.path.join(root, name)
            rel = os.path.relpath(path, folder)
            if rel != STAGE_FILE:
                out[rel] = os.path.getsize(path)
    return out


def read_marker(folder: str) -> Optional[dict]:
    marker = read_json(os.path.join(folder, STAGE_FILE))
    return marker if isinstance(marker, dict) else None


def stage_fingerprint(folder: str) -> Optional[str]:
    """The fingerprint a published output was built for (None: nothing published)."""
    marker = read_marker(folder)
    return marker.get("fingerprint") if marker else None


def intact(folder: str, marker: dict) -> bool:
    """Every file of the marker's manifest is there, with its size."""
    for rel, size in (marker.get(MANIFEST) or {}).items():
        path = os.path.join(folder, rel)
        if not os.path.isfile(path) or os.path.getsize(path) != size:
            return False
    return True


def is_done(folder: str, fp: str) -> bool:
    """True when ``folder`` holds a complete output built for ``fp``."""
    recover(folder)
    marker = read_marker(folder)
    return bool(marker) and marker.get("fingerprint") == fp and intact(folder, marker)


def recover(folder: str) -> None:
    """Finish a publish that a crash interrupted between its renames (idempotent, cheap)."""
    folder = os.path.abspath(folder.rstrip("/"))
    replaced = _aside(folder, "replaced")
    if not os.path.exists(folder):
        finished = [s for s in glob.glob(_aside(folder, "staging-*")) if read_marker(s)]
        if finished:
            os.replace(max(finished, key=os.path.getmtime), folder)
        elif os.path.isdir(replaced):
            os.replace(replaced, folder)  # the new output never arrived: the old one comes back
    if os.path.exists(replaced) and os.path.exists(folder):
        shutil.rmtree(replaced, ignore_errors=True)


def publish(staging: str, folder: str, fp: str, info: Optional[dict] = None) -> None:
    """Mark ``staging`` complete and put it in place of ``folder`` (see the module docs)."""
    folder = os.path.abspath(folder.rstrip("/"))
    write_json(os.path.join(staging, STAGE_FILE), {
        "fingerprint": fp, "finished_at": time.time(), **(info or {}), MANIFEST: _manifest(staging)})
    replaced = _aside(folder, "replaced")
    shutil.rmtree(replaced, ignore_errors=True)
    if os.path.exists(folder):
        os.replace(folder, replaced)
    faults.hit("publish", os.path.basename(folder))  # tests: a crash between the two renames
    os.replace(staging, folder)
    shutil.rmtree(replaced, ignore_errors=True)
    for stale in glob.glob(_aside(folder, "staging-*")):  # attempts of other configs: superseded
        shutil.rmtree(stale, ignore_errors=True)
    # A bucket run (alol_ray.storage): the output goes up now, its marker last; the bucket's copy of the
    # staging folder (Ray Train's checkpoints, written there directly) is no longer needed.
    storage.persist(folder)
    storage.remove_remote(staging)


def discard(folder: str) -> None:
    """Forget a published output and every attempt at it (the next run rebuilds from scratch)."""
    folder = os.path.abspath(folder.rstrip("/"))
    for path in [folder, _aside(folder, "replaced"), *glob.glob(_aside(folder, "staging-*"))]:
        shutil.rmtree(path, ignore_errors=True)
        storage.remove_remote(path)  # a bucket run: the next pull must not bring it back


def run_stage(name: str, folder: str, fp: str, build: Callable[[str], BuildResult], *,
              resumable: bool = False) -> bool:
    """Build ``folder`` for fingerprint ``fp`` unless it is up to date. Returns True when it published.

    ``build(staging)`` writes the whole output into ``staging`` and returns what ``stage.json`` should
    also record (or ``Unfinished``). A ``resumable`` build finds what an interrupted attempt with the
    same fingerprint left in ``staging``; any other build starts from an empty one.
    """
    if is_done(folder, fp):
        log.info(f"[{name}] up to date ({folder})")
        return False
    staging = staging_dir(folder, fp)
    if not resumable:
        shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging, exist_ok=True)
    log.info(f"[{name}] running ...")
    start = time.time()
    try:
        info = build(staging)
        if isinstance(info, Unfinished):
            log.info(f"[{name}] not finished: {info.reason}")
            return False
        publish(staging, folder, fp, {"seconds": round(time.time() - start, 2), **(info or {})})
    except BaseException as err:
        _failed(name, folder, staging, resumable, err)
        raise
    log.info(f"[{name}] done in {time.time() - start:.1f}s")
    return True


def _failed(name: str, folder: str, staging: str, resumable: bool, err: BaseException) -> None:
    """After a failed build: a build that starts from empty anyway leaves no staging folder behind; a full
    disk becomes one UserError naming the file system that filled up (a resumable build keeps its
    checkpoints, which a rerun resumes from once there is space)."""
    full = is_disk_full(wrapped_errors(err))
    if not resumable:
        shutil.rmtree(staging, ignore_errors=True)
    if not full:
        return
    kept = f"; its checkpoints in {staging} are kept for the rerun" if resumable and os.path.isdir(staging) else ""
    raise UserError(f"no space left on the device holding {mount_point(folder)} while building {name} "
                    f"({os.path.dirname(os.path.abspath(folder))}): free space there, or set storage= to a folder on a "
                    f"larger disk, then rerun to go on{kept}") from err
