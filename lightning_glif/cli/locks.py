"""One writer per directory: a second command on a run directory stops, naming the holder.

A POSIX record lock (``fcntl.lockf``) on ``<directory>/.lock``: the kernel releases it when its
holder dies however it dies, and it belongs to the process, so the DataLoader workers a run forks
do not inherit it (an ``flock`` would be shared through the inherited descriptor). Closing any
descriptor of the file releases it, so only :class:`DirectoryLock` opens it, once per directory
and process. The file names the holder (pid, host, command) and is deleted on release. Network
filesystems without lock support (some NFS) protect only commands on one machine.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no POSIX locks; the lock is then a no-op
    fcntl = None

LOCK_NAME = ".lock"


class DirectoryLocked(RuntimeError):
    """Another live process holds the lock of ``directory``."""

    def __init__(self, directory: Path, holder: str) -> None:
        super().__init__(
            f"{directory} is in use by another command ({holder}): two commands writing one "
            "run directory would mix their outputs. Wait for it to finish or stop it (kill the "
            "pid above), or use another directory."
        )


class DirectoryLock:
    """``with DirectoryLock(path):`` holds ``path/.lock`` while the block runs;
    :class:`DirectoryLocked` if another live process holds it. Re-entrant within one process."""

    _held: dict[Path, list[int]] = {}  # directory -> [descriptor, count]: this process's locks

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory).resolve()
        self.path = self.directory / LOCK_NAME

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
                raise DirectoryLocked(self.directory, holder) from None
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
