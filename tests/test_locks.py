"""One writer per run directory: a second command on a run stops naming the holder's pid, and the
lock dies with its holder (even SIGKILLed, even with orphaned DataLoader workers alive)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from cli_runs import CHILD_PYTHONPATH, alive, children_of
from pytorch_lightning import Callback

from lightning_glif.cli.locks import LOCK_NAME, DirectoryLock, DirectoryLocked

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": CHILD_PYTHONPATH}


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


def test_a_lock_is_reentrant_in_its_process_and_leaves_no_file(tmp_path):
    lock_file = tmp_path / LOCK_NAME
    with DirectoryLock(tmp_path), DirectoryLock(tmp_path):  # the same process locks it twice
        assert lock_file.read_bytes().startswith(f"pid {os.getpid()} on ".encode())
    assert not lock_file.exists()  # released: nothing left in the directory
    locked = DirectoryLocked(tmp_path, "pid 4242 on elsewhere: train.py fit")
    assert str(locked).startswith(
        f"{tmp_path} is in use by another command (pid 4242 on elsewhere: train.py fit): two "
        "commands writing one run directory would mix their outputs."
    )


@pytest.mark.slow
def test_the_lock_is_released_when_its_holder_is_killed(tmp_path):
    code = (
        "import sys, time; from lightning_glif.cli.locks import DirectoryLock; "
        f"DirectoryLock({str(tmp_path)!r}).acquire(); print('locked', flush=True); time.sleep(300)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], env=ENV, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(DirectoryLocked) as error:
            DirectoryLock(tmp_path).acquire()
        assert f"pid {holder.pid} " in str(error.value)
        assert "run directory" in str(error.value)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    assert holder.returncode == -signal.SIGKILL
    # The kernel released the lock with the killed process: no stale lock.
    lock = DirectoryLock(tmp_path).acquire()
    assert (tmp_path / LOCK_NAME).read_bytes().startswith(f"pid {os.getpid()} ".encode())
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
    # Stopped by max_steps after the first of 2 epochs: a run to resume with the same schedule.
    first = small_fit(root, "--trainer.max_epochs", "2", "--trainer.max_steps", "2")
    first = subprocess.run(first, env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]

    go = tmp_path / "go"
    resume = small_fit(root, "--ckpt_path", "last", "--trainer.max_epochs", "2")
    holder = subprocess.Popen(
        [*resume, "--trainer.callbacks+=tests.test_locks.WaitForFile"],
        env={**ENV, "GLIF_WAIT_FOR": str(go)}, cwd=ROOT,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for_holder(run, holder.pid, holder)
        deadline = time.monotonic() + 200  # its training started: it wrote all it writes first
        while not (run / "config.resume1.yaml").exists() and time.monotonic() < deadline:
            assert holder.poll() is None, holder.communicate()[1][-3000:]
            time.sleep(0.1)
        before = sorted(p.name for p in run.iterdir())
        second = subprocess.run(resume, env=ENV, cwd=ROOT, capture_output=True, text=True,
                                timeout=300)  # fmt: skip
        assert second.returncode == 2, second.stderr[-3000:]
        last_line = second.stderr.strip().splitlines()[-1]
        assert last_line.startswith("error: ") and f"pid {holder.pid} on " in last_line
        assert str(run) in last_line and "is in use by another command" in last_line
        assert "Traceback" not in second.stderr
        assert sorted(p.name for p in run.iterdir()) == before  # the second wrote nothing
    finally:
        go.write_text("go")
    _, err = holder.communicate(timeout=300)
    assert holder.returncode == 0, err[-3000:]
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 1
    assert (run / "config.resume1.yaml").is_file() and not (run / "config.resume2.yaml").exists()
    assert not (run / LOCK_NAME).exists()
    DirectoryLock(run).acquire().release()  # free again


class WaitAtSecondStep(Callback):
    """Test-only: at global step 1, write ``$GLIF_PROBE`` and wait (60 s at most)."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == 1:
            Path(os.environ["GLIF_PROBE"]).write_text("waiting")
            time.sleep(60)


@pytest.mark.slow
def test_orphaned_dataloader_workers_do_not_hold_the_lock(tmp_path):
    """A fit with DataLoader workers is SIGKILLed: its workers live on for seconds (until they
    notice), and the run directory is free at once (they never held its lock; an flock would
    have been shared with them, and the error would have named the dead pid)."""
    probe, root = tmp_path / "probe", tmp_path / "runs"
    args = small_fit(root, "--trainer.max_epochs", "1", "--data.init_args.num_workers", "2",
                     "--trainer.callbacks+=tests.test_locks.WaitAtSecondStep")  # fmt: skip
    env = {**ENV, "GLIF_PROBE": str(probe)}
    fit = subprocess.Popen(args, env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 200
    while not probe.exists() and time.monotonic() < deadline:
        assert fit.poll() is None, fit.communicate()[1][-3000:]
        time.sleep(0.1)
    workers = children_of(fit.pid)
    assert len(workers) >= 2, workers
    fit.send_signal(signal.SIGKILL)
    fit.wait(timeout=30)
    run = root / "digits" / "version_0"
    lock = DirectoryLock(run).acquire()
    assert any(alive(w) for w in workers)  # orphans still there, the lock free all the same
    lock.release()
