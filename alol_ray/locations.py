"""Locations the user names -- data files, model folders, ``--out``, ``storage``, endpoints -- checked in one
place, and every operating-system failure at one of them told as one line: the location, what went wrong,
what to do.

Checked before any work (``alol_ray.cli`` calls these for every path field of a run's config and for the
command's own flags; bucket storage and the Ray address have their own checks in ``storage`` and
``ray_utils``, which use ``endpoint_problem``):

- a file or folder to read exists and can be opened (``check_readable``);
- a folder to write is a folder, or can be made: its nearest existing parent is a writable folder on a
  writable file system (``check_writable_folder``);
- an endpoint (``host:port``) answers within seconds (``endpoint_problem``).

What can only fail during the work (a disk that fills up, a file system remounted read-only) reaches the
CLI as an ``OSError``, or inside the text of an error that Ray, safetensors or torch wrapped around one;
``environment_error`` recognises those and ``os_error_line`` words them. Standard library only.
"""

from __future__ import annotations

import errno
import os
import re
import socket
from typing import Iterable, Optional

from alol_ray.errors import ConfigError

# Failures that come from where the user pointed us (the disk, its permissions, its file system), never from
# a defect of this program: each is one line, not a traceback.
ENVIRONMENT_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO,
                      errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG, errno.ELOOP}
DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
# How disk-full reads inside errors that do not carry an errno: safetensors (Rust: "StorageFull"), torch's
# zip writer, pyarrow, and an OSError that crossed a Ray process boundary as text.
_DISK_FULL_TEXT = re.compile(r"No space left on device|StorageFull|Disk quota exceeded|\[Errno 28\]|\[Errno 122\]")

_ADVICE = {
    errno.EACCES: "permission denied: check its permissions, or choose another location",
    errno.EPERM: "operation not permitted: check its permissions, or choose another location",
    errno.EROFS: "the file system is read-only: choose a location on a writable disk",
    errno.ENOSPC: "no space left on the device: free space there, or choose a location on a larger disk",
    errno.EDQUOT: "the disk quota is used up: free space there, or choose another location",
    errno.EFBIG: "the file is larger than the file system (or a limit set for this process) allows",
    errno.EIO: "input/output error: the disk or network file system is failing",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "it is a folder, where a file is needed",
    errno.ENOENT: "no such file or folder",
    errno.EEXIST: "something is already there",
    errno.ENAMETOOLONG: "the name is too long for the file system",
    errno.ELOOP: "too many levels of symbolic links",
}


def os_error_line(exc: OSError, path: Optional[str] = None, verb: str = "use") -> str:
    """One line for an OSError at a location: ``cannot <verb> <path>: <why and what to do>``."""
    where = path or exc.filename or "a file"
    why = _ADVICE.get(exc.errno or -1) or (exc.strerror or str(exc)).splitlines()[0]
    return f"cannot {verb} {where}: {why}"


def environment_error(errors: Iterable[BaseException]) -> Optional[OSError]:
    """The first OSError among ``errors`` (an error and those wrapped in it) that comes from the environment
    (ENVIRONMENT_ERRNOS); an error whose text only says the disk is full becomes an ENOSPC OSError."""
    errors = list(errors)
    for err in errors:
        if isinstance(err, OSError) and err.errno in ENVIRONMENT_ERRNOS:
            return err
    for err in errors:
        if _DISK_FULL_TEXT.search(str(err)):
            return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return None


def is_disk_full(errors: Iterable[BaseException]) -> bool:
    found = environment_error(errors)
    return found is not None and found.errno in DISK_FULL_ERRNOS


def mount_point(path: str) -> str:
    """The mount point of the file system holding ``path`` (or its nearest existing parent)."""
    path = existing_parent(os.path.abspath(path))
    while not os.path.ismount(path):
        path = os.path.dirname(path)
    return path


def existing_parent(path: str) -> str:
    """``path`` itself if it exists, else its nearest existing parent."""
    path = os.path.abspath(path)
    while not os.path.lexists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path


# ------------------------------------------------------------------------------------------- checks


def check_readable(path: str, key: str) -> None:
    """``path`` (an existing file or folder) can be opened for reading; ConfigError naming ``key`` otherwise."""
    try:
        if os.path.isdir(path):
            os.listdir(path)
        else:
            with open(path, "rb"):
                pass
    except OSError as exc:
        raise ConfigError(f"{key}: {os_error_line(exc, path, 'read')}") from None


def check_writable_folder(path: str, key: str) -> None:
    """``path`` is a folder this process can write in, or one it can make (made and removed again); ConfigError
    naming ``key`` otherwise. Read-only file systems are found through ``statvfs``: ``os.access`` grants root
    everything but them."""
    if os.path.lexists(path) and not os.path.isdir(path):
        raise ConfigError(f"{key}: {path} is a file, not a folder: remove it or choose another folder")
    parent = existing_parent(path)
    if not os.path.isdir(parent):
        raise ConfigError(f"{key}: {path} cannot be made: {parent} is a file, not a folder; choose another folder")
    problem = None
    if os.statvfs(parent).f_flag & os.ST_RDONLY:
        problem = errno.EROFS
    elif not os.access(parent, os.W_OK | os.X_OK):
        problem = errno.EACCES
    verb = "write in" if parent == path else f"make {path} in"
    if problem is not None:
        raise ConfigError(f"{key}: {os_error_line(OSError(problem, os.strerror(problem)), parent, verb)}")
    if parent == path:
        return
    try:  # making it is the one test that holds on every file system (/proc, FUSE, NFS with root squash)
        os.makedirs(path)
    except OSError as exc:
        raise ConfigError(f"{key}: {os_error_line(exc, parent, verb)}") from None
    made = path
    while made != parent:  # nothing is left behind by a check: the command makes it when it writes
        os.rmdir(made)
        made = os.path.dirname(made)


def endpoint_problem(host: str, port: int, timeout: float = 5.0) -> Optional[str]:
    """Why nothing answers at ``host:port`` within ``timeout`` seconds (None: something accepts connections)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except socket.timeout:
        return f"no answer within {timeout:g} s"
    except socket.gaierror as exc:
        return f"the host name does not resolve ({exc.strerror})"
    except OSError as exc:
        return exc.strerror or str(exc)


def check_listen(host: str, port: int, key: str) -> None:
    """This machine can listen on ``host:port`` now (the port is free, the address is this machine's);
    ConfigError naming ``key`` otherwise."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
            sock.bind((host, port))
    except OSError as exc:
        why = "something else listens there" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
        raise ConfigError(f"{key}: cannot listen on {host}:{port} ({why}): choose another port or address") from None
