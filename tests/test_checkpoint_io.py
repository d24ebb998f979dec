"""Checkpoints and caches that survive kills: atomic saves in the checkpoint's own directory (also
when ``$TMPDIR`` is another filesystem), a full disk named as such, one clear error for an
unreadable or bit-flipped checkpoint, Ctrl-C and SIGTERM during ``fit`` leaving a resumable
``last.ckpt``, and no ``*.tmp-*`` left by a killed cache writer.

The kills are real: child processes (``train.py fit`` or a small script) get SIGKILL, SIGINT or
SIGTERM; the runs are the default config made small, under ``tmp_path``."""

from __future__ import annotations

import os
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
import time
import uuid
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_runs import CHILD_PYTHONPATH, ROOT, fit_small, small_args
from pytorch_lightning import Callback

from lightning_glif.cli.checkpoint_io import (
    AtomicCheckpointIO,
    CorruptCheckpointError,
    check_checkpoint_file,
)
from lightning_glif.cli.main import cli_main
from lightning_glif.io import atomic_open, remove_stale_temps


@pytest.fixture(autouse=True)
def _plain_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["train.py"])


def child(args: list[str], env: dict | None = None, **kwargs) -> subprocess.Popen:
    """``python <args>`` from the repository root, one thread (2-core machines)."""
    environ = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": CHILD_PYTHONPATH, **(env or {})}
    return subprocess.Popen(
        [sys.executable, *args], cwd=ROOT, env=environ, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs,
    )  # fmt: skip


def finish(proc: subprocess.Popen, timeout: float = 150) -> subprocess.CompletedProcess:
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def temps(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if ".tmp-" in p.name)


# -- atomic saves, across filesystems --------------------------------------------------------------
# The CLI's trainer saves a small checkpoint, then a 256 MB one; a thread SIGKILLs the process
# once a file of the checkpoint directory is being written (more than 1 MB there, not yet all).
# Lightning's own TorchCheckpointIO writes the temporary file in $TMPDIR and, across
# filesystems, copies it over last.ckpt: the kill then lands in that copy (a truncated last.ckpt)
# and the temporary file stays in $TMPDIR.
SAVE_AND_DIE = textwrap.dedent(
    """
    import errno, os, signal, sys, threading
    from pathlib import Path
    import torch

    if os.environ.get("GLIF_SIMULATE_EXDEV"):
        # Renames between directories fail as between filesystems: EXDEV, as the kernel says.
        def cross_device(rename):
            def guarded(src, dst, *args, **kwargs):
                if os.path.dirname(os.path.abspath(src)) != os.path.dirname(os.path.abspath(dst)):
                    raise OSError(errno.EXDEV, os.strerror(errno.EXDEV), src, None, dst)
                return rename(src, dst, *args, **kwargs)
            return guarded
        os.rename, os.replace = cross_device(os.rename), cross_device(os.replace)

    from lightning_glif.cli.main import cli_main

    root, last = sys.argv[1], Path(sys.argv[2])
    io = cli_main(["--trainer.default_root_dir", root], run=False).trainer.strategy.checkpoint_io
    io.save_checkpoint({"state_dict": {"w": torch.ones(4)}, "global_step": 1}, last)

    def kill_mid_write():
        while True:
            for entry in os.scandir(last.parent):
                try:
                    size = entry.stat().st_size
                except FileNotFoundError:
                    continue
                if 2**20 < size < 200 * 2**20:
                    os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=kill_mid_write, daemon=True).start()
    io.save_checkpoint({"state_dict": {"w": torch.zeros(64 * 2**20)}, "global_step": 2}, last)
    print("the second save ended before the kill")
    """
)


def _another_mount(tmp_path: Path) -> Path | None:
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK) and shm.stat().st_dev != tmp_path.stat().st_dev:
        return shm
    return None


