"""Atomic file writes: a file is either its old complete self or its new complete self, never a
truncated mix, whatever kills the writer.

The new content goes to ``<name>.tmp-<pid>-<random>`` beside the target (the same filesystem, so
the last step is a rename, never a copy), is fsynced, moved over the target with ``os.replace``
(atomic on POSIX and Windows), and the directory is fsynced so that the rename survives a power
loss. A writer killed before the rename leaves only its temporary file, which
:func:`remove_stale_temps` deletes once its pid is dead; readers never look at ``*.tmp-*``.

By hand: ``tempfile`` and fsspec create in ``$TMPDIR`` (often another filesystem, where the
final move is a copy), and neither fsyncs nor cleans up after a kill.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

_TEMP = re.compile(r"\.tmp-(\d+)-[0-9a-f]+$")


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file's (or, on POSIX, a directory's) data and metadata to the disk."""
    if os.path.isdir(path) and os.name == "nt":
        return  # Windows cannot open a directory; its renames are journaled by NTFS
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` for the caller to write by name (e.g. a library
    that opens the file itself); on a clean exit it is fsynced and renamed over ``path``, on an
    exception removed. The parent directory must exist."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        fsync_path(tmp)
        os.replace(tmp, path)
        fsync_path(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_open(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """``open(path, "wb")`` whose content replaces ``path`` atomically when the block ends
    without an exception (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp, open(tmp, "xb") as f:
        yield f


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path) as f:
        f.write(data)


def _alive(pid: int) -> bool:
    if pid == os.getpid() or os.name == "nt":
        return True  # Windows: os.kill(pid, 0) would send CTRL_C_EVENT, not probe; keep the file
    try:
        os.kill(pid, 0)  # signal 0: only checks that the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    return True


def remove_stale_temps(directory: str | os.PathLike) -> list[Path]:
    """Delete the ``*.tmp-<pid>-*`` files of ``directory`` whose writer is dead; return them.

    Pids are checked on this machine only: in a directory shared by several machines, another
    machine's temporary file can go; its writer then fails loudly at the rename."""
    removed = []
    if not os.path.isdir(directory):
        return removed
    for entry in list(os.scandir(directory)):
        match = _TEMP.search(entry.name)
        if match and entry.is_file(follow_symlinks=False) and not _alive(int(match.group(1))):
            Path(entry.path).unlink(missing_ok=True)
            removed.append(Path(entry.path))
    return removed
