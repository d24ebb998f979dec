"""One writer per run directory: a second command on a run stops naming the holder's pid, and the
lock dies with its holder (even SIGKILLed)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from pytorch_lightning import Callback

from lightning_glif.locks import LOCK_NAME, DirectoryLock, DirectoryLocked

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


class WaitForFile(Callback):
    """Test-only: at the start of each training epoch, wait (at most 200 s) until the file
    ``$GLIF_WAIT_FOR`` exists."""

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        path = Path(os.environ["GLIF_WAIT_FOR"])
        deadline = time.monotonic() + 200
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.1)


def wait_for_holder(directory: Path, pid: int, proc: subprocess.Popen, timeout: float = 200):
    lock = directory / LOCK_NAME
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        if lock.is_file() and lock.read_text().startswith(f"pid {pid} "):
            return
        time.sleep(0.1)
    raise AssertionError(f"{lock} never named pid {pid}")


def test_a_held_lock_stops_another_holder_naming_it_and_is_reentrant_in_its_process(tmp_path):
    """The other holder is a second open file of the lock in this process, which the kernel's
    flock treats as another holder (the killed-holder test below uses a real other process)."""
    fcntl = pytest.importorskip("fcntl")
    lock_file = tmp_path / LOCK_NAME

    def try_flock() -> int | None:
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return fd

    other = try_flock()
    os.write(other, b"pid 4242 on elsewhere: train.py fit\n")
    with pytest.raises(DirectoryLocked) as error:
        DirectoryLock(tmp_path, what="run directory").acquire()
    assert f"{tmp_path} is in use by another command (pid 4242 on elsewhere: train.py fit)" in str(
        error.value
    )
    assert "two commands writing one run directory" in str(error.value)
    os.close(other)  # the other holder ends: its flock goes with it
    with DirectoryLock(tmp_path), DirectoryLock(tmp_path):  # the same process locks it twice
        assert lock_file.read_text().startswith(f"pid {os.getpid()} on ")
    free = try_flock()  # both released: free for the next command
    assert free is not None
    os.close(free)


@pytest.mark.slow
def test_the_lock_is_released_when_its_holder_is_killed(tmp_path):
    code = (
        "import sys, time; from lightning_glif.locks import DirectoryLock; "
        f"DirectoryLock({str(tmp_path)!r}).acquire(); print('locked', flush=True); time.sleep(300)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], env=ENV, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(DirectoryLocked) as error:
            DirectoryLock(tmp_path, what="run directory").acquire()
        assert f"pid {holder.pid} " in str(error.value)
        assert "run directory" in str(error.value)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    assert holder.returncode == -signal.SIGKILL
    # The kernel released the flock with the killed process: no stale lock.
    lock = DirectoryLock(tmp_path).acquire()
    assert (tmp_path / LOCK_NAME).read_text().startswith(f"pid {os.getpid()} ")
    lock.release()


def small_fit(root: Path, *extra: str) -> list[str]:
    return [
        sys.executable, str(ROOT / "train.py"), "fit", "--trainer.default_root_dir", str(root),
        "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "2",
        "--trainer.num_sanity_val_steps", "0", "--model.backbone.init_args.channels", "[4, 8]",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        *extra,
    ]  # fmt: skip


@pytest.mark.slow
def test_a_second_fit_on_a_running_run_stops_naming_the_holder(tmp_path):
    root = tmp_path / "runs"
    run = root / "digits" / "version_0"
    first = subprocess.run(small_fit(root, "--trainer.max_epochs", "1"), env=ENV, cwd=ROOT,
                           capture_output=True, text=True, timeout=300)  # fmt: skip
    assert first.returncode == 0, first.stderr[-3000:]

    go = tmp_path / "go"
    resume = ["--ckpt_path", "last", "--trainer.max_epochs", "2"]
    holder = subprocess.Popen(
        small_fit(root, *resume, "--trainer.callbacks+=tests.test_locks.WaitForFile"),
        env={**ENV, "GLIF_WAIT_FOR": str(go)}, cwd=ROOT,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for_holder(run, holder.pid, holder)
        second = subprocess.run(small_fit(root, *resume), env=ENV, cwd=ROOT,
                                capture_output=True, text=True, timeout=300)  # fmt: skip
        assert second.returncode == 1, second.stderr[-3000:]
        last_line = second.stderr.strip().splitlines()[-1]
        assert "DirectoryLocked" in last_line and f"pid {holder.pid} on " in last_line
        assert str(run) in last_line and "is in use by another command" in last_line
        assert not (run / "config.resume2.yaml").exists()  # the second wrote nothing
    finally:
        go.write_text("go")
    _, err = holder.communicate(timeout=300)
    assert holder.returncode == 0, err[-3000:]
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 1
    assert (run / "config.resume1.yaml").is_file()
    DirectoryLock(run).acquire().release()  # free again