@pytest.mark.slow
@pytest.mark.parametrize("tmpdir_on", ["another mount", "simulated cross-device rename"])
def test_a_kill_during_a_save_across_filesystems_keeps_an_intact_last_ckpt(tmp_path, tmpdir_on):
    env = {}
    if tmpdir_on == "another mount":
        mount = _another_mount(tmp_path)
        if mount is None:
            pytest.skip("no writable filesystem other than tmp_path's (/dev/shm)")
        tmpdir = mount / f"glif-test-{uuid.uuid4().hex[:8]}"
    else:
        tmpdir, env["GLIF_SIMULATE_EXDEV"] = tmp_path / "tmpdir", "1"
    tmpdir.mkdir()
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    try:
        env["TMPDIR"] = str(tmpdir)
        run = finish(child(["-c", SAVE_AND_DIE, str(tmp_path / "run"), str(last)], env))
        left_in_tmpdir = [p.name for p in tmpdir.iterdir()]
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    assert run.returncode == -signal.SIGKILL, run.stdout + run.stderr[-3000:]

    assert last.stat().st_size > 0, "last.ckpt was truncated to 0 bytes by the kill"
    saved = check_checkpoint_file(last)  # raises naming what is wrong: truncated, ...
    assert saved["global_step"] in (1, 2)
    if saved["global_step"] == 1:
        assert torch.equal(saved["state_dict"]["w"], torch.ones(4))
    assert left_in_tmpdir == []  # nothing of the save in $TMPDIR
    # The kill was mid-save: its temporary file is beside last.ckpt, and the next save removes it.
    (leftover,) = temps(last.parent)
    assert leftover.startswith("last.ckpt.tmp-")
    AtomicCheckpointIO().save_checkpoint({"state_dict": {}, "global_step": 3}, last)
    assert [p.name for p in last.parent.iterdir()] == ["last.ckpt"]
    assert torch.load(last, weights_only=True)["global_step"] == 3


# A tmpfs of 256 KiB mounted in a new user and mount namespace (``unshare``): a real full disk.
# One small checkpoint fits, a 1 MB one does not; torch.save reports the failed write as
# "unexpected pos ..." with the ENOSPC inside.
SAVE_ON_A_FULL_DISK = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import torch
    from lightning_glif.cli.checkpoint_io import AtomicCheckpointIO, DiskFullError

    last = Path(sys.argv[1]) / "run" / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": torch.ones(4)}, "global_step": 1}, last)
    try:
        io.save_checkpoint({"state_dict": {"w": torch.zeros(2**18)}, "global_step": 2}, last)
    except DiskFullError as error:
        print(error)
    names = sorted(p.name for p in last.parent.iterdir())
    print(torch.load(last, weights_only=True)["global_step"], names)
    """
)


@pytest.mark.slow
def test_a_full_disk_during_a_save_is_named_and_keeps_the_previous_file(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    script = tmp_path / "save.py"
    script.write_text(SAVE_ON_A_FULL_DISK)
    shell = f"mount -t tmpfs -o size=256k tmpfs {mount} && exec {sys.executable} {script} {mount}"
    unshare = shutil.which("unshare")
    if unshare is None or subprocess.run([unshare, "-rm", "true"]).returncode != 0:
        pytest.skip("no unshare with user namespaces to mount a small tmpfs")
    environ = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": CHILD_PYTHONPATH}
    run = subprocess.run([unshare, "-rm", "sh", "-c", shell], cwd=ROOT, env=environ,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    message, kept = run.stdout.strip().splitlines()
    # Not torch's RuntimeError "unexpected pos ...", with the ENOSPC in the middle of a trace.
    assert message.startswith(f"[Errno 28] no space left on the filesystem mounted at {mount} ")
    assert f"while saving {mount / 'run' / 'last.ckpt'}" in message
    assert "last.ckpt is as it was before this save" in message
    assert kept == "1 ['last.ckpt']"  # the previous checkpoint, no temporary file


def test_the_cli_trainer_saves_through_the_atomic_plugin(tmp_path):
    trainer = cli_main(["--trainer.default_root_dir", str(tmp_path)], run=False).trainer
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)


def test_a_failed_write_leaves_the_previous_file_and_no_temporary(tmp_path):
    path = tmp_path / "cache.bin"
    path.write_bytes(b"old")
    with pytest.raises(OSError, match="disk full"), atomic_open(path) as f:
        f.write(b"new, half")
        raise OSError("disk full")
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["cache.bin"]
    with atomic_open(path) as f:
        f.write(b"new")
    assert path.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == ["cache.bin"]


@pytest.mark.slow
def test_stale_temporaries_of_dead_writers_only_are_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / f"a.npz.tmp-{dead.pid}-0a1b2c3d").write_bytes(b"half")
    (tmp_path / f"b.npz.tmp-{os.getppid()}-0a1b2c3d").write_bytes(b"being written")  # alive
    (tmp_path / f"c.npz.tmp-{os.getpid()}-0a1b2c3d").write_bytes(b"ours")
    (tmp_path / "d.npz").write_bytes(b"data")
    removed = remove_stale_temps(tmp_path)
    assert [p.name for p in removed] == [f"a.npz.tmp-{dead.pid}-0a1b2c3d"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f"b.npz.tmp-{os.getppid()}-0a1b2c3d", f"c.npz.tmp-{os.getpid()}-0a1b2c3d", "d.npz",
    ]  # fmt: skip


# -- unreadable checkpoints: one clear error -------------------------------------------------------
def flip_a_tensor_byte(path: Path) -> str:
    """Flip one bit of the first tensor's bytes in the zip ``path`` (its stored CRC-32 then no
    longer matches); return the member's name."""
    with zipfile.ZipFile(path) as archive:
        member = next(i for i in archive.infolist() if "/data/" in i.filename and i.file_size)
    data = bytearray(path.read_bytes())
    # The member's bytes follow its local header: 30 bytes, then its name and extra field.
    name, extra = struct.unpack("<HH", data[member.header_offset + 26 : member.header_offset + 30])
    data[member.header_offset + 30 + name + extra] ^= 0x01
    path.write_bytes(bytes(data))
    return member.filename


