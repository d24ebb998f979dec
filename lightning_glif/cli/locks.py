"""One writer per directory: a lock file held by the process that writes a run (``train.py``),
so a second command on the same directory stops with the holder's pid instead of writing into it.

The lock is a POSIX record lock (``fcntl.lockf``) on ``<directory>/.lock``. The kernel releases
it when its holder exits, however it dies (a SIGKILLed holder leaves no stale lock), and it
belongs to the process, not to the open file: the DataLoader workers that a run forks do not
inherit it, so workers orphaned by a killed run (they notice within seconds) never hold the
directory. (An ``flock`` would be shared with them through the inherited descriptor.) The cost
of POSIX locks: closing *any* descriptor of the lock file in the holding process releases the
lock, so only :class:`DirectoryLock` opens that file, once per directory and process.

The file's content names the holder (pid, host and command) for the error message; it is
deleted on release, so a finished command leaves nothing behind. Record locks do not work across
machines on some network filesystems (NFS without lock support): there the lock only protects
commands on one machine.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no POSIX locks; the lock is then a no-op (documented in the README)
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
    runs; :class:`DirectoryLocked` if another live process holds it. Re-entrant within one
    process (a second lock of the same directory by the holder succeeds)."""

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
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            if fcntl is None:
                break
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # EAGAIN or EACCES: held by another process
                holder = os.read(fd, 4096).decode(errors="replace").strip() or "pid unknown"
                os.close(fd)
                raise DirectoryLocked(self.directory, holder, self.what) from None
            # The holder deletes the file on release: a lock taken on a file that was deleted
            # meanwhile guards nothing. Lock the file that is there now.
            try:
                if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
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
            if fcntl is not None:  # while still locked, so it is no one else's file
                self.path.unlink(missing_ok=True)
            os.close(held[0])  # closing the descriptor releases the lock

    def __enter__(self) -> DirectoryLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
