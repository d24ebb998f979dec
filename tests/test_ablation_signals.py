"""ablate.py as a user runs it, in real processes: SIGTERM or SIGINT ends its children and a rerun
redoes the interrupted runs; a second ablate.py on the same --out stops at the first's lock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# A fast base (the 8x8 digits' convnet) that trains long enough to be stopped mid-run.
LONG = ["--trainer.max_epochs", "300"]
SHORT = [
    "--trainer.max_epochs", "1",
    "--trainer.limit_train_batches", "2",
    "--trainer.limit_val_batches", "1",
    "--trainer.limit_test_batches", "1",
]  # fmt: skip


def ablate(out: Path, fit_args: list[str], **kwargs) -> subprocess.Popen:
    command = [sys.executable, str(ROOT / "ablate.py"), "--config", "conf/default.yaml"]
    command += ["--variants", "glif_soft,lif", "--seeds", "0", "--jobs", "2", "--out", str(out)]
    return subprocess.Popen(
        [*command, "--", *fit_args], cwd=ROOT, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kwargs,
    )  # fmt: skip


def children_of(pid: int) -> list[int]:
    """The live processes whose parent is ``pid`` (from /proc/<pid>/status's PPid)."""
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines())
        except (OSError, ValueError):
            continue  # exited meanwhile
        if int(fields.get("PPid", "0")) == pid and not fields["State"].startswith("Z"):
            found.append(int(status.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text().split("State:\t", 1)[1]
    except (OSError, IndexError):
        return False
    return not state.startswith("Z")


def wait_until_training(proc: subprocess.Popen, out: Path, timeout: float = 120) -> list[int]:
    """Wait until both children train (an epoch in each train.log); their pids."""
    logs = [out / v / "seed0" / "train.log" for v in ("glif_soft", "lif")]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read()
        if all(log.is_file() and "Epoch 1" in log.read_text(errors="replace") for log in logs):
            pids = children_of(proc.pid)
            if len(pids) == 2:
                return pids
        time.sleep(0.3)
    raise AssertionError(f"the children did not start training within {timeout} s")


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc"),
]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_ends_the_children_and_a_rerun_redoes_them(tmp_path, signum):
    out = tmp_path / "out"
    # start_new_session: the test's own process group is not the one Ctrl-C would reach.
    proc = ablate(out, LONG, start_new_session=True)
    pids = wait_until_training(proc, out)
    os.kill(proc.pid, signum)
    t0 = time.monotonic()
    output, _ = proc.communicate(timeout=60)
    assert time.monotonic() - t0 < 30, output
    assert proc.returncode == 128 + signum, output
    assert [p for p in pids if alive(p)] == []  # no orphan trains on with PPID 1
    assert f"stopped by {signum.name}: 2 run(s) interrupted" in output
    assert "a rerun redoes it" in output
    for variant in ("glif_soft", "lif"):
        run = out / variant / "seed0"
        assert run.is_dir() and not (run / "result.json").exists()
    assert not (out / "results.csv").exists()  # no report of a stopped grid
    if signum != signal.SIGTERM:
        return
    # The same command redoes both runs (shortened here) and completes the grid.
    rerun = ablate(out, SHORT)
    output, _ = rerun.communicate(timeout=240)
    assert rerun.returncode == 0, output
    assert "[ablate] skip" not in output
    for variant in ("glif_soft", "lif"):
        assert f"[ablate] run {variant} seed 0" in output
        assert (out / variant / "seed0" / "result.json").is_file()
    assert (out / "results.csv").is_file()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_killed_ablation_takes_its_children_with_it(tmp_path):
    """SIGKILL cannot be forwarded: the kernel's parent-death signal ends the children."""
    out = tmp_path / "out"
    proc = ablate(out, LONG, start_new_session=True)
    pids = wait_until_training(proc, out)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    deadline = time.monotonic() + 30
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [p for p in pids if alive(p)] == []
    for variant in ("glif_soft", "lif"):
        assert not (out / variant / "seed0" / "result.json").exists()


def test_a_second_ablation_on_the_same_out_stops_at_the_lock(tmp_path):
    out = tmp_path / "out"
    first = ablate(out, LONG, start_new_session=True)
    try:
        pids = wait_until_training(first, out)
        runs = {v: out / v / "seed0" for v in ("glif_soft", "lif")}
        before = {v: sorted(p.name for p in run.iterdir()) for v, run in runs.items()}
        second = ablate(out, SHORT)
        output, _ = second.communicate(timeout=120)
        assert second.returncode == 1, output
        assert f"is in use by another command (pid {first.pid} on " in output
        assert "two commands writing one sweep directory" in output
        assert "[ablate] run" not in output
        # The first's runs are untouched: same files, same processes, still training.
        assert first.poll() is None and all(alive(p) for p in pids)
        for v, run in runs.items():
            assert set(before[v]) <= {p.name for p in run.iterdir()}
            assert "Epoch" in (run / "train.log").read_text(errors="replace")
    finally:
        if first.poll() is None:
            os.kill(first.pid, signal.SIGTERM)
        first.communicate(timeout=60)
    assert first.returncode == 128 + signal.SIGTERM