def _not_a_checkpoint(kind: str, path: Path, intact: Path) -> str:
    """Make ``path`` a broken checkpoint of ``kind``; return what the error must say."""
    if kind == "empty":
        path.write_bytes(b"")
        return "is empty (0 bytes)"
    if kind == "truncated":
        path.write_bytes(intact.read_bytes()[: intact.stat().st_size // 2])
        return "is truncated"
    if kind == "text":
        path.write_text("model:\n  lr: 0.1\n")
        return "is a text file, not a checkpoint (it starts with 'model:')"
    if kind == "a list":
        torch.save([1, 2, 3], path)
        return "holds a list, not a Lightning checkpoint"
    if kind == "a bare state_dict":
        torch.save({"weight": torch.ones(2)}, path)
        return "has no 'state_dict' (its keys: 'weight')"
    if kind == "random bytes":
        path.write_bytes(bytes(range(256)) * 8)
        return "is not a checkpoint: torch.load cannot unpickle it"
    if kind == "a bit flip":
        shutil.copyfile(intact, path)
        member = flip_a_tensor_byte(path)
        return f"is damaged: the bytes of its member {member!r} no longer match the checksum"
    raise AssertionError(kind)


KINDS = ["empty", "truncated", "text", "a list", "a bare state_dict", "random bytes", "a bit flip"]


@pytest.mark.parametrize("kind", KINDS)
def test_an_unreadable_checkpoint_of_a_run_is_named_with_the_runs_intact_one(tmp_path, kind):
    io = AtomicCheckpointIO()
    (tmp_path / "config.yaml").write_text("trainer: {}\n")  # a run directory
    checkpoints = tmp_path / "checkpoints"
    older, newer = checkpoints / "epoch000.ckpt", checkpoints / "epoch001.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(1)}, "epoch": 0, "global_step": 4}, older)
    io.save_checkpoint({"state_dict": {"w": torch.ones(1)}, "epoch": 1, "global_step": 8}, newer)
    os.utime(older, (time.time() - 60,) * 2)
    bad = checkpoints / "last.ckpt"
    says = _not_a_checkpoint(kind, bad, newer)
    for load in (io.load_checkpoint, check_checkpoint_file):
        with pytest.raises(CorruptCheckpointError) as error:
            load(bad)
        message = str(error.value)
        assert message.startswith(f"checkpoint {bad} ") and says in message
        assert f"intact checkpoint of the same run is {newer} (epoch 1, global step 8)" in message
        assert message.endswith(f"pass --ckpt_path {newer} instead.")


def test_a_bit_flip_that_torch_load_misses_is_found(tmp_path):
    """torch.load reads a checkpoint whose tensor bytes changed without a word (the tensor is
    simply another one); the CRC-32 that the zip stores with each member finds it."""
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(64)}}, path)
    flip_a_tensor_byte(path)
    flipped = torch.load(path, weights_only=True)["state_dict"]["w"]
    assert not torch.equal(flipped, torch.ones(64))
    with pytest.raises(CorruptCheckpointError, match="is damaged: the bytes of its member"):
        check_checkpoint_file(path)


