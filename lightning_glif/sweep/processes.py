"""The sweep's child processes and the signals that stop them.

Each child runs in its own process group: SIGTERM or SIGINT (Ctrl-C) to the sweep's command is
forwarded to every child's group (SIGKILL after :data:`STOP_GRACE_S` seconds, or at a second
signal), and each child asks the kernel for SIGTERM when its parent dies, also by SIGKILL
(:func:`lightning_glif.sweep.child.end_with_parent`), so no run trains on as an orphan.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STOP_GRACE_S = 30.0  # seconds a signalled child has to exit before it is killed
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class SweepInterrupted(Exception):
    """The sweep was stopped by a signal; ``runs`` are the interrupted run directories."""

    def __init__(self, signum: int, runs: list[Path]) -> None:
        self.signum, self.runs = signum, runs
        super().__init__(
            f"stopped by {signal.Signals(signum).name}: {len(runs)} run(s) interrupted "
            f"({', '.join(str(r) for r in runs) or 'none'}); they keep no result.json and their "
            "trials are queued again, so the same command redoes them and skips the finished ones."
        )


class Children:
    """The sweep's live child processes and the signal handler that stops them.

    Each child is started in its own session (so its own process group): a terminal's Ctrl-C
    or a ``kill`` of the parent does not reach it directly, and :meth:`stop` signals the whole
    group (the child and any DataLoader workers it forked). Starting a child and stopping take
    one lock, so no child starts after a stop and none is missed by it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: dict[Path, subprocess.Popen] = {}
        self.signum: int | None = None
        self.stopped_at = 0.0
        self.interrupted: list[Path] = []

    def start(self, run_dir: Path, command: list[str], **kwargs) -> subprocess.Popen | None:
        """``Popen(command)`` in a new session, or ``None`` once the sweep is stopping."""
        with self._lock:
            if self.signum is not None:
                return None
            proc = subprocess.Popen(command, start_new_session=True, **kwargs)
            self._live[run_dir] = proc
            return proc

    def wait(self, run_dir: Path, proc: subprocess.Popen) -> int:
        """Wait for ``proc``; kill its group if it outlives a stop by :data:`STOP_GRACE_S`."""
        while True:
            try:
                code = proc.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                if self.signum is not None and time.monotonic() - self.stopped_at > STOP_GRACE_S:
                    self._signal(proc, signal.SIGKILL)
        with self._lock:
            self._live.pop(run_dir, None)
        return code

    def stop(self, signum: int, frame=None) -> None:
        """The SIGTERM/SIGINT handler: forward the signal to every child's group (SIGKILL at
        a second signal); the workers then wait for them and requeue their
        trials, and the command raises :class:`SweepInterrupted`."""
        again = self.signum is not None
        self.signum, self.stopped_at = signum, time.monotonic()
        with self._lock:
            for run_dir, proc in self._live.items():
                if run_dir not in self.interrupted:
                    self.interrupted.append(run_dir)
                self._signal(proc, signal.SIGKILL if again else signum)

    @staticmethod
    def _signal(proc: subprocess.Popen, signum: int) -> None:
        if proc.returncode is not None:  # reaped: its pid may be reused
            return
        try:
            if hasattr(os, "killpg"):
                os.killpg(proc.pid, signum)
            else:  # Windows: no process groups
                proc.send_signal(signum)
        except ProcessLookupError:
            pass

    @contextlib.contextmanager
    def handling_signals(self):
        """Install :meth:`stop` for SIGTERM and SIGINT while the block runs (only in the main
        thread, the one Python delivers signals to), then restore the previous handlers."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {s: signal.signal(s, self.stop) for s in STOP_SIGNALS}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


def launch(
    run_dir: Path, devices_env: dict[str, str], children: Children
) -> tuple[int | None, str]:
    """Run the child of ``run_dir`` with ``devices_env`` (:meth:`~.devices.Slot.env`): its exit
    code (``None`` if the sweep stopped before it started) and the last lines of its
    ``train.log``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(devices_env)
    env["ABLATION_PARENT"] = str(os.getpid())
    with open(run_dir / "train.log", "w") as log:
        command = [sys.executable, "-m", "lightning_glif.sweep.child", str(run_dir)]
        proc = children.start(run_dir, command, stdout=log, stderr=subprocess.STDOUT, env=env)
        if proc is None:
            return None, ""
        code = children.wait(run_dir, proc)
    tail = (run_dir / "train.log").read_text(errors="replace").strip().splitlines()[-15:]
    return code, "\n".join(tail)
