"""ablate.py as a user runs it, in real processes: SIGTERM or SIGINT ends its children and a rerun
redoes the interrupted runs; after a SIGKILL a rerun retries the runs of the lost worker once
their heartbeat is stale; a second ablate.py on the same --out shares the study's trials."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from tests.cli_runs import alive, children_of

ROOT = Path(__file__).resolve().parents[1]
# A fast base (the 8x8 digits' convnet) that trains long enough to be stopped mid-run.
LONG = ["--trainer.max_epochs", "300"]
SHORT = [
    "--trainer.max_epochs", "1",
    "--trainer.limit_train_batches", "2",
    "--trainer.limit_val_batches", "1",
    "--trainer.limit_test_batches", "1",
]  # fmt: skip


def ablate(out: Path, fit_args: list[str], options=("--jobs", "2"), **kwargs) -> subprocess.Popen:
    command = [sys.executable, str(ROOT / "ablate.py"), "--config", "conf/default.yaml"]
    command += ["--variants", "glif_soft,lif", "--seeds", "0", "--out", str(out), *options]
    return subprocess.Popen(
        [*command, "--", *fit_args], cwd=ROOT, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kwargs,
    )  # fmt: skip


def wait_until_training(
    proc: subprocess.Popen, out: Path, variants=("glif_soft", "lif"), timeout: float = 120
) -> list[int]:
    """Wait until the children of ``variants`` train (an epoch in each train.log); the pids of
    ``proc``'s children (one per variant)."""
    logs = [out / v / "seed0" / "train.log" for v in variants]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read()
        if all(log.is_file() and "Epoch 1" in log.read_text(errors="replace") for log in logs):
            pids = children_of(proc.pid)
            if len(pids) == len(variants):
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
    # Nothing lost: the trials of the killed command are still RUNNING in the study; a rerun
    # (heartbeat 1 s: stale after 3 s) fails them as stale, retries them and completes the grid.
    rerun = ablate(out, SHORT, options=("--jobs", "2", "--heartbeat", "1"))
    output, _ = rerun.communicate(timeout=240)
    assert rerun.returncode == 0, output
    assert "[ablate] skip" not in output  # still running (stale) or already queued for retry
    for variant in ("glif_soft", "lif"):
        assert f"[ablate] queued {variant} seed 0: " in output
        assert f"[ablate] run {variant} seed 0" in output
        assert (out / variant / "seed0" / "result.json").is_file()
    study = optuna.load_study(study_name="ablation", storage=f"sqlite:///{out / 'study.db'}")
    states = sorted((t.user_attrs["variant"], t.state.name) for t in study.trials)
    assert states == [("glif_soft", "COMPLETE"), ("glif_soft", "FAIL"), ("lif", "COMPLETE"),
                      ("lif", "FAIL")]  # fmt: skip
    retries = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert all(t.system_attrs["retry_history"] for t in retries)  # retries of the killed ones


def test_a_second_ablation_on_the_same_out_shares_the_work(tmp_path):
    """Two commands on one study: the second takes the trial the first left waiting and leaves
    the first's running trial (and its directory) alone."""
    out = tmp_path / "out"
    one = ("--workers", "1")
    first = ablate(out, LONG, options=one, start_new_session=True)
    second = None
    try:
        (pid_first,) = wait_until_training(first, out, ["glif_soft"])
        before = sorted(p.name for p in (out / "glif_soft" / "seed0").iterdir())
        second = ablate(out, LONG, options=one, start_new_session=True)
        (pid_second,) = wait_until_training(second, out, ["lif"])
        assert first.poll() is None and alive(pid_first) and alive(pid_second)
        assert set(before) <= {p.name for p in (out / "glif_soft" / "seed0").iterdir()}
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
    out_first, _ = first.communicate(timeout=60)
    out_second, _ = second.communicate(timeout=60)
    assert first.returncode == second.returncode == 128 + signal.SIGTERM
    assert "[ablate] run glif_soft seed 0" in out_first
    assert "[ablate] run lif" not in out_first, out_first
    assert "[ablate] queued glif_soft seed 0: running" in out_second
    assert "[ablate] run lif seed 0" in out_second
    assert "[ablate] run glif_soft" not in out_second, out_second