def test_an_unreadable_checkpoint_outside_a_run_names_no_other_file(tmp_path):
    """The files beside a checkpoint outside a run directory may belong to anything: none is
    offered, and no advice ever says to copy a file over the user's."""
    bad = tmp_path / "model.ckpt"
    bad.write_bytes(b"")
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(1)}}, tmp_path / "x.ckpt")
    with pytest.raises(CorruptCheckpointError) as error:
        check_checkpoint_file(bad)
    assert str(error.value) == (
        f"checkpoint {bad} is empty (0 bytes): a save that was interrupted, or a file created "
        "by hand."
    )
    with pytest.raises(FileNotFoundError, match="does not exist"):
        check_checkpoint_file(tmp_path / "nowhere.ckpt")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A real run of 2 epochs of 2 steps: its checkpoints/ holds last.ckpt and the best epoch."""
    return fit_small(tmp_path_factory.mktemp("trained"))


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["empty", "truncated", "text", "a bit flip"])
def test_resuming_from_a_corrupt_last_ckpt_names_it_and_the_intact_checkpoint(
    trained_run, tmp_path, kind, capsys
):
    shutil.copytree(trained_run, tmp_path, dirs_exist_ok=True)
    run = tmp_path / "digits" / "version_0"
    last = run / "checkpoints" / "last.ckpt"
    (best,) = [p for p in last.parent.glob("epoch*.ckpt")]
    says = _not_a_checkpoint(kind, last, best)
    before = sorted(p.name for p in run.iterdir())
    with pytest.raises(SystemExit) as exit_:
        cli_main(["fit", *small_args(tmp_path, epochs=2, batches=2), "--ckpt_path", "last"])
    assert exit_.value.code == 2
    message = " ".join(capsys.readouterr().err.split())
    assert f"checkpoint {last} " in message and says in message
    assert f"pass --ckpt_path {best} instead" in message and "copy it" not in message
    assert sorted(p.name for p in run.iterdir()) == before  # refused: nothing written


@pytest.mark.parametrize("kind", ["empty", "text"])
def test_evaluating_an_unreadable_checkpoint_is_a_clear_error(tmp_path, capsys, kind):
    bad = tmp_path / f"{kind}.ckpt"
    says = _not_a_checkpoint(kind, bad, bad)
    with pytest.raises(SystemExit) as exit_:
        cli_main(["test", "--ckpt_path", str(bad), "--trainer.default_root_dir", str(tmp_path)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"checkpoint {bad} {says}" in err
    assert "EOFError" not in err and "Traceback" not in err


# -- Ctrl-C and SIGTERM during fit -----------------------------------------------------------------
class WaitForSignal(Callback):
    """Test-only: before global step ``$GLIF_WAIT_AT_STEP``, write ``$GLIF_PROBE`` and wait (60 s
    at most) until a signal stops the run."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        at = os.environ.get("GLIF_WAIT_AT_STEP")
        if at is None or trainer.global_step != int(at):
            return
        Path(os.environ["GLIF_PROBE"]).write_text(str(os.getpid()))
        deadline = time.monotonic() + 60
        while not trainer.received_sigterm and time.monotonic() < deadline:
            time.sleep(0.02)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_signal_during_fit_leaves_a_resumable_last_ckpt(tmp_path, signum):
    args = ["train.py", "fit", *small_args(tmp_path),
            "--trainer.callbacks+=tests.test_checkpoint_io.WaitForSignal"]  # fmt: skip
    probe = tmp_path / "waiting"
    # 2 epochs of 4 steps: the signal comes during step 6, the second epoch's third batch.
    run = child(args, {"GLIF_WAIT_AT_STEP": "6", "GLIF_PROBE": str(probe)})
    deadline = time.monotonic() + 120
    while not probe.exists() and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert probe.exists(), finish(run).stderr[-3000:]
    last = tmp_path / "digits" / "version_0" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 4  # the first epoch's
    run.send_signal(signum)
    stopped = finish(run)
    assert stopped.returncode == 128 + signum, stopped.stderr[-3000:]  # 130, 143: the shell's
    saved = torch.load(last, weights_only=True)
    # Lightning finishes the running batch, then the callback saves: step 6 is in.
    assert (saved["epoch"], saved["global_step"]) == (1, 7)
    assert temps(last.parent) == []

    resumed = finish(child([*args, "--ckpt_path", "last"]))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "ended before the epoch ended" in resumed.stderr  # Lightning's mid-epoch warning
    final = torch.load(last, weights_only=True)
    # The interrupted epoch is continued, not restarted: its one remaining batch, then the end.
    assert (final["epoch"], final["global_step"]) == (1, 8)
    assert [p.name for p in (tmp_path / "digits").iterdir()] == ["version_0"]


