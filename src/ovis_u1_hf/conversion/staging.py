# Copyright 2026 The ovis-u1-hf authors. Licensed under the Apache License, Version 2.0.
"""
The folders a conversion writes beside its output before renaming them into place, and the removal of those that a
killed conversion left behind.

A staging folder is named for the process that owns it: `.NAME.converting-HOST-PID-XXXXXXXX` (and, while a `force`d
conversion swaps the old output out, `.NAME.replaced-HOST-PID-XXXXXXXX`), and that process holds an advisory lock on it
until it is done. A later conversion removes such a folder only when all of these hold:

- its name is exactly of that form (anything else beside the output is not ours);
- HOST is this machine (a process of another machine sharing the folder cannot be checked from here);
- no process PID is alive here (a live one may still be writing; a reused PID only delays the removal);
- nobody holds its lock (a live conversion in another PID namespace of this machine, e.g. a container with the same
  host name, holds it even though its PID means nothing here).

Where locks are unsupported (some network file systems) the PID alone decides; on systems without POSIX signals
nothing is removed.
"""

import logging
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


logger = logging.getLogger(__name__)

KINDS = ("converting", "replaced")
_TOKEN = "[a-z0-9_]+"  # what tempfile.mkdtemp appends: no "-", so HOST-PID-TOKEN parses from the right


def this_host() -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname()) or "localhost"


@contextmanager
def staging_folder(output: Path, kind: str = "converting") -> Iterator[Path]:
    """A new empty folder beside `output`, named for this process and locked while the block runs; removed at the end
    unless the block renamed it away."""
    prefix = f".{output.name}.{kind}-{this_host()}-{os.getpid()}-"
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=output.parent))
    lock = _lock(folder)
    try:
        yield folder
    finally:
        try:
            if folder.is_dir():
                shutil.rmtree(folder, ignore_errors=True)
        finally:
            if lock is not None:
                os.close(lock)


def remove_stale(parent: Path, name: str | None = None) -> list[Path]:
    """Removes the staging folders in `parent` left by conversions that were killed: those of output `name`, or with
    `name=None` of any output (for a folder that only conversions write into, such as the cache). Returns them."""
    removed = []
    try:
        entries = sorted(parent.iterdir())
    except OSError:  # no such folder, or unreadable: nothing of ours to find there
        return removed
    for path in entries:
        if is_stale(path, name):
            shutil.rmtree(path, ignore_errors=True)
            if not path.exists():
                logger.info(f"Removed {path}, left by a conversion that was killed.")
                removed.append(path)
    return removed


def is_stale(path: Path, name: str | None = None) -> bool:
    """`path` is a staging folder of this machine (of output `name`, if given) whose process is gone."""
    pattern = rf"\.(?P<name>.+)\.(?:{'|'.join(KINDS)})-{re.escape(this_host())}-(?P<pid>\d+)-{_TOKEN}"
    match = re.fullmatch(pattern, path.name)
    if match is None or (name is not None and match["name"] != name):
        return False
    if path.is_symlink() or not path.is_dir():
        return False
    return not _alive(int(match["pid"])) and not _locked(path)


def _alive(pid: int) -> bool:
    if os.name != "posix" or pid <= 0:  # os.kill ends processes on Windows; pid 0 and below name process groups
        return True
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, owned by another user
        return True
    return True


def _lock(folder: Path) -> int | None:
    """A file descriptor holding an exclusive lock on `folder` (released by the system when the process dies), or
    None where the file system does not lock."""
    try:
        import fcntl

        descriptor = os.open(folder, os.O_RDONLY)
    except (ImportError, OSError):
        return None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(descriptor)
        return None
    return descriptor


def _locked(folder: Path) -> bool:
    """Someone holds the lock of `folder`. False where locks are unsupported."""
    try:
        import fcntl

        descriptor = os.open(folder, os.O_RDONLY)
    except (ImportError, OSError):
        return False
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(descriptor)  # closing releases a lock taken here
    return False


__all__ = ["remove_stale", "staging_folder"]
