"""One writer per directory: a lock file held by the process that writes a run (``train.py``)
or a sweep (``ablate.py``), so a second command on the same directory stops with the holder's pid
instead of writing into it.

The lock is an advisory ``flock`` on ``<directory>/.lock`` (the standard library's ``fcntl``; no
package offers a cross-process lock that the kernel releases when its holder dies, which is what
makes a lock of a SIGKILLed process never stale). The file's content names the holder (pid, host
and command) for the error message; it is left in place on release (harmless: only the ``flock``
counts). Advisory locks do not work across machines on some network filesystems (NFS without
lock support): there the lock only protects commands on one machine.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no flock; the lock is then a no-op (documented in the README)
    fcntl = None

LOCK_NAME = ".lock"


class DirectoryLocked(RuntimeError):
    """Another live process holds the lock of ``directory``."""

    def __init__(self, directory: Path, holder: str, what: str) -> None:
        self.directory = Path(directory)
        self.holder = holder
        super().__init__(
            f"{directory} is in use by another command ({holder}): two commands writing one "
            f"{what} would mix their outputs. Wait for it to finish or stop it (kill the pid "
            f"above), or use another directory."
        )


class DirectoryLock:
    """``with DirectoryLock(path, what="run directory"):`` holds ``path/.lock`` while the block
    runs; :class:`DirectoryLocked` if a live process holds it. Re-entrant within one process
    (a second lock of the same directory by the holder succeeds)."""

    _held: dict[Path, list[int]] = {}  # directory -> [descriptor, count]: this process's locks

    def __init__(self, directory: str | Path, what: str = "directory") -> None:
        self.directory = Path(directory).resolve()
        self.what = what

    @property
    def path(self) -> Path:
        return self.directory / LOCK_NAME

    def acquire(self) -> DirectoryLock:
        if self.directory in self._held:
            self._held[self.directory][1] += 1
            return self
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 4096).decode(errors="replace").strip() or "pid unknown"
                os.close(fd)
                raise DirectoryLocked(self.directory, holder, self.what) from None
        os.ftruncate(fd, 0)
        command = " ".join(sys.argv)[:300]
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}: {command}\n".encode())
        self._held[self.directory] = [fd, 1]
        return self

    def release(self) -> None:
        held = self._held.get(self.directory)
        if held is None:
            return
        held[1] -= 1
        if held[1] == 0:
            del self._held[self.directory]
            os.close(held[0])  # closing the descriptor releases the flock

    def __enter__(self) -> DirectoryLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