# -- a cache writer killed mid-write ---------------------------------------------------------------
# The child SIGKILLs itself when it renames its finished temporary file over the cache (an audit
# hook on os.rename, which os.replace raises): the temporary file stays, the cache is absent.
KILL_AT_RENAME = textwrap.dedent(
    """
    import os, signal, sys

    def hook(event, args):
        if event == "os.rename" and ".tmp-" in str(args[0]):
            os.kill(os.getpid(), signal.SIGKILL)

    kind, root = sys.argv[1], sys.argv[2]
    if kind == "events":
        from lightning_glif.data import emulator
        from tests.test_emulator import fast_emulator
        emulator.emulate_digits = fast_emulator  # the cache is under test, not the emulator
        sys.addaudithook(hook)
        emulator.EventDigits(root)
    else:
        from tests.test_checkpoint_io import tiny_frames_cache
        sys.addaudithook(hook)
        tiny_frames_cache(root)[0]
    print("the cache write ended before the kill")
    """
)


def tiny_frames_cache(root: str):
    """An AtomicDiskCache of three small, known samples."""
    from lightning_glif.data.frames import AtomicDiskCache

    samples = [(np.full((2, 2, 3, 3), i, dtype=np.int16), i) for i in range(3)]
    return AtomicDiskCache(samples, cache_path=str(Path(root) / "cache"))


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["events", "frames"])
def test_a_cache_writer_killed_mid_write_leaves_nothing_for_the_next_run(
    tmp_path, monkeypatch, kind
):
    writer = child(["-c", KILL_AT_RENAME, kind, str(tmp_path)])
    killed = finish(writer)
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr[-3000:]
    folder = tmp_path / ("EventDigits" if kind == "events" else "cache")
    (left,) = temps(folder)  # the killed writer's temporary file, and no cache file
    assert f".tmp-{writer.pid}-" in left and [p.name for p in folder.iterdir()] == [left]

    if kind == "events":
        from lightning_glif.data import emulator
        from tests.test_emulator import fast_emulator

        monkeypatch.setattr(emulator, "emulate_digits", fast_emulator)
        data = emulator.EventDigits(str(tmp_path))
        assert [p.name for p in folder.iterdir()] == [data.path.name]
        assert data[5][0]["t"].tolist() == [5] and data[1796][0]["t"].tolist() == [1796]
    else:
        cache = tiny_frames_cache(str(tmp_path))
        assert temps(folder) == []
        for i in range(3):
            frames, target = cache[i]
            assert target == i and np.array_equal(frames, np.full((2, 2, 3, 3), i))
        assert sorted(p.name for p in folder.iterdir()) == [f"{i}_0.hdf5" for i in range(3)]
